"""Fixtures for the dataset-builder tests. All network traffic goes to 127.0.0.1."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    import flamingo.build  # noqa: F401
except ImportError:  # a source checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from build_fakes import ImageServer


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    with ImageServer(slow_s=1.0) as server:
        yield server
