"""NSFW image scoring behind a small protocol, and the filter that uses it.

- ``PromptNSFWScorer`` (the default when an embedder is given): zero-shot with a CLIP-like model, a softmax
  over the similarities to NSFW and safe text prompts; the probability is the mass on the NSFW prompts.
- ``SafetyHeadScorer``: a LAION-style safety head, a small MLP over L2-normalised CLIP image embeddings,
  loaded from safetensors with keys ``layers.{i}.weight`` of shape (out, in) and ``layers.{i}.bias``; ReLU
  between layers and a sigmoid on the single output. Convert the LAION Keras head into this layout once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
from PIL import Image

from flamingo.corpus.config import FilterConfig
from flamingo.corpus.document import ImageRef, WebDocument
from flamingo.corpus.imagecheck import open_rgb

EmbedImages = Callable[[list[Image.Image]], np.ndarray]
EmbedTexts = Callable[[list[str]], np.ndarray]

DEFAULT_NSFW_PROMPTS = ("a photo of a naked person", "pornography", "an explicit sexual image", "a nude body")
DEFAULT_SAFE_PROMPTS = (
    "a photo",
    "a photo of a person wearing clothes",
    "a drawing",
    "a photo of an object",
    "text",
)


class NSFWScorer(Protocol):
    """Anything that returns one NSFW probability in [0, 1] per image."""

    def score(self, images: list[Image.Image]) -> np.ndarray:
        """Probabilities, shape (n,)."""
        ...


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


class PromptNSFWScorer:
    """Zero-shot NSFW probability from image-text similarities of a CLIP-like model."""

    def __init__(
        self,
        embed_images: EmbedImages,
        embed_texts: EmbedTexts,
        nsfw_prompts: Sequence[str] = DEFAULT_NSFW_PROMPTS,
        safe_prompts: Sequence[str] = DEFAULT_SAFE_PROMPTS,
        logit_scale: float = 100.0,
    ) -> None:
        if not nsfw_prompts or not safe_prompts:
            raise ValueError("PromptNSFWScorer needs at least one NSFW prompt and one safe prompt")
        self.embed_images, self.embed_texts = embed_images, embed_texts
        self.prompts = [*nsfw_prompts, *safe_prompts]
        self.n_nsfw = len(nsfw_prompts)
        self.logit_scale = logit_scale  # CLIP's learned temperature is about 100
        self._text: np.ndarray | None = None

    def score(self, images: list[Image.Image]) -> np.ndarray:
        """NSFW probability per image, shape (n,)."""
        if not images:
            return np.zeros(0)
        if self._text is None:
            self._text = l2_normalise(self.embed_texts(self.prompts))  # (p, d)
        logits = self.logit_scale * l2_normalise(self.embed_images(images)) @ self._text.T  # (n, p)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        return probs[:, : self.n_nsfw].sum(axis=1)


class SafetyHeadScorer:
    """A LAION-style safety MLP on CLIP image embeddings, weights read from a safetensors file."""

    def __init__(self, embed_images: EmbedImages, weights_path: str | os.PathLike[str]) -> None:
        from safetensors.numpy import load_file

        tensors = load_file(str(weights_path))
        self.layers: list[tuple[np.ndarray, np.ndarray]] = []
        while f"layers.{len(self.layers)}.weight" in tensors:
            i = len(self.layers)
            weight, bias = tensors[f"layers.{i}.weight"], tensors.get(f"layers.{i}.bias")
            if bias is None or weight.ndim != 2 or bias.shape != (weight.shape[0],):
                raise ValueError(f"{weights_path}: layers.{i} needs weight (out, in) and bias (out,)")
            self.layers.append((weight.astype(np.float64), bias.astype(np.float64)))
        if not self.layers or self.layers[-1][0].shape[0] != 1:
            raise ValueError(
                f"{weights_path}: expected keys layers.0.weight ... with a final layer of 1 output"
            )
        self.embed_images = embed_images

    def score(self, images: list[Image.Image]) -> np.ndarray:
        """NSFW probability per image, shape (n,)."""
        if not images:
            return np.zeros(0)
        x = l2_normalise(self.embed_images(images))  # (n, d)
        for i, (weight, bias) in enumerate(self.layers):
            x = x @ weight.T + bias
            if i < len(self.layers) - 1:
                x = np.maximum(x, 0.0)
        return 1.0 / (1.0 + np.exp(-x[:, 0]))


def score_in_batches(
    refs: list[ImageRef], fn: Callable[[list[Image.Image]], np.ndarray], batch_size: int
) -> list[np.ndarray]:
    """Apply ``fn`` to the decoded images of ``refs`` a batch at a time (only one batch decoded at once)."""
    outputs = []
    for start in range(0, len(refs), batch_size):
        batch = [open_rgb(ref.load_bytes()) for ref in refs[start : start + batch_size]]
        outputs.append(np.asarray(fn(batch)))
    return outputs


def filter_nsfw(
    docs: list[WebDocument], scorer: NSFWScorer, config: FilterConfig, batch_size: int = 64
) -> list[WebDocument]:
    """Drop images scored at or above ``config.nsfw_threshold`` (reason ``nsfw``), batching across documents."""
    refs = [im for doc in docs for im in doc.images if im.alive]
    if not refs:
        return docs
    scores = iter(np.concatenate(score_in_batches(refs, scorer.score, batch_size)).tolist())
    out = []
    for doc in docs:
        images = []
        for image in doc.images:
            if image.alive:
                p = float(next(scores))
                image = image.annotate(nsfw=round(p, 4))
                image = image.drop("nsfw") if p >= config.nsfw_threshold else image
            images.append(image)
        out.append(doc.with_images(images))
    return out
