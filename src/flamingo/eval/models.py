"""The model interface the evaluator talks to, and its implementation over our ``Flamingo``.

Like lm-evaluation-harness, a model answers a few kinds of request and knows nothing about tasks:

- ``generate(requests) -> list[str]``: continue each prompt (text with ``<image>`` markers + images);
- ``loglikelihood(context, images, continuations) -> (c,)``: log-probability of each continuation;
- ``rank_classification(requests) -> (n, c)``: mean token log-probability of every class name;
- ``embed_images(images) -> (n, d)``: image embeddings for RICES demonstration retrieval.

``FlamingoEvalModel`` makes these fast (see docs/openflamingo-compat.md, "Evaluation protocol"):

* generation is batched with left padding, prompts sorted by length so a batch holds similar lengths;
* each image's resampled latents ``(l, d)`` are computed once and kept in an LRU keyed by file path, so the
  same demonstration image is never re-encoded for the next prompt that shows it;
* rank classification runs the prompt once with the KV cache on, then scores a chunk of class names per
  forward pass from copies of that cache (:func:`flamingo.model.scoring.score_continuations`, which the
  pipeline's ``class_scores`` uses too).

Images are given as file paths (cached) or PIL images (encoded for that call only).
"""

from __future__ import annotations

import abc
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from flamingo.errors import MissingFileError
from flamingo.model.config import TokenConfig
from flamingo.model.scoring import score_continuations
from flamingo.prompts import OPENFLAMINGO, PromptConfig, check_prompt

if TYPE_CHECKING:
    from flamingo.model.flamingo import Flamingo
    from flamingo.processing import FlamingoProcessor

ImageLike = str | Image.Image


@dataclass
class GenerateRequest:
    """One prompt to continue: ``prompt`` holds one image marker (the model's ``image_token``) per entry of
    ``images``, in order."""

    prompt: str
    images: list[ImageLike]
    num_beams: int = 3
    max_new_tokens: int = 20
    min_new_tokens: int = 0
    length_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    """Extra stop strings besides the model's end of chunk; the output is cut at the first one."""

    def decoding_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can share a batch."""
        return (self.num_beams, self.max_new_tokens, self.min_new_tokens, self.length_penalty, self.stop)


@dataclass
class RankRequest:
    """Score every class name as a continuation of ``prompt``."""

    prompt: str
    images: list[ImageLike]
    class_names: Sequence[str] = field(default_factory=list)


def load_image(image: ImageLike) -> Image.Image:
    """An RGB PIL image from a path or a PIL image, with a clear error for a missing file."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        with Image.open(image) as im:
            return im.convert("RGB")
    except FileNotFoundError as err:
        raise MissingFileError(
            f"image not found: {image} (check the data root and the task's paths)"
        ) from err


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first stop string."""
    for s in stop:
        text = text.split(s, 1)[0]
    return text


class EvalModel(abc.ABC):
    """What the evaluator needs from a model. Subclass it to evaluate another VLM."""

    name: str = "model"
    """Identifies the model in results files and the RICES embedding cache key."""
    image_token: str = TokenConfig.image_token
    """The image marker its prompts hold (one per image)."""
    eoc_token: str = TokenConfig.eoc_token
    """The text that ends a chunk; generation stops there."""
    prompts: PromptConfig = OPENFLAMINGO
    """The templates a task file's named prompt comes from (a Flamingo checkpoint's own)."""

    @abc.abstractmethod
    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        """The generated continuation of every request (prompt removed), in request order."""

    @abc.abstractmethod
    def loglikelihood(
        self, context: str, images: Sequence[ImageLike], continuations: Sequence[str], reduce: str = "sum"
    ) -> torch.Tensor:
        """(c,) float: sum (``reduce="sum"``) or mean (``"mean"``) log-probability of each continuation's
        tokens after ``context``; each continuation is tokenized on its own, as OpenFlamingo does."""

    def rank_classification(self, requests: Sequence[RankRequest]) -> torch.Tensor:
        """(n, c) mean token log-probability of each class name after each prompt."""
        rows = [self.loglikelihood(r.prompt, r.images, r.class_names, reduce="mean") for r in requests]
        return torch.stack(rows) if rows else torch.empty(0, 0)

    @abc.abstractmethod
    def embed_images(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """(n, d) float image embeddings, used by RICES (cosine similarity)."""

    def describe(self) -> dict[str, Any]:
        """The model's identity, recorded in ``results.json``."""
        return {"name": self.name, "class": type(self).__name__}


# --------------------------------------------------------------------------------------------------
# Caches
# --------------------------------------------------------------------------------------------------


class FeatureCache:
    """An LRU of per-image latents ``(l, d)`` keyed by image path."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> torch.Tensor | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        if self.capacity <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


# --------------------------------------------------------------------------------------------------
# Our model
# --------------------------------------------------------------------------------------------------


class FlamingoEvalModel(EvalModel):
    """``EvalModel`` over ``flamingo.model.Flamingo`` with batched generation, an image-latent cache and
    rank classification from one prompt KV cache."""

    def __init__(
        self,
        model: Flamingo,
        processor: FlamingoProcessor | None = None,
        batch_size: int = 8,
        class_chunk_size: int = 128,
        feature_cache_size: int = 4096,
        encode_batch_size: int = 32,
        name: str | None = None,
    ) -> None:
        from flamingo.processing import FlamingoProcessor

        self.model = model.eval()
        self.processor = processor or FlamingoProcessor.from_model(model, padding_side="left")
        self.tokenizer = self.processor.tokenizer
        self.image_token, self.eoc_token = self.processor.image_token, self.processor.eoc_token
        self.prompts = model.config.prompts
        self.batch_size = batch_size
        self.class_chunk_size = class_chunk_size
        self.encode_batch_size = encode_batch_size
        self.features = FeatureCache(feature_cache_size)
        self.name = name or f"flamingo:{model.config.lm.name_or_path}"
        self._class_tokens: dict[tuple[str, ...], list[list[int]]] = {}
        self.images_encoded = 0

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        device: str | torch.device = "cpu",
        trust_remote_code: bool = False,
        dtype: torch.dtype | str | None = None,
        device_map: str | dict[str, int | str] | None = None,
        quantization: Any = None,
        **kwargs: Any,
    ) -> FlamingoEvalModel:
        """Load a checkpoint directory (or hub id) written by ``Flamingo.save_pretrained``, each weight read
        straight onto ``device`` (``"auto"``: CUDA when present) in ``dtype``, or split by ``device_map`` (see
        :func:`flamingo.model.checkpoint.from_pretrained`).

        ``trust_remote_code=True`` lets a checkpoint whose LM needs its repository's own code run it;
        ``quantization`` (``"int8"`` / ``"int4"``) loads its frozen backbones in low-bit form.
        """
        from flamingo.model.flamingo import Flamingo

        model = Flamingo.from_pretrained(
            path,
            device=device,
            dtype=dtype,
            device_map=device_map,
            trust_remote_code=trust_remote_code,
            quantization=quantization,
        )
        return cls(model, name=kwargs.pop("name", path), **kwargs)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device the vision encoder runs on (the first device of a split model)."""
        from flamingo.model.dispatch import input_device

        return input_device(self.model)

    def describe(self) -> dict[str, Any]:
        config = self.model.config
        return {
            "name": self.name,
            "class": type(self).__name__,
            "lm": config.lm.name_or_path,
            "vision": config.vision.name,
            "num_latents": config.perceiver.num_latents,
            "cross_attn_every_n": config.cross_attn.every_n,
        }

    # ------------------------------------------------------------------ image latents
    def _encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> latents (n, l, d), ``encode_batch_size`` images per vision forward."""
        chunks = []
        for start in range(0, len(images), self.encode_batch_size):
            pixels = self.processor.image_transform(images[start : start + self.encode_batch_size])
            pixels = pixels.to(self.device)[None, :, None]  # (1, n, 1, c, h, w)
            chunks.append(self.model.encode_media(pixels)[0])  # (n, l, d)
        self.images_encoded += len(images)
        return torch.cat(chunks)

    def image_latents(self, images: Sequence[ImageLike]) -> list[torch.Tensor]:
        """Latents (l, d) of each image; paths hit the LRU, missing ones are encoded together."""
        found: dict[Any, torch.Tensor] = {}
        missing: dict[Any, ImageLike] = {}
        for image in images:
            key = image if isinstance(image, str) else ("pil", id(image))
            if key in found or key in missing:
                continue
            cached = self.features.get(key) if isinstance(key, str) else None
            if cached is None:
                missing[key] = image
            else:
                found[key] = cached
        if missing:
            latents = self._encode([load_image(im) for im in missing.values()])
            for key, value in zip(missing, latents):
                found[key] = value
                if isinstance(key, str):
                    self.features.put(key, value)
        return [found[image if isinstance(image, str) else ("pil", id(image))] for image in images]

    def batch_media(
        self, rows: Sequence[Sequence[ImageLike]]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-row image lists -> media (b, t, l, d) front-aligned with zeros, and image_mask (b, t)."""
        slots = max((len(r) for r in rows), default=0)
        if slots == 0:
            return None, None
        latents = self.image_latents([im for r in rows for im in r])
        media = latents[0].new_zeros(len(rows), slots, *latents[0].shape)
        mask = torch.zeros(len(rows), slots, dtype=torch.bool, device=media.device)
        start = 0
        for i, row in enumerate(rows):
            if row:
                media[i, : len(row)] = torch.stack(latents[start : start + len(row)])
                mask[i, : len(row)] = True
            start += len(row)
        return media, mask

    # ------------------------------------------------------------------ generation
    def _token_lengths(self, prompts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(list(prompts))["input_ids"]]

    @torch.no_grad()
    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        for r in requests:
            check_prompt(r.prompt, len(r.images), self.image_token)
        lengths = self._token_lengths([r.prompt for r in requests])
        # Longest first within each decoding setting: batches hold similar lengths (less padding) and an
        # out-of-memory error, if any, shows up on the first batch.
        order = sorted(range(len(requests)), key=lambda i: (str(requests[i].decoding_key()), -lengths[i]))
        outputs: list[str] = [""] * len(requests)
        start = 0
        while start < len(order):
            key = requests[order[start]].decoding_key()
            batch = [order[start]]
            while (
                len(batch) < self.batch_size
                and start + len(batch) < len(order)
                and requests[order[start + len(batch)]].decoding_key() == key
            ):
                batch.append(order[start + len(batch)])
            for index, text in zip(batch, self._generate_batch([requests[i] for i in batch])):
                outputs[index] = text
            start += len(batch)
        return outputs

    def _generate_batch(self, requests: Sequence[GenerateRequest]) -> list[str]:
        """One left-padded batch with the same decoding settings -> decoded continuations."""
        first = requests[0]
        enc = self.tokenizer(
            [r.prompt for r in requests], padding=True, padding_side="left", return_tensors="pt"
        )
        ids, attention = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        media, image_mask = self.batch_media([r.images for r in requests])
        # length_penalty only weighs beam hypotheses: greedy decoding ignores it, and transformers warns when a
        # flag that does not apply is passed.
        beam = {"length_penalty": first.length_penalty} if first.num_beams > 1 else {}
        out = self.model.generate(
            None,
            ids,
            attention,
            media=media,
            image_mask=image_mask,
            num_beams=first.num_beams,
            max_new_tokens=first.max_new_tokens,
            min_new_tokens=first.min_new_tokens,
            do_sample=False,
            **beam,
        )
        texts = self.processor.decode(out, ids.shape[1])
        return [cut_at_stop(t, first.stop) for t in texts]

    # ------------------------------------------------------------------ scoring
    def _continuation_tokens(self, continuations: Sequence[str]) -> list[list[int]]:
        key = tuple(continuations)
        if key not in self._class_tokens:
            tokens = self.tokenizer(list(continuations), add_special_tokens=False)["input_ids"]
            empty = [c for c, t in zip(continuations, tokens) if not t]
            if empty:
                raise ValueError(f"continuations {empty[:3]} tokenize to no tokens; they cannot be scored.")
            self._class_tokens = {key: tokens}  # keep only the latest list (one task's class names)
        return self._class_tokens[key]

    @torch.no_grad()
    def loglikelihood(
        self, context: str, images: Sequence[ImageLike], continuations: Sequence[str], reduce: str = "sum"
    ) -> torch.Tensor:
        if reduce not in ("sum", "mean"):
            raise ValueError(f"reduce must be 'sum' or 'mean', not {reduce!r}.")
        check_prompt(context, len(images), self.image_token)
        tokens = self._continuation_tokens(continuations)
        ids = self.tokenizer(context, return_tensors="pt")["input_ids"].to(self.device)  # (1, L)
        media, _ = self.batch_media([images])
        return score_continuations(self.model, ids, tokens, media, self.class_chunk_size, reduce)

    # ------------------------------------------------------------------ embeddings
    @torch.no_grad()
    def embed_images(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Mean-pooled patch features of the vision encoder (n, d_vis), ``encode_batch_size`` at a time."""
        chunks = []
        for start in range(0, len(images), self.encode_batch_size):
            batch = [load_image(im) for im in images[start : start + self.encode_batch_size]]
            pixels = self.processor.image_transform(batch).to(self.device)
            chunks.append(self.model.vision(pixels).mean(dim=1).float().cpu())  # (n, d_vis)
        return torch.cat(chunks) if chunks else torch.empty(0, self.model.vision.width)
