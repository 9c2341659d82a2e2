"""The FastAPI application: ``POST /v1/generate`` (JSON or server-sent events), ``GET /v1/examples``,
``GET /health``, the OpenAPI description at ``/openapi.json`` (``/docs`` to browse), and the Gradio web demo
(``flamingo.serve.ui``) mounted at ``/`` when Gradio is installed (the ``demo`` extra). Both sides check requests
with the functions here and hand them to one :class:`~flamingo.serve.worker.BatchWorker`.

Safety rules: every limit answers with a 4xx (a busy server with 503 and ``Retry-After``) and a JSON body
``{"error": {"code": ..., "message": ...}}``; requests carry images only as base64 or (when enabled) http(s)
URLs, never paths; text parts stay text; a failing request never stops the worker or the server.

Nothing a request does can stall the event loop: bodies are counted as they arrive, images are decoded on a
few threads of their own and URLs fetched on a bounded pool of their own (each fetch under one overall
deadline), and requests wait for the model without holding a thread. Memory is bounded by
``ServeLimits.max_pending_bytes`` (:mod:`flamingo.serve.budget`): each image is reduced right after decoding to
a size the vision encoder still resizes itself, so a waiting request holds small images, not full-size ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from flamingo.io.fetch import Fetched, FetchError, FetchPool
from flamingo.io.images import decoded_bytes
from flamingo.io.inputs import InputError, check_url, decode_base64_image, decode_image, fetch_error
from flamingo.pipeline import Completion, FlamingoPipeline
from flamingo.serve.budget import MemoryBudget, Reservation
from flamingo.serve.worker import BatchWorker, DecodingSettings, Job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeLimits:
    """Per-request limits, the memory budget and batching settings of the server (image limits live in the
    pipeline's policy)."""

    max_images: int = 33
    """Images in one prompt (33: a 32-shot prompt and its query)."""
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
    max_pending_bytes: int = 1 << 30
    """Memory all requests in flight may hold together: bodies while they arrive and until answered, each
    image while it is decoded (its full size) and then reduced until answered. A request that would go over
    it gets HTTP 503 with ``Retry-After`` at once. The default, 1 GiB, holds 30 requests of 8 images of
    4096x4096 (about 11 MiB each once decoded: a 5 MiB body and 8 images reduced to 456x456 for a 224-pixel
    encoder) next to ``decode_threads`` full-size decodes (64 MiB each)."""
    decode_threads: int = 4
    """Images decoded at once (each holds its full decoded size until it is reduced)."""
    fetch_threads: int = 16
    """Image URLs fetched at once (with ``--allow-urls``); a slow URL holds one of these threads only."""
    body_timeout_s: float = 60.0
    """A request body not fully received after this long gets HTTP 408 (a client cannot hold memory by
    sending slowly)."""

    def __post_init__(self) -> None:
        for name in ("max_images", "max_queue", "max_pending_bytes", "decode_threads", "fetch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServeLimits.{name}={getattr(self, name)}: must be >= 1")


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


RESERVATION_KEY = "flamingo.reservation"
"""Where :class:`BodyLimitMiddleware` leaves a request's :class:`~flamingo.serve.budget.Reservation` in the
ASGI scope, so that the body and the images of one request count as one (a request alone over the whole
budget gets 413, not 503)."""


class BodyLimitMiddleware:
    """Refuses request bodies over ``limit`` bytes with 413, before the application parses them.

    A ``Content-Length`` over the limit is refused before any byte of the body is read; otherwise the bytes are
    counted as they arrive (chunks collected in a list: linear time) and, with a ``budget``, reserved in it
    until the response is sent (503 with ``Retry-After`` when the server's memory budget is full). A body
    still arriving after ``timeout_s`` gets 408.
    """

    def __init__(
        self, app: Any, limit: int, budget: MemoryBudget | None = None, timeout_s: float | None = None
    ) -> None:
        self.app, self.limit, self.budget, self.timeout_s = app, limit, budget, timeout_s

    def _too_large(self) -> JSONResponse:
        text = f"the request body is over {self.limit} bytes: send fewer or smaller images"
        return JSONResponse(error_body("body_too_large", text), 413, headers={"Connection": "close"})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                text = "Content-Length must be a whole number of bytes"
                await JSONResponse(error_body("bad_content_length", text), 400)(scope, receive, send)
                return
            if int(declared) > self.limit:  # refused unread: nothing of the body is received
                await self._too_large()(scope, receive, send)
                return
        reservation = self.budget.reservation() if self.budget is not None else None
        try:
            body = await self._receive_body(scope, receive, send, reservation)
            if body is None:
                return
            if reservation is not None:
                scope[RESERVATION_KEY] = reservation  # the endpoint adds the request's images to it
            replayed = False

            async def replay() -> dict:
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
        finally:
            if reservation is not None:
                reservation.release()

    async def _receive_body(
        self, scope: dict, receive: Any, send: Any, reservation: Reservation | None
    ) -> bytes | None:
        """The whole body, or None after answering with an error (or when the client went away)."""
        chunks: list[bytes] = []
        size, more = 0, True
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        while more:
            try:
                if deadline is None:
                    message = await receive()
                else:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                text = f"the request body did not arrive within {self.timeout_s} s"
                headers = {"Connection": "close"}
                await JSONResponse(error_body("body_timeout", text), 408, headers=headers)(
                    scope, receive, send
                )
                return None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            size += len(chunk)
            if size > self.limit:
                await self._too_large()(scope, receive, send)
                return None
            if reservation is not None:
                try:
                    reservation.grow(len(chunk))
                except InputError as err:
                    await error_response(err)(scope, receive, send)
                    return None
            chunks.append(chunk)
        return b"".join(chunks)


def error_response(err: InputError) -> JSONResponse:
    """The JSON error response for ``err`` (with ``Retry-After`` when it says so)."""
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    return JSONResponse(error_body(err.code, err.message), err.status, headers=headers)


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


def reduced_side(pipeline: FlamingoPipeline) -> int | None:
    """The shorter side images are reduced towards right after decoding: twice the vision encoder's input size,
    so the encoder's own resize still does the last step (images up to that size are kept as sent and give the
    same answer as through the Python pipeline); None when the encoder does not say its size."""
    size = getattr(getattr(pipeline.model, "vision", None), "image_size", None)
    return 2 * int(size) if isinstance(size, int) and size > 0 else None


class RequestImages:
    """Turns the image parts of API requests into reduced RGB images, off the event loop and under the memory
    budget: base64 decoding and image decoding on ``decode_threads`` threads, URL fetches on a
    :class:`~flamingo.io.fetch.FetchPool` of ``fetch_threads``."""

    def __init__(self, pipeline: FlamingoPipeline, limits: ServeLimits) -> None:
        self.policy, self.limits = pipeline.policy, limits
        self.marker = pipeline.processor.image_token
        self.min_side = reduced_side(pipeline)
        self.decoder = ThreadPoolExecutor(limits.decode_threads, thread_name_prefix="flamingo-decode")
        self.fetcher = FetchPool(limits.fetch_threads, max_pending=limits.max_queue)

    def shutdown(self) -> None:
        self.decoder.shutdown(wait=False, cancel_futures=True)
        self.fetcher.shutdown()

    def decode(
        self, data: bytes | str, label: str, reservation: Reservation, base64_text: bool = False
    ) -> Image.Image:
        """Bytes (or base64 text) -> a reduced RGB image; the decoding's memory is reserved from the header's
        size before any pixel is decoded, and shrunk to the reduced image's size after."""
        taken = 0

        def reserve(width: int, height: int, mode: str) -> None:
            nonlocal taken
            reservation.grow(need := decoded_bytes(width, height, mode))
            taken = need

        try:
            if base64_text:
                image = decode_base64_image(data, self.policy, label, self.min_side, reserve)
            else:
                image = decode_image(data, self.policy, label, self.min_side, reserve)
        except BaseException:
            reservation.shrink(taken)
            raise
        reservation.shrink(taken - decoded_bytes(image.width, image.height, "RGB"))
        return image

    async def row(self, request: GenerateBody, reservation: Reservation) -> tuple[str, list[Image.Image]]:
        """The request's prompt as a ``(text with <image> markers, images)`` row. Every limit that needs no image
        is checked first; URL fetches then all start at once (each under its own deadline) and the images are
        decoded in prompt order. The text is never read as a path or URL (the tuple form keeps it text)."""
        texts = [(f"prompt[{i}]", p.text) for i, p in enumerate(request.prompt) if p.type == "text"]
        labels: dict[int, str] = {}
        for i, part in enumerate(request.prompt):
            if part.type == "image":
                labels[i] = f"prompt[{i}] (image {len(labels) + 1})"
        check_prompt_limits(texts, len(labels), self.marker, self.limits)
        for i, label in labels.items():
            part = request.prompt[i]
            if (part.base64 is None) == (part.url is None):
                raise InputError(f"{label}: give exactly one of 'base64' or 'url'", "bad_image_part")
            if part.url is not None:
                check_url(part.url, self.policy)
        fetches: dict[int, Future[Fetched]] = {}
        try:
            for i in labels:
                if (url := request.prompt[i].url) is not None:
                    fetches[i] = self.fetcher.submit(url, self.policy.fetch_policy())
            parts, images = [], []
            for i, part in enumerate(request.prompt):
                if part.type == "text":
                    parts.append(part.text)
                    continue
                if part.url is None:
                    work = self.decoder.submit(self.decode, part.base64, labels[i], reservation, True)
                    images.append(await asyncio.wrap_future(work))
                else:
                    images.append(await self._fetched_image(fetches[i], part.url, labels[i], reservation))
                parts.append(self.marker)
            return "".join(parts), images
        except FetchError as err:
            raise fetch_error(err, self.policy) from err
        finally:
            for future in fetches.values():
                future.cancel()  # a refused request fetches nothing more

    async def _fetched_image(
        self, future: Future[Fetched], url: str, label: str, reservation: Reservation
    ) -> Image.Image:
        try:
            fetched = await asyncio.wrap_future(future)
        except FetchError as err:
            raise fetch_error(err, self.policy) from err
        reservation.grow(len(fetched.body))
        try:
            work = self.decoder.submit(self.decode, fetched.body, f"{label} ({url})", reservation)
            return await asyncio.wrap_future(work)
        finally:
            reservation.shrink(len(fetched.body))


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


def gradio_installed() -> bool:
    """Whether the web demo can be mounted (Gradio comes with the ``demo`` extra)."""
    import importlib.util

    try:
        return importlib.util.find_spec("gradio") is not None
    except (
        ValueError
    ):  # a module named gradio whose spec is unset (e.g. blocked with sys.modules["gradio"] = None)
        return False


DEMO_NEEDS_GRADIO = (
    "the web demo needs Gradio: install it with `pip install 'flamingo-vlm[demo]'`, "
    "or serve the HTTP API alone with --no-demo"
)


def create_app(
    pipeline: FlamingoPipeline,
    limits: ServeLimits | None = None,
    model_name: str = "",
    demo: bool | None = None,
) -> FastAPI:
    """The application around ``pipeline``; its worker thread starts and stops with the app's lifespan.

    ``demo``: True mounts the web demo at ``/`` (Gradio must be installed), False serves the API alone, None
    (default) mounts it when Gradio is installed. The API never needs Gradio.
    """
    from flamingo.serve.examples import example_prompts

    if demo is None:
        demo = gradio_installed()
        if not demo:
            log.warning("Gradio is not installed: serving the HTTP API without the web demo")
    elif demo and not gradio_installed():
        raise RuntimeError(DEMO_NEEDS_GRADIO)
    limits = limits or ServeLimits()
    worker = BatchWorker(pipeline, limits.max_batch_size, limits.batch_wait_ms, limits.max_queue)
    budget = MemoryBudget(limits.max_pending_bytes)
    intake = RequestImages(pipeline, limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        worker.start()
        yield
        worker.stop()
        intake.shutdown()

    app = FastAPI(title="flamingo-vlm", summary="Few-shot vision-language generation", lifespan=lifespan)
    app.state.worker, app.state.budget = worker, budget
    app.state.demo = demo
    max_body = (
        limits.max_images * (pipeline.policy.max_image_bytes * 4 // 3 + 1024)
        + 4 * limits.max_text_chars
        + 65536
    )
    app.add_middleware(
        BodyLimitMiddleware,
        limit=min(max_body, limits.max_pending_bytes),
        budget=budget,
        timeout_s=limits.body_timeout_s,
    )
    _add_error_handlers(app)
    examples = example_prompts()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness, the model, the limits, the worker's counters (``batches`` counts ``generate`` calls), the
        memory the requests in flight hold and the URL fetches in progress."""
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
                "url_timeout_s": policy.url_timeout_s,
            },
            "worker": worker.snapshot(),
            "memory": {"pending_bytes": budget.used, "max_pending_bytes": budget.max_bytes},
            "fetches": intake.fetcher.pending,
        }

    @app.get("/v1/examples")
    async def get_examples() -> list[dict[str, Any]]:
        """Ready-made few-shot prompts (images generated at startup, as data URLs); the web demo shows them."""
        return examples

    @app.post(
        "/v1/generate",
        response_model=GenerateResponse,
        responses={400: {}, 403: {}, 408: {}, 413: {}, 415: {}, 422: {}, 503: {}, 504: {}},
    )
    async def generate(request: GenerateBody, http: Request) -> Any:
        """Generate a continuation of an interleaved prompt; ``stream: true`` answers with server-sent events."""
        settings = check_settings(request, limits)
        reservation = http.scope.get(RESERVATION_KEY) or budget.reservation()
        try:
            row = await intake.row(request, reservation)
            job = worker.submit(
                Job(row=row, settings=settings, stream=request.stream, reservation=reservation)
            )
        except BaseException:
            reservation.release()
            raise
        if request.stream:
            return StreamingResponse(
                stream_events(job, limits.request_timeout_s),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            # Waits without a thread; asyncio.wait (unlike wait_for) never cancels the worker's future.
            done, _ = await asyncio.wait({asyncio.wrap_future(job.future)}, timeout=limits.request_timeout_s)
        except asyncio.CancelledError:
            job.cancelled.set()
            raise
        if not done:
            job.cancelled.set()
            raise InputError(f"no answer within {limits.request_timeout_s} s", "timeout", 504)
        completion = job.future.result()
        return GenerateResponse(text=completion.text, usage=usage_of(completion, job))

    if demo:
        from flamingo.serve.ui import mount_demo

        # last: it answers every path not matched above
        mount_demo(app, pipeline, worker, limits, model_name, budget)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InputError)
    async def input_error(request: Request, err: InputError) -> JSONResponse:
        return error_response(err)

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
