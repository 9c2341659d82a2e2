"""Start the server: load the model once, build the app, run uvicorn (one process, one model worker)."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

from flamingo.pipeline import FlamingoPipeline
from flamingo.serve.app import ServeLimits, create_app

log = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_server_pipeline(
    model: str,
    device: str = "auto",
    dtype: str | None = None,
    device_map: str | dict[str, int | str] | None = None,
    allow_urls: bool = False,
    allow_private_urls: bool = False,
    url_timeout_s: float = 10.0,
    max_image_bytes: int = 10 * 1024 * 1024,
    max_image_pixels: int = 4096 * 4096,
    max_prompt_tokens: int = 2048,
    trust_remote_code: bool = False,
    quantization: str | None = None,
) -> FlamingoPipeline:
    """The pipeline a server uses: it never reads local paths, whatever a request says. ``device="auto"`` is CUDA
    when present, else the CPU; ``device_map="auto"`` splits a model too large for one GPU (see
    :meth:`FlamingoPipeline.from_pretrained`);
    ``trust_remote_code=True`` lets a model whose LM needs its repository's own code run it. ``quantization``
    (``"int8"`` / ``"int4"``) loads its frozen backbones in low-bit form."""
    return FlamingoPipeline.from_pretrained(
        model,
        device=device,
        dtype=dtype,
        device_map=device_map,
        allow_paths=False,
        allow_urls=allow_urls,
        allow_private_urls=allow_private_urls,
        url_timeout_s=url_timeout_s,
        max_image_bytes=max_image_bytes,
        max_image_pixels=max_image_pixels,
        max_prompt_tokens=max_prompt_tokens,
        trust_remote_code=trust_remote_code,
        quantization=quantization,
    )


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 7860,
    limits: ServeLimits | None = None,
    log_level: str = "info",
    demo: bool | None = None,
    **pipeline_options: Any,
) -> None:
    """Load ``model`` and serve the API, and the demo page unless ``demo`` is False (None: when Gradio is
    installed; see :func:`~flamingo.serve.app.create_app`), on ``host:port`` until interrupted."""
    import uvicorn

    from flamingo.serve.app import DEMO_NEEDS_GRADIO, gradio_installed

    if demo and not gradio_installed():  # before the model loads, which may take minutes
        raise SystemExit(f"flamingo serve: {DEMO_NEEDS_GRADIO}")

    if not _is_loopback(host):
        log.warning("listening on %s: anyone who can reach this address can use the model", host)
    pipeline = load_server_pipeline(model, **pipeline_options)
    app = create_app(pipeline, limits, model_name=model_display_name(model), demo=demo)
    page = "" if app.state.demo else " (HTTP API only, no web demo)"
    print(f"flamingo serve: http://{host}:{port}/{page} (API: /v1/generate, docs: /docs)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def model_display_name(model: str) -> str:
    """What the page and ``/health`` call ``model``: the name its model card gives (``model_name`` or the card's
    title), else its folder's name (or the hub id)."""
    from flamingo.model.card import card_model_name

    return (Path(model).is_dir() and card_model_name(model)) or Path(model).name or str(model)
