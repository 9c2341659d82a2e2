"""The FastAPI application: ``POST /v1/generate`` (JSON or server-sent events), ``GET /v1/examples``,
``GET /health``, the OpenAPI description at ``/openapi.json`` (``/docs`` to browse), and the Gradio web demo
(``flamingo.serve.ui``) mounted at ``/``. Both sides check requests with the functions here and hand them to one
:class:`~flamingo.serve.worker.BatchWorker`.

Safety rules (issue "Inference for people"): every limit answers with a 4xx and a JSON body
``{"error": {"code": ..., "message": ...}}``; requests carry images only as base64 or (when enabled) http(s)
URLs, never paths; text parts stay text; a failing request never stops the worker or the server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from flamingo.pipeline import Completion, FlamingoPipeline
from flamingo.serve.images import InputError, decode_base64_image, fetch_image_url
from flamingo.serve.worker import BatchWorker, DecodingSettings, Job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeLimits:
    """Per-request limits and batching settings of the server (image limits live in the pipeline's policy)."""

    max_images: int = 8
    """Images in one prompt."""
    max_new_tokens: int = 256
    """Largest ``max_new_tokens`` a request may ask for."""
    max_beams: int = 8
    """Largest ``num_beams``."""
    max_text_chars: int = 32_000
    """Characters of text in one prompt (the token limit is checked as well)."""
    max_batch_size: int = 8
    """Requests run together in one ``generate``."""
    batch_wait_ms: float = 10.0
    """How long the worker waits for compatible requests to join a batch."""
    max_queue: int = 256
    """Requests waiting at once; more get HTTP 503."""
    request_timeout_s: float = 300.0
    """A request still waiting after this long gets HTTP 504."""


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    """An image as base64 (optionally a ``data:image/...;base64,`` URL) or, if the server allows, an http(s) URL."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["image"]
    base64: str | None = None
    url: str | None = None


class GenerateBody(BaseModel):
    """The JSON body of ``POST /v1/generate``: an interleaved prompt and decoding settings; ``temperature`` 0 is
    greedy (or beam) search. (``flamingo.eval.models.GenerateRequest`` is the evaluator's request, not this.)"""

    model_config = ConfigDict(extra="forbid")
    prompt: list[Annotated[TextPart | ImagePart, Field(discriminator="type")]] = Field(min_length=1)
    max_new_tokens: int = Field(20, ge=1)
    num_beams: int = Field(1, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stream: bool = False


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    images: int
    batch_size: int
    total_ms: float


class GenerateResponse(BaseModel):
    text: str
    usage: Usage


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class BodyLimitMiddleware:
    """Refuses request bodies over ``limit`` bytes with 413 before the application parses them."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                text = f"the request body is over {self.limit} bytes: send fewer or smaller images"
                await JSONResponse(error_body("body_too_large", text), 413)(scope, receive, send)
                return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def check_prompt_limits(
    texts: list[tuple[str, str]], num_images: int, marker: str, limits: ServeLimits
) -> None:
    """The limits on a prompt's shape, checked before any image is decoded: the number of images, the length of
    the ``(label, text)`` parts, and no image marker typed into text (images arrive as images only)."""
    if num_images > limits.max_images:
        raise InputError(
            f"the prompt has {num_images} images; the limit is {limits.max_images}", "too_many_images"
        )
    if sum(len(text) for _, text in texts) > limits.max_text_chars:
        raise InputError(
            f"the prompt text is over {limits.max_text_chars} characters", "prompt_too_long", 413
        )
    for label, text in texts:
        if marker in text:
            raise InputError(
                f"{label}: text may not contain {marker}; each image goes in its own image part", "bad_text"
            )


def build_row(request: GenerateBody, pipeline: FlamingoPipeline, limits: ServeLimits) -> tuple[str, list]:
    """The request's prompt as a ``(text with <image> markers, images)`` row, each image decoded under the
    limits. The text is never read as a path or URL (the tuple form keeps it text)."""
    marker = pipeline.processor.image_token
    texts = [(f"prompt[{i}]", p.text) for i, p in enumerate(request.prompt) if p.type == "text"]
    check_prompt_limits(texts, sum(p.type == "image" for p in request.prompt), marker, limits)
    parts, images = [], []
    for i, part in enumerate(request.prompt):
        if part.type == "text":
            parts.append(part.text)
            continue
        label = f"prompt[{i}] (image {len(images) + 1})"
        if (part.base64 is None) == (part.url is None):
            raise InputError(f"{label}: give exactly one of 'base64' or 'url'", "bad_image_part")
        if part.base64 is not None:
            images.append(decode_base64_image(part.base64, pipeline.policy, label))
        else:
            images.append(fetch_image_url(part.url, pipeline.policy, label))
        parts.append(marker)
    return "".join(parts), images


def decoding_settings(
    limits: ServeLimits, max_new_tokens: int, num_beams: int = 1, temperature: float = 0.0, top_p: float = 1.0
) -> DecodingSettings:
    """Decoding settings within the server's limits (``temperature`` 0: greedy or beam search)."""
    if not 1 <= max_new_tokens <= limits.max_new_tokens:
        raise InputError(
            f"max_new_tokens={max_new_tokens}; the limit is {limits.max_new_tokens}", "too_many_new_tokens"
        )
    if not 1 <= num_beams <= limits.max_beams:
        raise InputError(f"num_beams={num_beams}; the limit is {limits.max_beams}", "too_many_beams")
    if not (0.0 <= temperature <= 5.0 and 0.0 < top_p <= 1.0):
        raise InputError(
            f"temperature={temperature}, top_p={top_p}: use 0 <= temperature <= 5 and 0 < top_p <= 1",
            "bad_settings",
        )
    return DecodingSettings(int(max_new_tokens), int(num_beams), float(temperature), float(top_p))


def check_settings(request: GenerateBody, limits: ServeLimits) -> DecodingSettings:
    if request.stream and request.num_beams > 1:
        log.info("beam search cannot stream token by token: the text arrives in one event")
    return decoding_settings(
        limits, request.max_new_tokens, request.num_beams, request.temperature, request.top_p
    )


def usage_of(completion: Completion, job: Job) -> Usage:
    return Usage(
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        images=completion.images,
        batch_size=job.batch_size,
        total_ms=round((time.monotonic() - job.enqueued_at) * 1000, 1),
    )


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def exception_payload(err: BaseException) -> tuple[int, dict[str, Any]]:
    """The HTTP status and error body for an exception raised while serving a request."""
    if isinstance(err, InputError):
        return err.status, error_body(err.code, err.message)
    if isinstance(err, (ValueError, TypeError)):
        return 400, error_body("invalid_input", str(err))
    return 500, error_body("internal_error", f"generation failed: {type(err).__name__}: {err}")


def follow(job: Job, timeout_s: float) -> Iterator[str | Completion]:
    """The text pieces of a streaming job as they arrive, then its :class:`Completion`; raises the job's error,
    or an ``InputError`` (504) when nothing arrives for ``timeout_s`` seconds. Closing it cancels the job."""
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                kind, value = job.events.get(timeout=1.0)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise InputError(f"no answer within {timeout_s} s", "timeout", 504) from None
                continue
            if kind == "error":
                raise value
            yield value
            if kind == "done":
                return
    finally:
        job.cancelled.set()  # the client went away or the stream ended: stop generating for it


def stream_events(job: Job, timeout_s: float) -> Iterator[str]:
    """Server-sent events of a streaming job: ``message`` events with ``{"text": piece}``, then one ``done``
    event with the whole text and usage, or one ``error`` event."""
    pieces: list[str] = []
    try:
        with contextlib.closing(follow(job, timeout_s)) as items:  # closed (job cancelled) if the client goes
            for item in items:
                if isinstance(item, str):
                    pieces.append(item)
                    yield _sse("message", {"text": item})
                else:
                    yield _sse("done", {"text": "".join(pieces), "usage": usage_of(item, job).model_dump()})
    except Exception as err:
        yield _sse("error", exception_payload(err)[1])


def create_app(
    pipeline: FlamingoPipeline, limits: ServeLimits | None = None, model_name: str = ""
) -> FastAPI:
    """The application around ``pipeline``; its worker thread starts and stops with the app's lifespan."""
    from flamingo.serve.examples import example_prompts
    from flamingo.serve.ui import mount_demo

    limits = limits or ServeLimits()
    worker = BatchWorker(pipeline, limits.max_batch_size, limits.batch_wait_ms, limits.max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="flamingo-vlm", summary="Few-shot vision-language generation", lifespan=lifespan)
    app.state.worker = worker
    max_body = (
        limits.max_images * (pipeline.policy.max_image_bytes * 4 // 3 + 1024) + 4 * limits.max_text_chars
    )
    app.add_middleware(BodyLimitMiddleware, limit=max_body + 65536)
    _add_error_handlers(app)
    examples = example_prompts()

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness, the model, the limits and the worker's counters (``batches`` counts ``generate`` calls)."""
        policy = pipeline.policy
        return {
            "status": "ok",
            "model": model_name,
            "limits": {
                **asdict(limits),
                "max_image_bytes": policy.max_image_bytes,
                "max_image_pixels": policy.max_image_pixels,
                "max_prompt_tokens": pipeline.max_prompt_tokens,
                "allow_urls": policy.allow_urls,
            },
            "worker": worker.snapshot(),
        }

    @app.get("/v1/examples")
    def get_examples() -> list[dict[str, Any]]:
        """Ready-made few-shot prompts (images generated at startup, as data URLs); the web demo shows them."""
        return examples

    @app.post("/v1/generate", response_model=GenerateResponse, responses={400: {}, 413: {}, 415: {}, 503: {}})
    def generate(request: GenerateBody) -> Any:
        """Generate a continuation of an interleaved prompt; ``stream: true`` answers with server-sent events."""
        settings = check_settings(request, limits)
        row = build_row(request, pipeline, limits)
        job = worker.submit(Job(row=row, settings=settings, stream=request.stream))
        if request.stream:
            return StreamingResponse(
                stream_events(job, limits.request_timeout_s),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            completion = job.future.result(timeout=limits.request_timeout_s)
        except TimeoutError as err:
            job.cancelled.set()
            raise InputError(f"no answer within {limits.request_timeout_s} s", "timeout", 504) from err
        return GenerateResponse(text=completion.text, usage=usage_of(completion, job))

    mount_demo(app, pipeline, worker, limits, model_name)  # last: it answers every path not matched above
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InputError)
    async def input_error(request: Request, err: InputError) -> JSONResponse:
        return JSONResponse(error_body(err.code, err.message), err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg', '')}"
            for e in err.errors()[:5]
        ]
        return JSONResponse(error_body("invalid_request", "; ".join(problems)), 422)

    @app.exception_handler(ValueError)
    async def value_error(request: Request, err: ValueError) -> JSONResponse:
        status, body = exception_payload(err)
        return JSONResponse(body, status)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        log.exception("request failed")
        status, body = exception_payload(err)
        return JSONResponse(body, status)
