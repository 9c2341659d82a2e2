"""A loopback HTTP server with slow and hostile routes, for the fetcher's tests (127.0.0.1 only)."""

from __future__ import annotations

import contextlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class SlowServer:
    """Routes: ``/drip`` (a 1000-byte body, one byte every ``interval_s``), ``/drip-headers`` (the status line
    and headers one byte at a time), ``/ok`` (a small body), ``/to-private`` (redirect to 10.0.0.1),
    ``/hop/<n>`` (redirect n times, then ``/ok``)."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.hits: list[str] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.hits.append(self.path)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._route()

            def _drip(self, data: bytes) -> None:
                for i in range(len(data)):
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    time.sleep(server.interval_s)

            def _route(self) -> None:
                if self.path == "/drip":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self._drip(b"x" * 1000)
                elif self.path == "/drip-headers":
                    self._drip(b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"y" * 1000 + b"\r\n\r\n")
                elif self.path == "/ok":
                    self.send_response(200)
                    self.send_header("Content-Length", "5")
                    self.send_header("Content-Type", "image/png")
                    self.end_headers()
                    self.wfile.write(b"hello")
                elif self.path == "/to-private":
                    self.send_response(302)
                    self.send_header("Location", "http://10.0.0.1/secret.png")
                    self.end_headers()
                elif self.path.startswith("/hop/"):
                    left = int(self.path.rsplit("/", 1)[1])
                    self.send_response(302)
                    self.send_header("Location", f"/hop/{left - 1}" if left > 1 else "/ok")
                    self.end_headers()
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

        return Handler

    def __enter__(self) -> SlowServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
