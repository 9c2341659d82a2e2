"""The web demo and HTTP API (``flamingo serve``).

``flamingo.serve.images`` (safe image loading) needs only Pillow; ``app``, ``ui`` and ``server`` need the
``serve`` extra (FastAPI, uvicorn, Gradio) and are imported on use.
"""
