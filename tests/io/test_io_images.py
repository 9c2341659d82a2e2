"""Image decoding under limits: byte and pixel limits before any pixel is decoded, reduction right after."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from flamingo.io.images import ImageRejected, decode_rgb, decoded_bytes


def _encoded(size: tuple[int, int], fmt: str) -> bytes:
    """A smooth gradient (it compresses well, as photos of that size do)."""
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    pixels = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def test_limits_are_checked_before_decoding():
    data = _encoded((300, 200), "PNG")
    seen = []
    with pytest.raises(ImageRejected) as info:
        decode_rgb(data, max_bytes=len(data) - 1, max_pixels=10**8, before_decode=lambda *a: seen.append(a))
    assert (info.value.reason, info.value.size) == ("too_large", len(data))
    with pytest.raises(ImageRejected) as info:
        decode_rgb(data, max_bytes=10**8, max_pixels=300 * 200 - 1, before_decode=lambda *a: seen.append(a))
    assert (info.value.reason, info.value.size) == ("decompression_bomb", (300, 200))
    assert seen == []  # refused from the header alone
    with pytest.raises(ImageRejected, match="not_an_image"):
        decode_rgb(b"%PDF-1.4 not an image", 10**8, 10**8)


def test_the_caller_can_refuse_after_the_header_and_before_the_pixels():
    class Full(Exception):
        pass

    def refuse(width, height, mode):
        raise Full(f"{width}x{height} {mode}")

    with pytest.raises(Full, match="300x200 RGB"):  # the caller's own error, not a decode error
        decode_rgb(_encoded((300, 200), "PNG"), 10**8, 10**8, before_decode=refuse)


def test_large_images_are_reduced_and_small_ones_kept():
    small = decode_rgb(_encoded((120, 90), "PNG"), 10**8, 10**8, min_side=64)
    assert small.size == (120, 90) and small.mode == "RGB"  # shorter side under 2 x 64: kept as sent
    big = decode_rgb(_encoded((800, 400), "PNG"), 10**8, 10**8, min_side=32)
    assert 32 <= min(big.size) < 64 and abs(big.size[0] / big.size[1] - 2) < 0.05
    reference = Image.open(io.BytesIO(_encoded((800, 400), "PNG"))).convert("RGB").resize(big.size)
    assert np.abs(np.asarray(big, np.int16) - np.asarray(reference, np.int16)).mean() < 3  # the same picture


def test_a_jpeg_is_decoded_at_the_reduced_scale():
    """The header says 2048x2048; the decoder is asked for 1/8 scale, so the full-size image is never built
    (the memory the caller reserves is that of 256x256)."""
    seen = []
    image = decode_rgb(
        _encoded((2048, 2048), "JPEG"),
        10**8,
        2048 * 2048,
        min_side=112,
        before_decode=lambda *a: seen.append(a),
    )
    assert seen == [(256, 256, "RGB")]
    assert decoded_bytes(*seen[0]) == 256 * 256 * 4
    assert 112 <= min(image.size) < 224
