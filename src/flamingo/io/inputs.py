"""Untrusted images in, PIL images out: bytes, base64, local files, web demo uploads and http(s) URLs, each under
limits.

Used by :class:`flamingo.pipeline.FlamingoPipeline` and the HTTP API alike, so both refuse the same inputs
with the same messages. Only the standard library and Pillow are imported here (no web framework).

Decoding and fetching are :mod:`flamingo.io`'s, shared with the dataset builder: byte and pixel limits are
checked before any pixel is decoded, and a URL fetch (server-side request forgery is the risk) checks every
address of every redirect hop before connecting, caps the bytes while streaming and holds one overall deadline.
This module turns their refusals into :class:`InputError` with the API's codes and wording.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image

from flamingo.errors import FlamingoError
from flamingo.io.addresses import AddressPolicy, address_refusal
from flamingo.io.fetch import FetchError, FetchPolicy, fetch
from flamingo.io.images import DECODE_FORMATS, ImageRejected, decode_rgb

# Formats decoded by Pillow itself; EPS/PS (Ghostscript subprocess) and other exotic plugins are never tried.
IMAGE_FORMATS = DECODE_FORMATS
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff"})


class InputError(FlamingoError, ValueError):
    """A request or pipeline input was refused; ``code`` names the rule, ``status`` is the HTTP status and
    ``retry_after`` (seconds) is sent as a ``Retry-After`` header when set (a busy server's 503)."""

    def __init__(
        self, message: str, code: str = "invalid_input", status: int = 400, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.message, self.code, self.status, self.retry_after = message, code, status, retry_after


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
    """Deadline for one URL fetch in wall-clock time: name lookup, connect, redirects and every read."""
    max_redirects: int = 3
    """Redirects followed; each target is checked like the first URL."""

    def fetch_policy(self) -> FetchPolicy:
        """The rules of one URL fetch under this policy (``allow_private_urls`` opens loopback and private)."""
        return FetchPolicy(
            deadline_s=self.url_timeout_s,
            max_bytes=self.max_image_bytes,
            max_redirects=self.max_redirects,
            addresses=AddressPolicy(
                allow_loopback=self.allow_private_urls, allow_private=self.allow_private_urls
            ),
        )


def image_error(err: ImageRejected, label: str, policy: ImagePolicy) -> InputError:
    """The API's error for an image :mod:`flamingo.io.images` refused."""
    if err.reason == "too_large":
        return InputError(
            f"{label} is {err.size} bytes; the limit is {policy.max_image_bytes} bytes",
            "image_too_large",
            413,
        )
    if err.reason == "decompression_bomb":
        if isinstance(err.size, tuple):
            width, height = err.size
            what = f"{width}x{height} = {width * height} pixels"
        else:
            what = f"over the limit of {policy.max_image_pixels} pixels ({err.detail})"
        return InputError(
            f"{label} is {what}; the limit is {policy.max_image_pixels} pixels", "image_too_many_pixels", 413
        )
    if err.reason in ("empty", "not_an_image"):
        return InputError(
            f"{label} is not an image Pillow can read as {', '.join(IMAGE_FORMATS)} ({err.detail})",
            "not_an_image",
            415,
        )
    return InputError(f"{label} could not be decoded: {err.detail}", "bad_image", 415)


def decode_image(
    data: bytes,
    policy: ImagePolicy,
    label: str = "image",
    min_side: int | None = None,
    before_decode: Callable[[int, int, str], None] | None = None,
) -> Image.Image:
    """Encoded bytes -> an RGB image, refusing oversized, non-image and decompression-bomb inputs.

    ``min_side`` and ``before_decode`` are those of :func:`flamingo.io.images.decode_rgb` (the server reduces
    large images at once and reserves the memory their decoding takes).
    """
    try:
        return decode_rgb(
            data, policy.max_image_bytes, policy.max_image_pixels, min_side, before_decode, IMAGE_FORMATS
        )
    except ImageRejected as err:
        raise image_error(err, label, policy) from err


def decode_base64_image(
    text: str,
    policy: ImagePolicy,
    label: str = "image",
    min_side: int | None = None,
    before_decode: Callable[[int, int, str], None] | None = None,
) -> Image.Image:
    """A base64 string (optionally a ``data:image/...;base64,`` URL) -> an RGB image (``min_side`` and
    ``before_decode`` as in :func:`decode_image`)."""
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
    return decode_image(data, policy, label, min_side, before_decode)


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
    path: str | Path,
    upload_dir: str | Path,
    policy: ImagePolicy,
    label: str = "image",
    min_side: int | None = None,
    before_decode: Callable[[int, int, str], None] | None = None,
) -> Image.Image:
    """A file the web demo received into ``upload_dir`` -> an RGB image under ``policy``'s byte and pixel limits.

    For the server, which never reads paths a request names (``policy.allow_paths`` is off): a path that does not
    resolve (links and ``..`` followed) to a file inside ``upload_dir`` is refused before it is opened.
    ``min_side`` and ``before_decode`` are those of :func:`decode_image`.
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
    return decode_image(data, policy, label, min_side, before_decode)


def is_url(text: str) -> bool:
    """True for a single http(s) URL with no whitespace (how the pipeline tells URLs from prompt text)."""
    return text[:8].lower().startswith(("http://", "https://")) and not any(c.isspace() for c in text)


def address_allowed(address: str) -> bool:
    """True for a public unicast address (:func:`flamingo.io.addresses.address_refusal`, the builder's rule too)."""
    return address_refusal(address) is None


def check_url(url: str, policy: ImagePolicy) -> None:
    """Refuse ``url`` before any connection when fetching is off or it is not an http(s) URL with a host."""
    if not policy.allow_urls:
        raise InputError(
            "fetching image URLs is disabled; send the image as base64 (or start the server with --allow-urls)",
            "urls_disabled",
            403,
        )
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InputError(f"{url!r}: only http:// and https:// URLs with a host are fetched", "bad_url_scheme")


def fetch_error(err: FetchError, policy: ImagePolicy) -> InputError:
    """The API's error for a fetch :mod:`flamingo.io.fetch` refused or that failed."""
    url = err.url
    if err.reason == "refused_address":
        return InputError(
            f"{url!r} points to a non-public address ({err.address}); private, loopback and link-local "
            "addresses are refused",
            "url_forbidden",
            403,
        )
    if err.reason == "unsupported_url":
        return InputError(
            f"{url!r}: only http:// and https:// URLs with a host are fetched", "bad_url_scheme"
        )
    if err.reason == "unresolvable":
        return InputError(f"{url!r}: cannot resolve the host ({err.detail})", "url_unresolvable")
    if err.reason == "too_large":
        if err.declared is not None:
            text = f"{url!r} is {err.declared} bytes; the limit is {policy.max_image_bytes} bytes"
        else:
            text = f"{url!r} is over the limit of {policy.max_image_bytes} bytes"
        return InputError(text, "image_too_large", 413)
    if err.reason == "busy":
        return InputError(
            "the server is fetching too many image URLs; retry shortly", "server_busy", 503, retry_after=1
        )
    if err.reason == "timeout":
        return InputError(f"{url!r} took longer than {policy.url_timeout_s} s", "url_fetch_failed", 422)
    if err.status is not None:
        return InputError(f"{url!r} answered HTTP {err.status}", "url_fetch_failed", 422)
    if err.reason == "too_many_redirects":
        return InputError(f"{url!r}: more than {policy.max_redirects} redirects", "url_fetch_failed", 422)
    return InputError(f"{url!r} could not be fetched ({err})", "url_fetch_failed", 422)


def fetch_url_bytes(url: str, policy: ImagePolicy) -> bytes:
    """GET ``url`` in this thread with :func:`flamingo.io.fetch.fetch`: at most ``policy.max_redirects``
    redirects, each re-checked, at most ``policy.max_image_bytes`` bytes, all within ``policy.url_timeout_s``."""
    check_url(url, policy)
    try:
        return fetch(url, policy.fetch_policy()).body
    except FetchError as err:
        raise fetch_error(err, policy) from err


def fetch_image_url(url: str, policy: ImagePolicy, label: str = "image") -> Image.Image:
    """An http(s) URL -> an RGB image, under every rule of :func:`fetch_url_bytes` and :func:`decode_image`."""
    return decode_image(fetch_url_bytes(url, policy), policy, f"{label} ({url})")
