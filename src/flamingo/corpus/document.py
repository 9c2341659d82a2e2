"""The documents that flow between builder stages.

A stage never deletes an image from a document: it marks it with a ``failure`` reason so that the
accounting (``stats.json``) and the fetch manifest can say why it was lost. Documents themselves are
dropped by returning fewer of them. Stages copy what they change (``dataclasses.replace``), so a stage
is a pure function of its inputs and can run in a worker process or a Ray task unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ImageRef:
    """One image of a web document, from its reference on the page to its fetched, checked bytes."""

    url: str
    """Where the image comes from: an absolute http(s) or file URL, or a local path as the input wrote it."""
    alt: str = ""
    """The alt text on the page ("" when none)."""
    position: int | None = None
    """Index of the sentence the image precedes on the page (0..len(sentences)); None when unknown."""
    data: bytes | None = None
    """The fetched bytes; None before fetching, after a failure, or once stored on disk and released."""
    path: str | None = None
    """Where the fetched bytes are stored (content-addressed, inside the output folder)."""
    failure: str | None = None
    """Why the image was dropped (e.g. ``http_404``, ``duplicate``); None while it is kept."""
    sha256: str | None = None
    """Hex SHA-256 of the bytes."""
    phash: str | None = None
    """Hex perceptual hash (imagehash pHash, 64 bits)."""
    width: int | None = None
    """Width in pixels, from the decoded image."""
    height: int | None = None
    """Height in pixels, from the decoded image."""
    format: str | None = None
    """Format sniffed from the magic bytes: jpeg, png, gif, webp or bmp."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Anything else (declared content type, number of faces, NSFW score, ...)."""

    @property
    def alive(self) -> bool:
        """True while no stage has dropped the image."""
        return self.failure is None

    def drop(self, reason: str) -> ImageRef:
        """Return a copy marked as dropped for ``reason``, with its bytes released."""
        return dataclasses.replace(self, failure=reason, data=None)

    def annotate(self, **metadata: Any) -> ImageRef:
        """Return a copy with ``metadata`` added."""
        return dataclasses.replace(self, metadata={**self.metadata, **metadata})

    def load_bytes(self) -> bytes:
        """The image bytes, from memory or from the stored file."""
        if self.data is not None:
            return self.data
        if self.path is None:
            raise ValueError(
                f"image {self.url!r} has no bytes: it was never fetched (run the fetch stage first)"
            )
        with open(self.path, "rb") as f:
            return f.read()


@dataclass
class WebDocument:
    """A web page (or JSONL document) as sentences plus the images placed among them."""

    id: str
    """Stable identifier (WARC record id, JSONL id, or a hash of the source and position)."""
    url: str
    """The page URL ("" when unknown)."""
    sentences: list[str]
    """The main text as entries: sentences of prose, headings whole, code blocks whole with their line breaks
    (``metadata["code_entries"]`` holds the indices of the code ones)."""
    images: list[ImageRef] = field(default_factory=list)
    """Images in page order, including dropped ones (see ``ImageRef.failure``)."""
    source: str = ""
    """Name of the input file the document was read from."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Stage outputs that are not images (similarity matrix, matches) and anything else."""

    @property
    def alive_images(self) -> list[ImageRef]:
        """The images no stage has dropped, in page order."""
        return [im for im in self.images if im.alive]

    def with_images(self, images: list[ImageRef]) -> WebDocument:
        """Return a copy with ``images`` replaced."""
        return dataclasses.replace(self, images=images)

    def release_bytes(self) -> WebDocument:
        """Return a copy whose stored images keep only their path (cheap to send between processes)."""
        images = [dataclasses.replace(im, data=None) if im.path else im for im in self.images]
        return self.with_images(images)


def count(docs: list[WebDocument]) -> dict[str, int]:
    """Documents, kept images and sentences in ``docs``."""
    return {
        "documents": len(docs),
        "images": sum(len(d.alive_images) for d in docs),
        "sentences": sum(len(d.sentences) for d in docs),
    }


def partition(
    docs: list[WebDocument], reason: Callable[[WebDocument], str | None]
) -> tuple[list[WebDocument], list[tuple[WebDocument, str]]]:
    """The documents ``reason`` has nothing against, and the others with its reason, each in input order."""
    kept: list[WebDocument] = []
    dropped: list[tuple[WebDocument, str]] = []
    for doc in docs:
        why = reason(doc)
        if why is None:
            kept.append(doc)
        else:
            dropped.append((doc, why))
    return kept, dropped
