"""The HTTP API: parity with the Python pipeline, every limit as a clear 4xx, batching under concurrency."""

from __future__ import annotations

import base64
import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from serve_support import png_base64

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from flamingo.serve.app import ServeLimits, create_app
from flamingo.serve.server import load_server_pipeline

LIMITS = ServeLimits(max_images=3, max_new_tokens=32, max_text_chars=4000, batch_wait_ms=5)


@pytest.fixture(scope="module")
def client(model_dir):
    pipeline = load_server_pipeline(
        str(model_dir),
        allow_urls=True,
        max_image_bytes=20_000,
        max_image_pixels=256 * 256,
        max_prompt_tokens=64,
    )
    with TestClient(create_app(pipeline, LIMITS, model_name="tiny")) as test_client:
        yield test_client


def _few_shot(images, text="Output:a red circle<|endofchunk|>\n"):
    return [
        {"type": "image", "base64": png_base64(images[0])},
        {"type": "text", "text": text},
        {"type": "image", "base64": png_base64(images[1])},
        {"type": "text", "text": "Output:"},
    ]


def _assert_error(response, status: int, code: str, words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert words in error["message"]


def _still_serving(client) -> None:
    assert client.get("/health").json()["status"] == "ok"
    ok = client.post(
        "/v1/generate", json={"prompt": [{"type": "text", "text": "Output:"}], "max_new_tokens": 3}
    )
    assert ok.status_code == 200 and "text" in ok.json()


def test_generate_matches_the_pipeline(client, pipe, images):
    body = {"prompt": _few_shot(images), "max_new_tokens": 12}
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 200, response.text
    expected = pipe(
        [images[0], "Output:a red circle<|endofchunk|>\n", images[1], "Output:"], max_new_tokens=12
    )
    assert response.json()["text"] == expected
    usage = response.json()["usage"]
    assert usage["images"] == 2 and usage["completion_tokens"] >= 1 and usage["prompt_tokens"] > 2
    beams = client.post("/v1/generate", json={**body, "num_beams": 3}).json()["text"]
    assert beams == pipe(
        [images[0], "Output:a red circle<|endofchunk|>\n", images[1], "Output:"],
        max_new_tokens=12,
        num_beams=3,
    )


def test_streaming_sends_the_same_text_as_events(client, images):
    body = {"prompt": _few_shot(images), "max_new_tokens": 12}
    plain = client.post("/v1/generate", json=body).json()["text"]
    with client.stream("POST", "/v1/generate", json={**body, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = "".join(response.iter_text())
    events = [block for block in raw.split("\n\n") if block.strip()]
    import json

    pieces = [json.loads(e.split("data: ", 1)[1]) for e in events]
    assert events[-1].startswith("event: done")
    assert "".join(p["text"] for p in pieces[:-1]) == plain == pieces[-1]["text"]


def _noise_png(size: int) -> str:
    pixels = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    return png_base64(Image.fromarray(pixels))


@pytest.mark.parametrize(
    ("part", "status", "code", "words"),
    [
        ({"type": "image", "base64": "not base64 at all!"}, 400, "invalid_base64", "not valid base64"),
        (
            {"type": "image", "base64": base64.b64encode(b"%PDF-1.4 a pdf").decode()},
            415,
            "not_an_image",
            "not an image",
        ),
        (
            {"type": "image", "base64": lambda: _noise_png(200)},
            413,
            "image_too_large",
            "the limit is 20000 bytes",
        ),
        (
            {"type": "image", "base64": lambda: png_base64(Image.new("RGB", (600, 600)))},
            413,
            "image_too_many_pixels",
            "the limit is 65536 pixels",
        ),
        ({"type": "image", "url": "http://10.0.0.1/x.png"}, 403, "url_forbidden", "non-public address"),
        ({"type": "image", "url": "http://127.0.0.1:9/x.png"}, 403, "url_forbidden", "non-public address"),
        (
            {"type": "image", "url": "http://169.254.169.254/latest"},
            403,
            "url_forbidden",
            "non-public address",
        ),
        ({"type": "image", "url": "file:///etc/passwd"}, 400, "bad_url_scheme", "only http"),
        ({"type": "image"}, 400, "bad_image_part", "exactly one of"),
        ({"type": "text", "text": "<image>"}, 400, "bad_text", "may not contain <image>"),
        ({"type": "text", "text": "word " * 200}, 413, "prompt_too_long", "the limit is 64"),
        ({"type": "image", "path": "/etc/passwd"}, 422, "invalid_request", "path"),
    ],
)
def test_bad_inputs_get_clear_errors_before_any_connection(client, monkeypatch, part, status, code, words):
    part = {k: (v() if callable(v) else v) for k, v in part.items()}  # big payloads built on use
    connections = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: connections.append(a) or 1 / 0)
    response = client.post("/v1/generate", json={"prompt": [part, {"type": "text", "text": "Output:"}]})
    _assert_error(response, status, code, words)
    assert connections == []  # refused before connecting anywhere
    monkeypatch.undo()
    _still_serving(client)


def test_request_level_limits(client, images):
    many = [{"type": "image", "base64": png_base64(images[0])}] * 4
    _assert_error(client.post("/v1/generate", json={"prompt": many}), 400, "too_many_images", "limit is 3")
    text = [{"type": "text", "text": "Output:"}]
    response = client.post("/v1/generate", json={"prompt": text, "max_new_tokens": 500})
    _assert_error(response, 400, "too_many_new_tokens", "limit is 32")
    _assert_error(client.post("/v1/generate", json={"prompt": []}), 422, "invalid_request", "prompt")
    response = client.post("/v1/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "error" in response.json()
    huge = {"prompt": [{"type": "text", "text": "x" * 2_000_000}]}
    _assert_error(client.post("/v1/generate", json=huge), 413, "body_too_large", "request body is over")
    _still_serving(client)


def test_openapi_describes_generate(client):
    schema = client.get("/openapi.json").json()
    assert "/v1/generate" in schema["paths"] and "GenerateBody" in schema["components"]["schemas"]


def test_concurrent_requests_are_batched_and_routed_back(live_server, pipe, images):
    import httpx

    prompts = [
        [images[i % 4], f"Output:shape {i % 4}<|endofchunk|>\n", images[(i + 1) % 4], "Output:"]
        for i in range(4)
    ]
    expected = [pipe(p, max_new_tokens=8) for p in prompts]
    before = httpx.get(f"{live_server}/health").json()["worker"]

    def call(i: int) -> str:
        p = prompts[i % 4]
        body = {
            "prompt": [
                {"type": "image", "base64": png_base64(p[0])},
                {"type": "text", "text": p[1]},
                {"type": "image", "base64": png_base64(p[2])},
                {"type": "text", "text": p[3]},
            ],
            "max_new_tokens": 8,
        }
        response = httpx.post(f"{live_server}/v1/generate", json=body, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()["text"]

    with ThreadPoolExecutor(20) as pool:
        texts = list(pool.map(call, range(20)))
    assert texts == [expected[i % 4] for i in range(20)]  # each answer reached its own request
    after = httpx.get(f"{live_server}/health").json()["worker"]
    assert after["requests"] - before["requests"] == 20
    assert after["batches"] - before["batches"] < 20  # some requests shared a generate call
    assert after["largest_batch"] > 1


def test_url_images_are_fetched_only_when_allowed(model_dir, images, tmp_path):
    """With private URLs allowed (a trusted network), a loopback image server works end to end."""
    from http.server import HTTPServer, SimpleHTTPRequestHandler
    from threading import Thread

    images[0].save(tmp_path / "a.png")

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Quiet)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        pipeline = load_server_pipeline(str(model_dir), allow_urls=True, allow_private_urls=True)
        with TestClient(create_app(pipeline, LIMITS)) as c:
            url = f"http://127.0.0.1:{server.server_port}/a.png"
            body = {
                "prompt": [{"type": "image", "url": url}, {"type": "text", "text": "Output:"}],
                "max_new_tokens": 5,
            }
            by_url = c.post("/v1/generate", json=body)
            body["prompt"][0] = {"type": "image", "base64": png_base64(images[0])}
            assert (
                by_url.status_code == 200
                and by_url.json()["text"] == c.post("/v1/generate", json=body).json()["text"]
            )
            missing = {**body, "prompt": [{"type": "image", "url": url + ".nope"}]}
            _assert_error(c.post("/v1/generate", json=missing), 422, "url_fetch_failed", "HTTP 404")
    finally:
        server.shutdown()
    off = load_server_pipeline(str(model_dir))
    with TestClient(create_app(off, LIMITS)) as c:
        body = {"prompt": [{"type": "image", "url": "https://example.com/a.png"}]}
        _assert_error(c.post("/v1/generate", json=body), 403, "urls_disabled", "disabled")


def test_the_api_serves_without_gradio(pipe, monkeypatch):
    """With Gradio missing, the default app serves the API alone and a required demo names the extra."""
    import sys

    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now fails as if it were not installed
    from flamingo.serve.app import gradio_installed

    assert not gradio_installed()
    with TestClient(create_app(pipe, LIMITS)) as c:
        assert c.get("/health").json()["status"] == "ok"
        ok = c.post(
            "/v1/generate", json={"prompt": [{"type": "text", "text": "Output:"}], "max_new_tokens": 2}
        )
        assert ok.status_code == 200 and "text" in ok.json()
        assert c.get("/").status_code == 404  # no page mounted
    with pytest.raises(RuntimeError, match=r"flamingo-vlm\[demo\].*--no-demo"):
        create_app(pipe, LIMITS, demo=True)


def test_no_demo_leaves_the_page_out(pipe):
    with TestClient(create_app(pipe, LIMITS, demo=False)) as c:
        assert c.get("/").status_code == 404 and c.get("/health").status_code == 200
    with TestClient(create_app(pipe, LIMITS)) as c:  # Gradio is installed here: the page is mounted
        assert c.get("/").status_code == 200
