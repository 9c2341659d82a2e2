"""The server under hostile load: slow image URLs, oversized bodies and a full memory budget neither swell nor
stall it. A real uvicorn on 127.0.0.1 (in a thread of this process), a loopback drip server, short deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image
from serve_support import free_port, png_base64

pytest.importorskip("fastapi")
import httpx
import uvicorn

from flamingo.serve.app import BodyLimitMiddleware, ServeLimits, create_app
from flamingo.serve.server import load_server_pipeline

URL_TIMEOUT_S = 3.0
LIMITS = ServeLimits(max_images=3, max_new_tokens=16, batch_wait_ms=5, max_pending_bytes=8 << 20)
TEXT_ONLY = {"prompt": [{"type": "text", "text": "Output:"}], "max_new_tokens": 3}


class _Drip(BaseHTTPRequestHandler):
    """Every GET: a 200 with Content-Length 1000, then the body one byte a second."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the fetcher gave up
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(1.0)


@pytest.fixture(scope="module")
def drip():
    """The base URL of a loopback server that sends each image one byte a second."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def served(model_dir):
    """(base URL, app) of a server with URLs allowed (loopback too), a 3 s URL deadline and an 8 MiB budget."""
    pipeline = load_server_pipeline(
        str(model_dir),
        allow_urls=True,
        allow_private_urls=True,
        url_timeout_s=URL_TIMEOUT_S,
        max_image_bytes=200_000,
        max_image_pixels=1024 * 1024,
        max_prompt_tokens=64,
    )
    app = create_app(pipeline, LIMITS, model_name="tiny")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the test server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(30)


def _timed(call):
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start


def test_slow_urls_stall_neither_health_nor_url_free_requests(served, drip):
    """45 requests whose image URL drips a byte a second: /health and a text-only request answer at once while
    they are in flight, and each of the 45 is answered by its URL deadline (not after the 1000 s the drip
    would take)."""
    url, app = served
    body = {
        "prompt": [{"type": "image", "url": drip + "/image.png"}, {"type": "text", "text": "Output:"}],
        "max_new_tokens": 3,
    }
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(45) as pool:
        client.post(f"{url}/v1/generate", json=TEXT_ONLY).raise_for_status()  # warm
        start = time.monotonic()
        slow = [pool.submit(_timed, lambda: client.post(f"{url}/v1/generate", json=body)) for _ in range(45)]
        time.sleep(1.0)  # the fetches are dripping now
        health, health_s = _timed(lambda: client.get(f"{url}/health"))
        assert health.status_code == 200 and health_s < 1.0, health_s
        assert health.json()["fetches"] > 0  # measured while URLs were being fetched
        plain, plain_s = _timed(lambda: client.post(f"{url}/v1/generate", json=TEXT_ONLY))
        assert plain.status_code == 200 and plain_s < 3.0, plain_s
        answers = [future.result() for future in slow]
    assert all(r.status_code == 422 and r.json()["error"]["code"] == "url_fetch_failed" for r, _ in answers)
    assert "took longer than 3.0 s" in answers[0][0].json()["error"]["message"]
    assert max(seconds for _, seconds in answers) < URL_TIMEOUT_S + 2.0
    assert time.monotonic() - start < URL_TIMEOUT_S + 3.0
    assert app.state.budget.used == 0  # nothing held once answered


def _raw_request(url: str, head: bytes, body: bytes = b"", timeout: float = 5.0) -> bytes:
    """Send ``head`` (and ``body``) on a fresh connection; return the response's status line and headers."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def test_a_content_length_over_the_limit_is_refused_unread(served):
    """The head says a gigabyte follows and no byte of it is sent: the 413 comes at once, so nothing waited
    for (or buffered) the body."""
    url, _ = served
    head = (
        b"POST /v1/generate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000\r\n\r\n"
    )
    response, seconds = _timed(lambda: _raw_request(url, head, timeout=5.0))
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert seconds < 2.0


def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives(served):
    url, _ = served
    head = (
        b"POST /v1/generate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"x" * 65536
    chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
    body = chunk * 16  # 1 MiB: over this server's body limit, and the final zero-size chunk never comes
    response = _raw_request(url, head, body)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]


def test_body_counting_is_linear_in_the_number_of_chunks():
    """40,000 chunks of 100 bytes: collected in a list this takes a fraction of a second; joined by repeated
    concatenation it copies ~80 GB. No bytes from the network: the middleware alone, fed by a fake receive."""

    async def run() -> tuple[list[dict], float]:
        chunks = iter([b"y" * 100] * 40_001)
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": next(chunks), "more_body": True}

        async def send(message: dict) -> None:
            sent.append(message)

        async def app(scope, receive, send):  # pragma: no cover - never reached
            raise AssertionError("the oversized body reached the application")

        middleware = BodyLimitMiddleware(app, limit=4_000_000)
        start = time.monotonic()
        await middleware({"type": "http", "method": "POST", "headers": []}, receive, send)
        return sent, time.monotonic() - start

    sent, seconds = asyncio.run(run())
    assert sent[0]["status"] == 413
    assert seconds < 2.0, seconds


def test_a_full_budget_answers_503_with_retry_after_at_once(served, images):
    """Memory held by requests in flight (taken here directly from the server's budget) leaves no room: a
    request with an image gets 503 and Retry-After without waiting, and is served once the memory is freed.
    A request that alone needs more than the whole budget gets 413 (retrying cannot help)."""
    url, app = served
    budget = app.state.budget
    image = png_base64(images[0])
    body = {
        "prompt": [{"type": "image", "base64": image}, {"type": "text", "text": "Output:"}],
        "max_new_tokens": 3,
    }
    held = budget.reservation()
    # The body fits in what is left; the decoded image (96 x 96 pixels, 4 bytes each) does not.
    held.grow(budget.max_bytes - len(json.dumps(body)) - 10_000)
    try:
        response, seconds = _timed(lambda: httpx.post(f"{url}/v1/generate", json=body, timeout=30))
        assert response.status_code == 503 and response.json()["error"]["code"] == "server_busy", (
            response.text
        )
        assert response.headers["Retry-After"] == "1" and seconds < 1.0
        text_body = {**TEXT_ONLY, "prompt": [{"type": "text", "text": "Output:" + "z" * 20_000}]}
        refused = httpx.post(
            f"{url}/v1/generate", json=text_body, timeout=30
        )  # now the body alone is too much
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    finally:
        held.release()
    assert httpx.post(f"{url}/v1/generate", json=body, timeout=30).status_code == 200
    # 1024 x 1024 grey: 8 MiB to decode and convert to RGB, the whole budget, before its body is counted.
    grey = Image.linear_gradient("L").resize((1024, 1024))
    alone = httpx.post(
        f"{url}/v1/generate", json={**body, "prompt": [{"type": "image", "base64": png_base64(grey)}]}
    )
    assert alone.status_code == 413 and alone.json()["error"]["code"] == "request_too_large", alone.text
    assert budget.used == 0
