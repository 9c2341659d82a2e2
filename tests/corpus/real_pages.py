"""Real documentation pages for the builder: list them, serve them on 127.0.0.1, write them into a WARC.

The fixture (``tests/fixtures/real_pages/``, sources and licences in its README.md) keeps each site's files
at their relative paths, so a page's relative image links resolve on the server exactly as on the original
site; images larger than the fixture keeps answer 404, as missing images do on the web. ``bench/bench_build.py``
uses the same helpers on the full page set extracted from the Debian packages.
"""

from __future__ import annotations

import io
import mimetypes
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "real_pages"
SITES = ("debian-handbook", "scikit-image")


def fixture_pages(root: Path = FIXTURE) -> list[str]:
    """The HTML pages under ``root`` as sorted paths relative to it (``site/.../page.html``)."""
    return sorted(p.relative_to(root).as_posix() for site in SITES for p in (root / site).rglob("*.html"))


class SiteServer:
    """Serves the files under ``root`` on 127.0.0.1 (a context manager); paths outside ``root`` answer 404."""

    def __init__(self, root: Path) -> None:
        base = root.resolve()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                target = (base / self.path.split("?", 1)[0].lstrip("/")).resolve()
                body = target.read_bytes() if target.is_file() and target.is_relative_to(base) else None
                self.send_response(200 if body is not None else 404)
                kind = mimetypes.guess_type(target.name)[0] if body is not None else None
                self.send_header("Content-Type", kind or "application/octet-stream")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> SiteServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def write_pages_warc(path: Path, root: Path, pages: Sequence[str], base_url: str) -> dict[str, str]:
    """A gzipped WARC with one HTML response per page of ``root`` (bytes as stored, at URL
    ``base_url/page``); returns URL -> page path, to map the builder's documents back to pages."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    urls = {}
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        for page in pages:
            url = f"{base_url.rstrip('/')}/{page}"
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
            payload = io.BytesIO((root / page).read_bytes())
            writer.write_record(
                writer.create_warc_record(url, "response", payload=payload, http_headers=headers)
            )
            urls[url] = page
    return urls
