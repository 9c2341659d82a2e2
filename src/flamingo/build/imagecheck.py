"""Image bytes -> checked format and size: content sniffing and decompression-bomb protection.

The format comes from the magic bytes only (never the file extension or the Content-Type header), and
the pixel count is read from the header and checked *before* any pixel is decoded.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

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


class ImageRejected(Exception):
    """The bytes are not an acceptable image; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def sniff_format(data: bytes) -> str | None:
    """The image format named by the magic bytes, or None."""
    for magic, offset, name in _MAGIC:
        if data[offset : offset + len(magic)] == magic and (name != "webp" or data[:4] == b"RIFF"):
            return name
    return None


def inspect_image(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """Check ``data`` fully decodes as an image of at most ``max_pixels``; return (format, width, height).

    Raises ``ImageRejected`` with reason ``empty``, ``not_an_image``, ``decompression_bomb`` or
    ``decode_error``.
    """
    if not data:
        raise ImageRejected("empty", "0 bytes")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageRejected("not_an_image", f"unknown magic bytes {data[:8]!r}")
    try:
        with warnings.catch_warnings():
            # Our own limit is the one that counts; keep Pillow's global one from warning or raising first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(_PIL_FORMATS)) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise ImageRejected("decompression_bomb", f"{width}x{height} exceeds {max_pixels} pixels")
                if _PIL_FORMATS.get(im.format or "") != fmt:
                    raise ImageRejected("not_an_image", f"magic says {fmt}, decoder says {im.format}")
                im.load()
    except ImageRejected:
        raise
    except Image.DecompressionBombError as e:
        raise ImageRejected("decompression_bomb", str(e)) from e
    except Exception as e:  # Pillow raises many types for corrupt data (OSError, SyntaxError, ValueError...)
        raise ImageRejected("decode_error", f"{type(e).__name__}: {e}") from e
    if width < 1 or height < 1:
        raise ImageRejected("decode_error", f"{width}x{height}")
    return fmt, width, height


def open_rgb(data: bytes) -> Image.Image:
    """Decode checked bytes into an RGB PIL image (first frame for animations)."""
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")
