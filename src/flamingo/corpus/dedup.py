"""Corpus-wide image deduplication (exact SHA-256 and perceptual pHash) and evaluation-set decontamination.

Near-duplicate search uses multi-index hashing: a 64-bit hash is cut into ``max_distance + 1`` bands; two
hashes within Hamming distance ``max_distance`` agree exactly on at least one band (pigeonhole), so only
hashes sharing a band are compared. Lookups stay fast for millions of images.

Order matters for deduplication: the first image seen is kept and later copies are dropped. The engines
run one ``DedupIndex`` over all shards in input order (see ``engine.py``), so the result does not depend
on how many workers ran or in which order they finished.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import imagehash
from PIL import Image

from flamingo.corpus.document import WebDocument
from flamingo.corpus.imagecheck import ImageRejected, inspect_image, open_rgb

logger = logging.getLogger(__name__)

HASH_BITS = 64


def phash_hex(image: Image.Image) -> str:
    """The 64-bit perceptual hash (DCT pHash) of ``image`` as 16 hex digits."""
    return str(imagehash.phash(image, hash_size=8))


def hamming(a: int, b: int) -> int:
    """Number of differing bits."""
    return (a ^ b).bit_count()


class PHashIndex:
    """Finds stored 64-bit hashes within ``max_distance`` bits of a query; remembers insertion order."""

    def __init__(self, max_distance: int) -> None:
        if not 0 <= max_distance < HASH_BITS // 2:
            raise ValueError(f"max_distance={max_distance}: must be in [0, {HASH_BITS // 2 - 1}]")
        self.max_distance = max_distance
        n_bands = max_distance + 1
        edges = [round(i * HASH_BITS / n_bands) for i in range(n_bands + 1)]
        self._bands = [(lo, (1 << (hi - lo)) - 1) for lo, hi in itertools.pairwise(edges)]
        self._buckets: list[dict[int, list[int]]] = [defaultdict(list) for _ in self._bands]
        self.hashes: list[int] = []
        self.keys: list[str] = []

    def __len__(self) -> int:
        return len(self.hashes)

    def find(self, value: int) -> str | None:
        """Key of the earliest stored hash within ``max_distance`` of ``value``, or None."""
        best: int | None = None
        for (shift, mask), buckets in zip(self._bands, self._buckets):
            for i in buckets.get((value >> shift) & mask, ()):
                if (best is None or i < best) and hamming(value, self.hashes[i]) <= self.max_distance:
                    best = i
        return None if best is None else self.keys[best]

    def add(self, value: int, key: str) -> None:
        """Store ``value`` under ``key``."""
        i = len(self.hashes)
        self.hashes.append(value)
        self.keys.append(key)
        for (shift, mask), buckets in zip(self._bands, self._buckets):
            buckets[(value >> shift) & mask].append(i)


@dataclass
class DedupResult:
    """Outcome of one lookup: the drop reason (None = first occurrence) and the key it duplicates."""

    reason: str | None
    original: str | None = None


class DedupIndex:
    """Exact (SHA-256) and perceptual (pHash) first-occurrence index over a whole corpus.

    ``check_and_add`` keeps the first image it sees and reports later copies. ``merge`` appends another
    index's entries as if they had been seen after this one's, e.g. to exclude images already used by an
    earlier build, or to combine indexes of corpus segments processed in order.
    """

    def __init__(self, phash_max_distance: int = 4, exact: bool = True, perceptual: bool = True) -> None:
        self.exact, self.perceptual = exact, perceptual
        self._sha: dict[str, str] = {}
        self._phash = PHashIndex(phash_max_distance)
        self.entries: list[tuple[str, str | None, str | None]] = []
        """The kept images, in the order seen: (key, sha256, phash)."""

    def __len__(self) -> int:
        return len(self.entries)

    def check_and_add(self, sha256: str | None, phash: str | None, key: str) -> DedupResult:
        """Drop reason for an image (``duplicate_exact`` / ``duplicate_perceptual``), else record it."""
        if self.exact and sha256 is not None and sha256 in self._sha:
            return DedupResult("duplicate_exact", self._sha[sha256])
        if self.perceptual and phash is not None:
            original = self._phash.find(int(phash, 16))
            if original is not None:
                return DedupResult("duplicate_perceptual", original)
        if sha256 is not None:
            self._sha[sha256] = key
        if phash is not None:
            self._phash.add(int(phash, 16), key)
        self.entries.append((key, sha256, phash))
        return DedupResult(None)

    def merge(self, other: DedupIndex) -> None:
        """Add ``other``'s kept images as if seen after this index's (its copies of ours are skipped)."""
        for key, sha256, phash in other.entries:
            self.check_and_add(sha256, phash, key)


def image_key(doc: WebDocument, index: int) -> str:
    """The name of image ``index`` of ``doc`` in dedup results."""
    return f"{doc.id}#{index}"


def dedup_documents(docs: list[WebDocument], index: DedupIndex) -> list[WebDocument]:
    """Drop images already in ``index`` (updating it with the others), in document then page order."""
    out = []
    for doc in docs:
        images = []
        for i, image in enumerate(doc.images):
            if image.alive:
                result = index.check_and_add(image.sha256, image.phash, image_key(doc, i))
                if result.reason is not None:
                    image = image.annotate(duplicate_of=result.original).drop(result.reason)
            images.append(image)
        out.append(doc.with_images(images))
    return out


_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp"}


def build_eval_index(
    folders: Iterable[str | os.PathLike[str]], max_distance: int, max_pixels: int = 50_000_000
) -> PHashIndex:
    """pHash index of every image under ``folders`` (recursively, sorted), for decontamination."""
    index = PHashIndex(max_distance)
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise ValueError(f"filter.decontaminate_folders: {root} is not a folder of evaluation images")
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES):
            data = path.read_bytes()
            try:
                inspect_image(data, max_pixels)
            except ImageRejected as e:
                logger.warning("decontamination: skipping %s (%s)", path, e)
                continue
            index.add(int(phash_hex(open_rgb(data)), 16), str(path))
    logger.info("decontamination index: %d evaluation images", len(index))
    return index


def decontaminate(docs: list[WebDocument], eval_index: PHashIndex) -> list[WebDocument]:
    """Drop images whose pHash is within the index's distance of an evaluation image (``eval_overlap``)."""
    out = []
    for doc in docs:
        images = []
        for image in doc.images:
            if image.alive and image.phash is not None:
                match = eval_index.find(int(image.phash, 16))
                if match is not None:
                    image = image.annotate(eval_match=match).drop("eval_overlap")
            images.append(image)
        out.append(doc.with_images(images))
    return out
