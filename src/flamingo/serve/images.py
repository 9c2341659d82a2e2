"""Untrusted images in, PIL images out: bytes, base64, local files, web demo uploads and http(s) URLs, each under
limits.

Used by :class:`flamingo.pipeline.FlamingoPipeline` and the HTTP API alike, so both refuse the same inputs
with the same messages. Only the standard library and Pillow are imported here (no web framework).

URL fetching is the risky part (server-side request forgery): every hop of a redirect chain is resolved
first and refused unless all of its addresses are public, and the connection then goes to the address that
was checked (no second DNS lookup that could answer differently), with a byte cap and an overall deadline.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from PIL import Image, UnidentifiedImageError

from flamingo import netaddr

# Formats decoded by Pillow itself; EPS/PS (Ghostscript subprocess) and other exotic plugins are never tried.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class InputError(ValueError):
    """A request or pipeline input was refused; ``code`` names the rule, ``status`` is the HTTP status."""

    def __init__(self, message: str, code: str = "invalid_input", status: int = 400) -> None:
        super().__init__(message)
        self.message, self.code, self.status = message, code, status


@dataclass(frozen=True)
class ImagePolicy:
    """What image sources are accepted and how large they may be."""

    max_image_bytes: int = 10 * 1024 * 1024
    """Largest encoded image (file, base64 payload after decoding, or URL body)."""
    max_image_pixels: int = 4096 * 4096
    """Largest width * height, checked from the header before any pixel is decoded."""
    allow_paths: bool = True
    """Read local image files (the Python default; the server never reads paths)."""
    allow_urls: bool = False
    """Fetch http(s) URLs."""
    allow_private_urls: bool = False
    """Also fetch from loopback, private, link-local and other non-public addresses (trusted networks only)."""
    url_timeout_s: float = 10.0
    """Deadline for one URL fetch, redirects included."""
    max_redirects: int = 3
    """Redirects followed; each target is checked like the first URL."""


def decode_image(data: bytes, policy: ImagePolicy, label: str = "image") -> Image.Image:
    """Encoded bytes -> an RGB image, refusing oversized, non-image and decompression-bomb inputs."""
    if len(data) > policy.max_image_bytes:
        raise InputError(
            f"{label} is {len(data)} bytes; the limit is {policy.max_image_bytes} bytes",
            "image_too_large",
            413,
        )
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            width, height = image.size  # read from the header: nothing decoded yet
            if width * height > policy.max_image_pixels:
                raise InputError(
                    f"{label} is {width}x{height} = {width * height} pixels; the limit is "
                    f"{policy.max_image_pixels} pixels",
                    "image_too_many_pixels",
                    413,
                )
            return image.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise InputError(
            f"{label} is not an image Pillow can read as {', '.join(IMAGE_FORMATS)} ({err})",
            "not_an_image",
            415,
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{label} could not be decoded: {err}", "bad_image", 415) from err


def decode_base64_image(text: str, policy: ImagePolicy, label: str = "image") -> Image.Image:
    """A base64 string (optionally a ``data:image/...;base64,`` URL) -> an RGB image."""
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise InputError(f"{label}: a data URL must be base64-encoded", "invalid_base64")
    payload = "".join(text.split())  # allow line-wrapped base64
    if len(payload) * 3 // 4 > policy.max_image_bytes + 3:  # refuse before decoding a huge payload
        raise InputError(
            f"{label} is about {len(payload) * 3 // 4} bytes; the limit is {policy.max_image_bytes} bytes",
            "image_too_large",
            413,
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise InputError(f"{label} is not valid base64 ({err})", "invalid_base64") from err
    return decode_image(data, policy, label)


def read_image_file(path: str | Path, policy: ImagePolicy, label: str = "image") -> Image.Image:
    """A local image file -> an RGB image (only when ``policy.allow_paths``)."""
    if not policy.allow_paths:
        raise InputError(f"{label}: reading local files is disabled", "paths_disabled", 403)
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{label}: {path} is not a file", "no_such_file", 404)
    size = path.stat().st_size
    if size > policy.max_image_bytes:
        raise InputError(
            f"{label}: {path} is {size} bytes; the limit is {policy.max_image_bytes} bytes",
            "image_too_large",
            413,
        )
    return decode_image(path.read_bytes(), policy, f"{label} ({path})")


def read_upload(
    path: str | Path, upload_dir: str | Path, policy: ImagePolicy, label: str = "image"
) -> Image.Image:
    """A file the web demo received into ``upload_dir`` -> an RGB image under ``policy``'s byte and pixel limits.

    For the server, which never reads paths a request names (``policy.allow_paths`` is off): a path that does not
    resolve (links and ``..`` followed) to a file inside ``upload_dir`` is refused before it is opened.
    """
    root = Path(upload_dir).resolve()
    resolved = Path(path).resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise InputError(f"{label}: only images uploaded through the page are read", "not_an_upload", 403)
    if not resolved.is_file():
        raise InputError(f"{label}: the upload is gone; upload the image again", "no_such_file", 404)
    size = resolved.stat().st_size
    if size > policy.max_image_bytes:
        raise InputError(
            f"{label} is {size} bytes; the limit is {policy.max_image_bytes} bytes", "image_too_large", 413
        )
    with open(resolved, "rb") as file:
        data = file.read(policy.max_image_bytes + 1)  # capped even if the file grew since
    return decode_image(data, policy, label)


def is_url(text: str) -> bool:
    """True for a single http(s) URL with no whitespace (how the pipeline tells URLs from prompt text)."""
    return text[:8].lower().startswith(("http://", "https://")) and not any(c.isspace() for c in text)


def address_allowed(address: str) -> bool:
    """True for a public unicast address (:func:`flamingo.netaddr.address_refusal`, the builder's rule too)."""
    return netaddr.address_refusal(address) is None


def check_url(url: str, policy: ImagePolicy) -> tuple[str, str, int, str]:
    """Validate ``url`` and resolve its host: (scheme, host, port, address to connect to).

    Raises :class:`InputError` before any connection when fetching is off, the scheme is not http(s),
    or any address the host resolves to is not public (unless ``allow_private_urls``).
    """
    if not policy.allow_urls:
        raise InputError(
            "fetching image URLs is disabled; send the image as base64 (or start the server with --allow-urls)",
            "urls_disabled",
            403,
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"{url!r}: only http:// and https:// URLs with a host are fetched", "bad_url_scheme")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (ValueError, OSError) as err:
        raise InputError(f"{url!r}: cannot resolve the host ({err})", "url_unresolvable") from err
    addresses = [info[4][0] for info in infos]
    if not policy.allow_private_urls:
        refused = [a for a in addresses if not address_allowed(a)]
        if refused:
            raise InputError(
                f"{url!r} points to a non-public address ({refused[0]}); private, loopback and link-local "
                "addresses are refused",
                "url_forbidden",
                403,
            )
    return scheme, parts.hostname, port, addresses[0]


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to an address checked in advance, keeping ``host`` for the Host header."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """The HTTPS twin of :class:`_PinnedHTTP`; certificates are verified against ``host``."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def fetch_url_bytes(url: str, policy: ImagePolicy) -> bytes:
    """GET ``url`` following at most ``policy.max_redirects`` redirects, each re-checked; at most
    ``policy.max_image_bytes`` bytes within ``policy.url_timeout_s`` seconds."""
    deadline = time.monotonic() + policy.url_timeout_s
    for _ in range(policy.max_redirects + 1):
        scheme, host, port, address = check_url(url, policy)
        cls = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
        conn = cls(host, port, address, timeout=max(0.1, deadline - time.monotonic()))
        try:
            parts = urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", target, headers={"User-Agent": "flamingo-vlm", "Accept": "image/*"})
            response = conn.getresponse()
            if response.status in _REDIRECTS and response.getheader("Location"):
                url = urljoin(url, response.getheader("Location"))
                continue
            if response.status != 200:
                raise InputError(f"{url!r} answered HTTP {response.status}", "url_fetch_failed", 422)
            return _read_capped(response, url, policy, deadline)
        except (OSError, http.client.HTTPException) as err:
            raise InputError(f"{url!r} could not be fetched ({err})", "url_fetch_failed", 422) from err
        finally:
            conn.close()
    raise InputError(f"{url!r}: more than {policy.max_redirects} redirects", "url_fetch_failed", 422)


def _read_capped(response: http.client.HTTPResponse, url: str, policy: ImagePolicy, deadline: float) -> bytes:
    """The response body, refusing it as soon as it passes the byte cap or the deadline."""
    declared = response.getheader("Content-Length")
    if declared and declared.isdigit() and int(declared) > policy.max_image_bytes:
        raise InputError(
            f"{url!r} is {declared} bytes; the limit is {policy.max_image_bytes} bytes",
            "image_too_large",
            413,
        )
    chunks, total = [], 0
    while chunk := response.read(64 * 1024):
        total += len(chunk)
        if total > policy.max_image_bytes:
            raise InputError(
                f"{url!r} is over the limit of {policy.max_image_bytes} bytes", "image_too_large", 413
            )
        if time.monotonic() > deadline:
            raise InputError(f"{url!r} took longer than {policy.url_timeout_s} s", "url_fetch_failed", 422)
        chunks.append(chunk)
    return b"".join(chunks)


def fetch_image_url(url: str, policy: ImagePolicy, label: str = "image") -> Image.Image:
    """An http(s) URL -> an RGB image, under every rule of :func:`fetch_url_bytes` and :func:`decode_image`."""
    return decode_image(fetch_url_bytes(url, policy), policy, f"{label} ({url})")
