"""Fixtures for the corpus builder's tests. All network traffic goes to 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from corpus_fakes import ImageServer


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    with ImageServer(slow_s=1.0) as server:
        yield server
