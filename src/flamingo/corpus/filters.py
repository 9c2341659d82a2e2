"""Filter stage: per-image rules (size, aspect ratio, bytes, ads), hashing, and the corpus-wide filters.

Per-image rules need only what the fetch stage measured (width, height, byte count, URL), so they run
before any pixel is decoded again. The other filters live in their own modules and are re-exported here:
``dedup`` (exact + perceptual, corpus-wide, with decontamination), ``faces`` and ``nsfw``.

Drop reasons: ``tracking_pixel``, ``ad_url``, ``ad_banner``, ``too_small``, ``aspect_ratio``,
``too_few_bytes``, ``duplicate_exact``, ``duplicate_perceptual``, ``eval_overlap``, ``faces``, ``nsfw``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from urllib.parse import urlsplit

from flamingo.corpus.config import FilterConfig
from flamingo.corpus.dedup import (
    DedupIndex,
    PHashIndex,
    build_eval_index,
    decontaminate,
    dedup_documents,
    phash_hex,
)
from flamingo.corpus.document import ImageRef, WebDocument
from flamingo.corpus.faces import FaceDetector, filter_faces, make_face_detector
from flamingo.corpus.imagecheck import open_rgb
from flamingo.corpus.nsfw import NSFWScorer, PromptNSFWScorer, SafetyHeadScorer, filter_nsfw

__all__ = [
    "AD_SIZES",
    "DedupIndex",
    "FaceDetector",
    "NSFWScorer",
    "PHashIndex",
    "PromptNSFWScorer",
    "SafetyHeadScorer",
    "build_eval_index",
    "decontaminate",
    "dedup_documents",
    "filter_faces",
    "filter_images",
    "filter_nsfw",
    "hash_images",
    "image_rejection",
    "make_face_detector",
]

# IAB standard display-ad sizes (width, height).
AD_SIZES = frozenset(
    {
        (728, 90), (300, 250), (336, 280), (160, 600), (120, 600), (300, 600), (320, 50), (320, 100),
        (468, 60), (234, 60), (970, 90), (970, 250), (250, 250), (200, 200), (180, 150), (125, 125),
        (120, 240), (88, 31), (300, 50), (300, 100), (300, 1050),
    }
)  # fmt: skip
# Hosts and paths of ad servers and trackers: an image from these is an ad whatever its size.
_AD_SERVERS = re.compile(
    r"doubleclick|googlesyndication|googleadservices|adservice\.|adnxs|amazon-adsystem|taboola|outbrain"
    r"|criteo|scorecardresearch|quantserve|moatads|/pagead/",
    re.IGNORECASE,
)
# Path words that suggest an ad; an image is dropped for them only at a standard ad size.
_AD_WORDS = re.compile(
    r"(?:^|[/_.\-])(?:ads?|adv|adverts?|advertis\w*|banners?|sponsor\w*|promo|pixel|tracking|beacon)(?:[/_.\-]|$)",
    re.IGNORECASE,
)
_TRACKING_PIXEL_AREA = 16  # 4x4 or less: tracking pixels and spacers


def image_rejection(image: ImageRef, config: FilterConfig) -> str | None:
    """Why a fetched image fails the per-image rules, or None; needs width, height and byte count."""
    width, height = image.width or 0, image.height or 0
    if config.drop_ads:
        if width * height <= _TRACKING_PIXEL_AREA:
            return "tracking_pixel"
        if _AD_SERVERS.search(image.url):
            return "ad_url"
        if (width, height) in AD_SIZES and _AD_WORDS.search(urlsplit(image.url).path):
            return "ad_banner"
    if min(width, height) < config.min_side:
        return "too_small"
    if max(width, height) > config.max_aspect_ratio * min(width, height):
        return "aspect_ratio"
    if int(image.metadata.get("bytes", 0)) < config.min_bytes:
        return "too_few_bytes"
    return None


def filter_images(docs: list[WebDocument], config: FilterConfig) -> list[WebDocument]:
    """Apply ``image_rejection`` to every kept image."""
    out = []
    for doc in docs:
        images = []
        for image in doc.images:
            reason = image_rejection(image, config) if image.alive else None
            images.append(image.drop(reason) if reason else image)
        out.append(doc.with_images(images))
    return out


def hash_images(docs: list[WebDocument]) -> list[WebDocument]:
    """Add the perceptual hash of every kept image (the SHA-256 comes from the fetch stage)."""
    out = []
    for doc in docs:
        images = []
        for image in doc.images:
            if image.alive and image.phash is None:
                image = replace(image, phash=phash_hex(open_rgb(image.load_bytes())))
            images.append(image)
        out.append(doc.with_images(images))
    return out
