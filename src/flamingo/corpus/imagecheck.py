"""Image bytes -> checked format and size for the builder: content sniffing and decompression-bomb protection.

The implementation is :mod:`flamingo.io.images`, shared with the server: the format comes from the magic bytes
only (never the file extension or the Content-Type header), and the pixel count is read from the header and
checked *before* any pixel is decoded.
"""

from __future__ import annotations

from flamingo.io.images import EXTENSIONS, ImageRejected, inspect_image, open_rgb, sniff_format

__all__ = ["EXTENSIONS", "ImageRejected", "inspect_image", "open_rgb", "sniff_format"]
