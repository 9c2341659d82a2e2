"""Deterministic stand-ins for the builder tests: a colour "CLIP", textured images, a hostile image server.

``ColourEmbedder`` maps an image to its mean colour (centred on grey) and a text to the colour words it
contains, so "a red car" matches a reddish image with cosine ~1 and a blue one with a negative cosine.
Images are tinted random block textures, so their perceptual hashes differ even when colours match.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import struct
import threading
import time
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from flamingo.corpus.config import (
    BuildConfig,
    FetchConfig,
    FilterConfig,
    InterleaveConfig,
    ReadConfig,
    TextConfig,
)

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
_WORD_VECTORS = {
    "red": (1.0, -0.5, -0.5),
    "green": (-0.5, 1.0, -0.5),
    "blue": (-0.5, -0.5, 1.0),
    "yellow": (0.5, 0.5, -1.0),
}


class ColourEmbedder:
    """A fake CLIP: 3-d colour directions for images and texts; counts its calls."""

    def __init__(self) -> None:
        self.image_calls: list[int] = []
        self.text_calls: list[int] = []

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        self.image_calls.append(len(images))
        means = np.stack([np.asarray(im.convert("RGB"), dtype=np.float64).mean(axis=(0, 1)) for im in images])
        return means - means.mean(axis=1, keepdims=True)  # (n, 3): colour direction, grey -> 0

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        self.text_calls.append(len(texts))
        out = np.zeros((len(texts), 3))
        for i, text in enumerate(texts):
            for word in text.lower().replace(".", " ").split():
                out[i] += _WORD_VECTORS.get(word, (0.0, 0.0, 0.0))
        return out


def textured(colour: str | tuple[int, int, int], seed: int, size: int = 160) -> Image.Image:
    """A tinted random 8x8 block texture (distinct pHash per seed, mean colour close to ``colour``)."""
    rgb = np.array(COLOURS[colour] if isinstance(colour, str) else colour, dtype=np.float64)
    blocks = np.random.default_rng(seed).random((8, 8))
    texture = np.kron(blocks, np.ones((size // 8, size // 8)))  # (size, size)
    pixels = rgb[None, None, :] * (0.55 + 0.45 * texture[:, :, None])
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 1-bit greyscale PNG of width x height pixels, tiny on disk (all-zero rows compress well)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class ImageServer:
    """A local HTTP server on 127.0.0.1 with good, slow, broken and hostile routes; counts hits per path."""

    def __init__(self, slow_s: float = 1.0) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        self.hits: Counter[str] = Counter()
        self.slow_s = slow_s
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, path: str, data: bytes, content_type: str = "image/png") -> str:
        self.files[path] = (data, content_type)
        return self.base + path

    def total_hits(self) -> int:
        return sum(self.hits.values())

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                with server._lock:
                    server.hits[self.path] += 1
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
                    self._route()

            def _send(self, status: int, body: bytes, content_type: str, length: int | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)

            def _route(self) -> None:
                path = self.path
                if path.startswith("/redirect-to/"):
                    self.send_response(302)
                    self.send_header("Location", path[len("/redirect-to/") :].replace("__", "://", 1))
                    self.end_headers()
                elif path == "/loop":
                    self.send_response(302)
                    self.send_header("Location", "/loop")
                    self.end_headers()
                elif path.startswith("/slow/"):
                    time.sleep(server.slow_s)
                    self._send(200, server.files.get(path[5:], (b"", ""))[0], "image/png")
                elif path == "/drip":  # one byte every 0.1 s: each read is quick, the whole body is not
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    for _ in range(1000):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.1)
                elif path == "/error500":
                    self._send(500, b"oops", "text/plain")
                elif path.startswith("/liar/"):
                    data = server.files[path[5:]][0]
                    self._send(200, data, "image/png", length=100)
                elif path in server.files:
                    data, content_type = server.files[path]
                    self._send(200, data, content_type)
                else:
                    self._send(404, b"not found", "text/plain")

        return Handler

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def small_config(**filter_overrides: object) -> BuildConfig:
    """A config for tiny synthetic images and pages: loopback allowed, short timeouts, no face filter, every
    language, no text quality rules (the pages are a few words long)."""
    filters = {"min_side": 64, "min_bytes": 200, "max_faces": 0, "nsfw_threshold": 1.0, **filter_overrides}
    return BuildConfig(
        read=ReadConfig(),
        text=TextConfig(languages=[], gopher_quality=False, gopher_repetition=False, c4=False),
        fetch=FetchConfig(threads=4, timeout_s=0.3, retries=1, backoff_s=0.01, allow_loopback=True),
        filter=FilterConfig(**filters),
        interleave=InterleaveConfig(similarity_threshold=0.24),
        progress=False,
    )


def write_warc(path: Path, pages: list[tuple[str, str]]) -> Path:
    """A gzipped WARC with one request + one HTML response per page, plus a non-HTML response."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, html in pages:
            request = writer.create_warc_record(
                url,
                "request",
                payload=io.BytesIO(b""),
                http_headers=StatusAndHeaders(f"GET {url} HTTP/1.1", []),
            )
            writer.write_record(request)
            headers = StatusAndHeaders(
                "200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1"
            )
            response = writer.create_warc_record(
                url, "response", payload=io.BytesIO(html.encode("utf-8")), http_headers=headers
            )
            writer.write_record(response)
        css = StatusAndHeaders("200 OK", [("Content-Type", "text/css")], protocol="HTTP/1.1")
        writer.write_record(
            writer.create_warc_record(
                "http://example.com/a.css", "response", payload=io.BytesIO(b"p{}"), http_headers=css
            )
        )
    return path


def page(title: str, paragraphs: list[str], images: list[str]) -> str:
    """An HTML page with boilerplate around an article; image i follows paragraph i."""
    body = []
    for i, text in enumerate(paragraphs):
        body.append(f"<p>{text}</p>")
        if i < len(images):
            body.append(f'<img src="{images[i]}" alt="image {i}">')
    return (
        "<html><head><title>t</title><script>var x = 'Not text.';</script></head><body>"
        '<nav><a href="/">Home</a> <a href="/about">About</a></nav>'
        f"<article><h1>{title}</h1>{''.join(body)}</article>"
        "<footer>Copyright 2024 Example Inc. All rights reserved.</footer></body></html>"
    )


def check_stage_accounting(stages: dict[str, dict]) -> None:
    """``stats.json``'s stages add up: each stage's drops explain what went in and did not come out, and each
    stage takes in what the one before it (in :data:`flamingo.corpus.stats.STAGES` order) put out."""
    from flamingo.corpus.stats import STAGES

    for name, s in stages.items():
        assert s["documents_in"] - s["documents_out"] == sum(s["documents_dropped"].values()), name
        assert s["images_in"] - s["images_out"] == sum(s["images_dropped"].values()), name
    chain = [stages[name] for name in STAGES if name in stages]
    for before, after in itertools.pairwise(chain):
        assert (before["documents_out"], before["images_out"]) == (after["documents_in"], after["images_in"])
