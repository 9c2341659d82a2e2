"""Untrusted image bytes -> a checked, decoded image, with every limit checked before any pixel is decoded.

One implementation for the dataset builder (which sniffs the format from the magic bytes and stores the bytes)
and the server and pipeline (which decode to RGB for the model):

- the byte size is checked first (``too_large``);
- Pillow opens the bytes with a fixed list of formats only (never EPS/PS, which would start Ghostscript, or
  other exotic plugins);
- the pixel count comes from the header and is checked before decoding (``decompression_bomb``);
- a caller that keeps images for later (the server's queue) can have them reduced right after decoding, JPEGs
  already while decoding (``draft``), so a large picture never stays in memory at full size.

Failures raise :class:`ImageRejected` with a short ``reason`` code; callers turn it into their own wording.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from PIL import Image, UnidentifiedImageError

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "png"),
    (b"GIF87a", 0, "gif"),
    (b"GIF89a", 0, "gif"),
    (b"WEBP", 8, "webp"),
    (b"BM", 0, "bmp"),
)
_PIL_FORMATS = {"JPEG": "jpeg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "MPO": "jpeg"}
EXTENSIONS = {"jpeg": "jpg", "png": "png", "gif": "gif", "webp": "webp", "bmp": "bmp"}
"""File extension of each sniffed format (the builder names stored files with it)."""

DECODE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
"""Formats decoded for the model (Pillow's own decoders; no plugin that runs another program)."""
BUILD_FORMATS = tuple(_PIL_FORMATS)
"""Formats the dataset builder stores (each one it can name from the magic bytes)."""


class ImageRejected(Exception):
    """The bytes are not an acceptable image.

    ``reason`` is a short code: ``empty``, ``too_large`` (bytes), ``decompression_bomb`` (pixels),
    ``not_an_image`` or ``decode_error``; ``size`` holds the byte count or ``(width, height)`` that broke the
    limit ``limit``, where known.
    """

    def __init__(
        self,
        reason: str,
        detail: str = "",
        size: int | tuple[int, int] | None = None,
        limit: int | None = None,
    ) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail, self.size, self.limit = reason, detail, size, limit


def sniff_format(data: bytes) -> str | None:
    """The image format named by the magic bytes, or None."""
    for magic, offset, name in _MAGIC:
        if data[offset : offset + len(magic)] == magic and (name != "webp" or data[:4] == b"RIFF"):
            return name
    return None


def check_bytes(size: int, max_bytes: int) -> None:
    """Refuse ``size`` encoded bytes over ``max_bytes`` (``too_large``) before anything is read or decoded."""
    if size > max_bytes:
        raise ImageRejected("too_large", f"{size} bytes > {max_bytes}", size=size, limit=max_bytes)


@contextmanager
def open_checked(
    data: bytes, max_pixels: int, formats: tuple[str, ...] = DECODE_FORMATS
) -> Iterator[Image.Image]:
    """``data`` opened lazily (header read, no pixel decoded) with its width * height checked against
    ``max_pixels``; decode it inside :func:`decoding` so that corrupt data raises :class:`ImageRejected`."""
    if not data:
        raise ImageRejected("empty", "0 bytes")
    with decoding(), warnings.catch_warnings():
        # Our own limit is the one that counts; keep Pillow's global one from warning first.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data), formats=list(formats))
    try:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageRejected(
                "decompression_bomb",
                f"{width}x{height} exceeds {max_pixels} pixels",
                size=(width, height),
                limit=max_pixels,
            )
        if width < 1 or height < 1:
            raise ImageRejected("decode_error", f"{width}x{height}")
        yield image
    finally:
        image.close()


@contextmanager
def decoding() -> Iterator[None]:
    """Pillow's errors for unreadable or corrupt data, raised in the block, as :class:`ImageRejected`."""
    try:
        yield
    except ImageRejected:
        raise
    except Image.DecompressionBombError as err:  # Pillow's own ceiling, hit while opening
        raise ImageRejected("decompression_bomb", str(err)) from err
    except UnidentifiedImageError as err:
        raise ImageRejected("not_an_image", str(err)) from err
    except (
        Exception
    ) as err:  # Pillow raises many types for corrupt data (OSError, SyntaxError, ValueError...)
        raise ImageRejected("decode_error", f"{type(err).__name__}: {err}") from err


def inspect_image(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """Check ``data`` fully decodes as an image of at most ``max_pixels``; return (format, width, height).

    The format is named by the magic bytes (never a file extension or a Content-Type header) and must agree
    with the decoder's. Raises ``ImageRejected`` with reason ``empty``, ``not_an_image``,
    ``decompression_bomb`` or ``decode_error``.
    """
    if not data:
        raise ImageRejected("empty", "0 bytes")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageRejected("not_an_image", f"unknown magic bytes {data[:8]!r}")
    with open_checked(data, max_pixels, BUILD_FORMATS) as image:
        if _PIL_FORMATS.get(image.format or "") != fmt:
            raise ImageRejected("not_an_image", f"magic says {fmt}, decoder says {image.format}")
        width, height = image.size
        with decoding():
            image.load()
    return fmt, width, height


def open_rgb(data: bytes) -> Image.Image:
    """Decode bytes already checked by :func:`inspect_image` into an RGB PIL image (first frame of animations)."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def decoded_bytes(width: int, height: int, mode: str) -> int:
    """Memory Pillow takes to hold a ``width`` x ``height`` image decoded in ``mode`` and converted to RGB.

    Pillow keeps RGB in 4 bytes a pixel; an image in another mode is held once as decoded and once converted.
    """
    return width * height * (4 if mode == "RGB" else 8)


def reduction_factor(width: int, height: int, min_side: int) -> int:
    """The largest whole factor that keeps the shorter side at ``min_side`` pixels or more (1: keep as is)."""
    return max(1, min(width, height) // max(1, min_side))


def decode_rgb(
    data: bytes,
    max_bytes: int,
    max_pixels: int,
    min_side: int | None = None,
    before_decode: Callable[[int, int, str], None] | None = None,
    formats: tuple[str, ...] = DECODE_FORMATS,
) -> Image.Image:
    """Checked bytes -> an RGB image (first frame of animations).

    ``max_bytes`` and ``max_pixels`` are checked before any pixel is decoded. With ``min_side``, an image whose
    shorter side is at least twice ``min_side`` comes back reduced by a whole factor (box filter) to a shorter
    side in ``[min_side, 2 * min_side)``; a JPEG is decoded at the reduced DCT scale straight away. Smaller
    images come back untouched. ``before_decode(width, height, mode)`` runs after the header is read and
    before the pixels are decoded (at the JPEG's reduced scale), so a caller can reserve the memory the
    decoding takes or refuse it by raising.
    """
    if not data:
        raise ImageRejected("empty", "0 bytes")
    check_bytes(len(data), max_bytes)
    with open_checked(data, max_pixels, formats) as image:
        if min_side and image.format in ("JPEG", "MPO"):
            factor = reduction_factor(*image.size, min_side)
            if factor >= 2:  # libjpeg scales by 1/2, 1/4 or 1/8 while decoding: the full size is never built
                width, height = image.size
                image.draft(None, (-(-width // factor), -(-height // factor)))
        if before_decode is not None:
            before_decode(image.size[0], image.size[1], image.mode)
        with decoding():
            image.load()
            factor = reduction_factor(*image.size, min_side) if min_side else 1
            if factor < 2:
                return image.convert("RGB")  # a copy: the opened image is closed on leaving
            return (image if image.mode == "RGB" else image.convert("RGB")).reduce(factor)
