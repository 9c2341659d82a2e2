"""OpenFlamingo's preprocessing of interleaved documents and image-text pairs, with every knob in a config.

Interleaved (OpenFlamingo v2 recipe, see docs/openflamingo-compat.md, "Training recipe"):

1. drop images smaller than ``min_image_bytes`` (when the encoded size is known);
2. pair images with sentences: the stored ``matched_text_index`` (MMC4's one-to-one assignment), or a fresh
   one-to-one Hungarian assignment maximising ``similarity_matrix``; one image per sentence;
3. drop pairs whose similarity is below ``sim_threshold``; keep the first ``max_images`` in text order;
4. skip documents with no image; drop one-image documents with probability ``single_image_drop_prob``;
5. text: each sentence with an image becomes ``<|endofchunk|><image>{sentence}``, sentences joined by spaces,
   the first ``<|endofchunk|>`` removed, spaces around special tokens removed, ``<|endofchunk|>{eos}`` appended.

The images are returned in the order of their ``<image>`` tokens in the text. OpenFlamingo ordered them by
image index, which pairs the wrong image with a token when the assignment is not monotone; we do not.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
from PIL import Image

from flamingo.configs import ConfigError, between, from_mapping
from flamingo.data.schema import InterleavedDocument
from flamingo.model.config import TokenConfig

# The defaults of the model's TokenConfig; every function takes the model's own tokens as arguments.
IMAGE_TOKEN = TokenConfig.image_token
EOC_TOKEN = TokenConfig.eoc_token
PAIR_MAX_TOKENS = 32


class RandomSource(Protocol):
    """Anything with ``random() -> float in [0, 1)``: ``random.Random`` or ``numpy.random.Generator``."""

    def random(self) -> float: ...


@dataclass
class InterleavedConfig:
    """How interleaved documents become training text (defaults: OpenFlamingo v2 on MMC4)."""

    max_images: int = field(default=6, metadata=between(1, 1024))
    """Most images kept per document (the first ones in text order)."""
    max_tokens: int = field(default=256, metadata=between(2, 1 << 20))
    """Length of the tokenized sequence; images whose ``<image>`` token is cut off are dropped."""
    sim_threshold: float = field(default=0.24, metadata=between(-1, 1))
    """Image-sentence pairs with a lower similarity are dropped."""
    min_image_bytes: int = field(default=10_000, metadata=between(0, 1 << 40))
    """Images with fewer encoded bytes are dropped (only when the size is known)."""
    single_image_drop_prob: float = field(default=0.5, metadata=between(0, 1))
    """Probability of skipping a document left with exactly one image."""
    assignment: Literal["stored", "hungarian"] = "stored"
    """``stored``: use ``matched_text_index``; ``hungarian``: recompute a one-to-one assignment from
    ``similarity_matrix`` (documents without a matrix fall back to the stored one)."""
    image_token: str = IMAGE_TOKEN
    """The token that marks where an image goes."""
    eoc_token: str = EOC_TOKEN
    """The token that ends each image-text chunk."""

    def __post_init__(self) -> None:
        if self.max_images < 1:
            raise ConfigError(f"InterleavedConfig.max_images must be at least 1, got {self.max_images}")
        if self.max_tokens < 2:
            raise ConfigError(f"InterleavedConfig.max_tokens must be at least 2, got {self.max_tokens}")
        if not 0.0 <= self.single_image_drop_prob <= 1.0:
            raise ConfigError(
                f"InterleavedConfig.single_image_drop_prob must be in [0, 1], got {self.single_image_drop_prob}"
            )
        if self.min_image_bytes < 0:
            raise ConfigError(f"InterleavedConfig.min_image_bytes must be >= 0, got {self.min_image_bytes}")
        if self.assignment not in ("stored", "hungarian"):
            raise ConfigError(
                f"InterleavedConfig.assignment must be 'stored' or 'hungarian', got {self.assignment!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "InterleavedConfig") -> InterleavedConfig:
        """Build from a plain dict, checking every field's type and bounds; errors name ``source``."""
        return from_mapping(cls, data, source)


@dataclass
class InterleavedSample:
    """A document ready for tokenization: text with special tokens and its images in token order."""

    doc_id: str
    text: str
    images: list[Image.Image]
    """RGB images, the i-th for the i-th ``<image>`` token of ``text``."""
    image_indices: list[int]
    """Index in the document's ``image_info`` of each returned image."""
    sentence_indices: list[int] = field(default_factory=list)
    """Index in ``text_list`` of the sentence each image precedes."""


@dataclass
class TokenizedSample:
    """Token ids of one sample and the images that still have their ``<image>`` token."""

    input_ids: torch.Tensor
    """(s,) int64"""
    attention_mask: torch.Tensor
    """(s,) int64, 1 for real tokens"""
    images: list[Image.Image]


def hungarian_assignment(similarity: np.ndarray) -> list[tuple[int, int]]:
    """One-to-one (image, sentence) pairs maximising the total similarity; ``similarity`` is (images, sentences).

    With more images than sentences some images stay unassigned. Pairs are sorted by image index.
    """
    try:  # scipy is an optional dependency (the `corpus` extra), needed only for this option
        from scipy.optimize import linear_sum_assignment
    except ImportError as error:
        raise ImportError(
            "InterleavedConfig(assignment='hungarian') needs scipy: pip install 'flamingo-vlm[corpus]'"
        ) from error
    similarity = np.asarray(similarity, dtype=np.float64)
    if similarity.size == 0:
        return []
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    return sorted(zip(rows.tolist(), cols.tolist()))


def _count(stats: Counter[str] | None, reason: str, amount: int = 1) -> None:
    if stats is not None and amount:
        stats[reason] += amount


def match_images(
    document: InterleavedDocument, config: InterleavedConfig, stats: Counter[str] | None = None
) -> list[tuple[int, int, float]]:
    """(image index, sentence index, similarity) of the kept images, in text order (steps 1 to 3)."""
    usable = [
        index
        for index, image in enumerate(document.images)
        if not (image.data and image.num_bytes < config.min_image_bytes)
    ]
    _count(stats, "image_too_small", len(document.images) - len(usable))
    if config.assignment == "hungarian" and document.similarity_matrix is not None:
        matrix = np.asarray([document.similarity_matrix[i] for i in usable], dtype=np.float64)
        pairs = [(usable[row], col) for row, col in hungarian_assignment(matrix)]
        _count(stats, "image_unassigned", len(usable) - len(pairs))
        candidates = [(i, s, float(document.similarity_matrix[i][s])) for i, s in pairs]
    else:
        infos = document.image_info
        candidates = [(i, infos[i].matched_text_index, infos[i].matched_sim) for i in usable]
    kept = [c for c in candidates if c[2] >= config.sim_threshold]
    _count(stats, "image_below_threshold", len(candidates) - len(kept))
    # One image per sentence: with a stored assignment that is not one-to-one keep the most similar image.
    best: dict[int, tuple[int, int, float]] = {}
    for candidate in kept:
        current = best.get(candidate[1])
        if current is None or candidate[2] > current[2]:
            best[candidate[1]] = candidate
    _count(stats, "image_same_sentence", len(kept) - len(best))
    ordered = [best[sentence] for sentence in sorted(best)]
    _count(stats, "image_over_max", max(0, len(ordered) - config.max_images))
    return ordered[: config.max_images]


def build_interleaved_text(
    text_list: list[str],
    image_sentences: list[int],
    eos_token: str,
    image_token: str = IMAGE_TOKEN,
    eoc_token: str = EOC_TOKEN,
) -> str:
    """The training text of a document whose images precede the sentences ``image_sentences`` (step 5)."""
    marked = set(image_sentences)
    parts = [f"{eoc_token}{image_token}{s}" if i in marked else s for i, s in enumerate(text_list)]
    text = " ".join(parts).replace(eoc_token, "", 1)
    specials = "|".join(re.escape(token) for token in (eoc_token, image_token))
    text = re.sub(rf"\s*({specials})\s*", r"\1", text)
    return f"{text}{eoc_token}{eos_token}"


def preprocess_interleaved(
    document: InterleavedDocument,
    config: InterleavedConfig,
    rng: RandomSource,
    eos_token: str,
    stats: Counter[str] | None = None,
) -> InterleavedSample | None:
    """The text and token-ordered images of one document, or None when it is skipped.

    Skipped documents count in ``stats`` as ``no_images`` or ``single_image_dropped``; dropped images count
    as ``image_<reason>``. ``rng`` decides the one-image drop, so a seeded RNG makes it reproducible.
    """
    if len(document.images) != len(document.image_info):
        raise ValueError(
            f"document {document.id!r}: {len(document.image_info)} image_info entries but "
            f"{len(document.images)} images; read it with flamingo.data.shards.read_interleaved"
        )
    matches = match_images(document, config, stats)
    if not matches:
        _count(stats, "no_images")
        return None
    if len(matches) == 1 and rng.random() < config.single_image_drop_prob:
        _count(stats, "single_image_dropped")
        return None
    sentences = [sentence for _, sentence, _ in matches]
    text = build_interleaved_text(
        document.text_list, sentences, eos_token, config.image_token, config.eoc_token
    )
    images = [document.images[index].rgb() for index, _, _ in matches]
    return InterleavedSample(document.id, text, images, [index for index, _, _ in matches], sentences)


def _token_id(tokenizer: Any, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(
            f"the tokenizer does not know {token!r}; add it with "
            f"tokenizer.add_special_tokens({{'additional_special_tokens': [{token!r}]}})"
        )
    return int(token_id)


def tokenize_interleaved(
    text: str,
    images: list[Image.Image],
    tokenizer: Any,
    max_tokens: int,
    image_token: str = IMAGE_TOKEN,
    pad_to_max: bool = True,
) -> TokenizedSample:
    """Tokenize ``text`` to at most ``max_tokens`` and keep only the images whose ``<image>`` survived.

    Truncation and padding follow the tokenizer's ``truncation_side`` and ``padding_side``. Afterwards the
    number of images always equals the number of ``<image>`` tokens in ``input_ids``.
    """
    if pad_to_max and tokenizer.pad_token_id is None:
        raise ValueError(
            "the tokenizer has no pad token; add one with tokenizer.add_special_tokens({'pad_token': '<PAD>'})"
        )
    image_id = _token_id(tokenizer, image_token)
    encoded = tokenizer(
        text,
        max_length=max_tokens,
        truncation=True,
        padding="max_length" if pad_to_max else "do_not_pad",
        return_tensors="pt",
    )
    input_ids, attention_mask = encoded["input_ids"][0], encoded["attention_mask"][0]
    num_tokens = int(((input_ids == image_id) & attention_mask.bool()).sum())
    if num_tokens > len(images):
        raise ValueError(
            f"the text has {num_tokens} {image_token} tokens but only {len(images)} images were given"
        )
    # Left truncation cuts the first images away, right truncation the last ones.
    left = getattr(tokenizer, "truncation_side", "right") == "left"
    kept = images[len(images) - num_tokens :] if left else images[:num_tokens]
    return TokenizedSample(input_ids.long(), attention_mask.long(), kept)


def build_pair_text(
    caption: str, eos_token: str, image_token: str = IMAGE_TOKEN, eoc_token: str = EOC_TOKEN
) -> str:
    """``<image>{caption}<|endofchunk|>{eos}`` with the caption's whitespace collapsed."""
    return f"{image_token}{' '.join(caption.split())}{eoc_token}{eos_token}"


def tokenize_pair(
    caption: str,
    image: Image.Image,
    tokenizer: Any,
    max_tokens: int = PAIR_MAX_TOKENS,
    image_token: str = IMAGE_TOKEN,
    eoc_token: str = EOC_TOKEN,
) -> TokenizedSample:
    """Tokenize an image-text pair (OpenFlamingo: at most 32 tokens, padded to that length)."""
    text = build_pair_text(caption, tokenizer.eos_token or "", image_token, eoc_token)
    return tokenize_interleaved(text, [image.convert("RGB")], tokenizer, max_tokens, image_token)
