"""The web demo and HTTP API (``flamingo serve``).

``flamingo.serve.images`` (safe image loading) needs only Pillow; ``app``/``server`` need the ``serve``
extra (FastAPI, uvicorn) and are imported on use.
"""
