"""Shared fixtures for the evaluation tests: tiny images and the official-format files that hold them."""

from __future__ import annotations

from pathlib import Path

import pytest


def write_image(path: Path, colour: tuple[int, int, int] = (200, 30, 30), fmt: str | None = None) -> Path:
    """Write an 8x8 single-colour image (PIL picks the format from the suffix unless given)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format=fmt)
    return path


@pytest.fixture
def image_writer():
    return write_image
