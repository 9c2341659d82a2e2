"""The web demo and HTTP API (``flamingo serve``).

``flamingo.io.inputs`` (safe image loading) needs only Pillow; ``app`` and ``server`` need the ``serve`` extra
(FastAPI, uvicorn) and are imported on use; ``ui``, the web demo, also needs Gradio (the ``demo`` extra) and is
mounted only when Gradio is installed.
"""
