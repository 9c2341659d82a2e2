"""A real CLIP embedder for the interleave stage and the default NSFW scorer.

``ClipEmbedder`` turns PIL images and strings into L2-normalised embeddings of one space, in batches, on the
GPU when there is one. It loads either

* an open_clip model (image and text towers): a built-in name with a pretrained tag or a local weights file,
  or a custom architecture given as a config dict / JSON file (random weights from ``seed`` when no weights);
* a Hugging Face CLIP or SigLIP model directory (``AutoModel`` + image processor + tokenizer).

The builder's engines pickle the embedder into worker processes and Ray tasks. Only the *description* of
the model travels (``ClipSpec``); each process loads the model once, on first use, and keeps it in a
per-process cache, so a ViT-L/14 is not pickled once per shard. Random-weight models are reproducible from
their seed, so every worker sees the same weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from flamingo.corpus.config import DEFAULT_CLIP
from flamingo.errors import MissingFileError

logger = logging.getLogger(__name__)


# A full (image + text) CLIP small enough for tests and benchmarks. The text vocabulary must cover open_clip's
# byte-pair tokenizer (49408 ids); everything else is tiny.
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@dataclass(frozen=True)
class ClipSpec:
    """How to load a CLIP-like model; small and picklable (this is what travels to workers)."""

    backend: str
    """``open_clip`` or ``hf``."""
    name: str
    """open_clip model name (built-in or registered), or a Hugging Face directory or hub id."""
    pretrained: str | None = None
    """open_clip only: a pretrained tag (``openai``, ``laion2b_s32b_b82k``) or a local weights file."""
    model_cfg_json: str | None = None
    """open_clip only: a custom architecture (JSON of an open_clip model config), registered under ``name``."""
    seed: int = 0
    """Seed of the random initialisation when no weights are given (same weights in every process)."""

    def __post_init__(self) -> None:
        if self.backend not in ("open_clip", "hf"):
            raise ValueError(f"CLIP backend {self.backend!r}: use open_clip or hf")
        if not self.name:
            raise ValueError("CLIP spec: the model name (or Hugging Face path) is empty")

    @property
    def cache_key(self) -> str:
        """A string that identifies the loaded model (spec fields, JSON)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def parse_clip_spec(text: str) -> ClipSpec:
    """``open_clip:NAME[:PRETRAINED]`` or ``hf:PATH`` -> ``ClipSpec``.

    ``NAME`` may be a path to an open_clip model-config JSON file (registered under its file stem);
    ``PRETRAINED`` is a tag or a weights file; leaving it out gives random weights (tests only).
    """
    backend, _, rest = text.partition(":")
    if backend == "hf" and rest:
        return ClipSpec("hf", rest)
    if backend != "open_clip" or not rest:
        raise ValueError(
            f"--clip {text!r}: use open_clip:NAME:PRETRAINED (e.g. {DEFAULT_CLIP}), "
            "open_clip:CONFIG.json:WEIGHTS_FILE, or hf:PATH_TO_CLIP_OR_SIGLIP_DIR"
        )
    name, _, pretrained = rest.partition(":")
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise MissingFileError(f"--clip {text!r}: model config {path} does not exist")
        cfg = json.loads(path.read_text(encoding="utf-8"))
        return ClipSpec("open_clip", path.stem, pretrained or None, json.dumps(cfg, sort_keys=True))
    return ClipSpec("open_clip", name, pretrained or None)


def _resolve_device(device: str) -> str:
    from flamingo.model.devices import resolve_device

    return str(resolve_device(device)) if device == "auto" else device


class _OpenClipTowers:
    """A loaded open_clip CLIP: preprocessing, tokenizer and both towers."""

    def __init__(self, spec: ClipSpec, device: str) -> None:
        import open_clip
        import torch

        from flamingo.model.vision import quiet_random_init_warning

        if spec.model_cfg_json is not None:
            from flamingo.model.vision import _register_open_clip_config

            _register_open_clip_config(spec.name, json.loads(spec.model_cfg_json))
        if (
            spec.pretrained
            and not _is_tag(spec.name, spec.pretrained)
            and not Path(spec.pretrained).is_file()
        ):
            raise MissingFileError(
                f"open_clip weights {spec.pretrained!r}: not a pretrained tag of {spec.name} "
                f"(see open_clip.list_pretrained_tags_by_model) and not a file"
            )
        if not spec.pretrained:
            logger.warning(
                "CLIP %s has random weights (seed %d): similarities are meaningless", spec.name, spec.seed
            )
        # open_clip's own "initialized randomly" warning is dropped: ours above says it once, with the seed.
        quiet = quiet_random_init_warning(spec.name, quiet=not spec.pretrained)
        with torch.random.fork_rng(devices=[]), quiet:
            torch.manual_seed(spec.seed)  # the same random weights in every worker process
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.name, pretrained=spec.pretrained, device=device
            )
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(spec.name)
        self.device = device
        self.dim = int(open_clip.get_model_config(spec.name)["embed_dim"])

    def encode_images(self, images: list[Image.Image]) -> Any:
        import torch

        pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        return self.model.encode_image(pixels)  # (n, d)

    def encode_texts(self, texts: list[str]) -> Any:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))  # (n, d)


def _is_tag(name: str, pretrained: str) -> bool:
    import open_clip

    return pretrained in open_clip.list_pretrained_tags_by_model(name)


class _HFTowers:
    """A loaded Hugging Face CLIP or SigLIP model with its image processor and tokenizer."""

    def __init__(self, spec: ClipSpec, device: str) -> None:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        # CLIP and SigLIP are built into transformers: a repository's own code is never run here.
        self.model = AutoModel.from_pretrained(spec.name, trust_remote_code=False).to(device).eval()
        if not hasattr(self.model, "get_image_features") or not hasattr(self.model, "get_text_features"):
            raise ValueError(
                f"hf:{spec.name} is a {type(self.model).__name__}; it needs both an image and a text tower "
                "(CLIPModel or SiglipModel)"
            )
        self.processor = AutoImageProcessor.from_pretrained(spec.name, trust_remote_code=False)
        self.tokenizer = AutoTokenizer.from_pretrained(spec.name, trust_remote_code=False)
        text_cfg = self.model.config.text_config
        self.max_length = int(text_cfg.max_position_embeddings)
        # SigLIP was trained on text padded to the full length; CLIP pools at the end-of-text token.
        self.padding = "max_length" if "siglip" in self.model.config.model_type else True
        self.device = device
        self.dim = int(getattr(self.model.config, "projection_dim", 0) or text_cfg.hidden_size)

    def encode_images(self, images: list[Image.Image]) -> Any:
        batch = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        return _features(self.model.get_image_features(pixel_values=batch["pixel_values"].to(self.device)))

    def encode_texts(self, texts: list[str]) -> Any:
        batch = self.tokenizer(
            texts, padding=self.padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        inputs = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        return _features(self.model.get_text_features(**inputs))


def _features(output: Any) -> Any:
    """Projected features from ``get_*_features``: a tensor (transformers 4) or ``pooler_output`` (5)."""
    return output if hasattr(output, "shape") else output.pooler_output


_LOADED: dict[tuple[str, str], _OpenClipTowers | _HFTowers] = {}  # per process: (spec key, device) -> model


def load_towers(spec: ClipSpec, device: str) -> _OpenClipTowers | _HFTowers:
    """The model described by ``spec`` on ``device``, loaded once per process."""
    key = (spec.cache_key, device)
    if key not in _LOADED:
        logger.info("loading CLIP %s on %s", spec.name, device)
        _LOADED[key] = (
            _OpenClipTowers(spec, device) if spec.backend == "open_clip" else _HFTowers(spec, device)
        )
    return _LOADED[key]


class ClipEmbedder:
    """Images and texts -> L2-normalised embeddings ``(n, d)`` (float32 numpy), in batches of ``batch_size``.

    ``device="auto"`` picks CUDA when available (decided in each process). ``precision="auto"`` runs bf16
    autocast on CUDA and fp32 on CPU. Implements the builder's ``Embedder`` protocol.
    """

    def __init__(
        self, spec: ClipSpec | str, device: str = "auto", batch_size: int = 64, precision: str = "auto"
    ) -> None:
        self.spec = parse_clip_spec(spec) if isinstance(spec, str) else spec
        if batch_size < 1:
            raise ValueError(f"ClipEmbedder: batch_size={batch_size}; use 1 or more")
        if precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"ClipEmbedder: precision={precision!r}; use auto, fp32, bf16 or fp16")
        self.device, self.batch_size, self.precision = device, batch_size, precision

    @classmethod
    def from_open_clip(
        cls, name: str, pretrained: str | None = None, model_cfg: dict[str, Any] | None = None, **kwargs: Any
    ) -> ClipEmbedder:
        """An open_clip model: built-in ``name`` + tag/weights file, or a custom ``model_cfg`` dict."""
        cfg_json = json.dumps(model_cfg, sort_keys=True) if model_cfg is not None else None
        seed = int(kwargs.pop("seed", 0))
        return cls(ClipSpec("open_clip", name, pretrained, cfg_json, seed), **kwargs)

    @classmethod
    def from_hf(cls, path: str, **kwargs: Any) -> ClipEmbedder:
        """A Hugging Face CLIP or SigLIP model directory (or hub id)."""
        return cls(ClipSpec("hf", str(path)), **kwargs)

    @property
    def towers(self) -> _OpenClipTowers | _HFTowers:
        """The loaded model (loaded on first use in this process)."""
        return load_towers(self.spec, _resolve_device(self.device))

    def load(self) -> None:
        """Load the model now (e.g. in a Ray actor's constructor) rather than on the first batch."""
        _ = self.towers

    @property
    def dim(self) -> int:
        """Embedding width ``d``."""
        return self.towers.dim

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """L2-normalised image embeddings, shape (n, d)."""
        return self._embed(list(images), self.towers.encode_images)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings, shape (n, d)."""
        return self._embed([str(t) for t in texts], self.towers.encode_texts)

    def _embed(self, items: list[Any], encode: Any) -> np.ndarray:
        import torch

        towers = self.towers
        if not items:
            return np.zeros((0, towers.dim), dtype=np.float32)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        use_amp = towers.device.startswith("cuda") and (self.precision == "auto" or dtype is not None)
        out = []
        with torch.inference_mode():
            for start in range(0, len(items), self.batch_size):
                with torch.autocast("cuda", dtype=dtype or torch.bfloat16, enabled=use_amp):
                    emb = encode(items[start : start + self.batch_size]).float()  # (n, d)
                out.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
        return torch.cat(out).numpy()

    def __repr__(self) -> str:
        return f"ClipEmbedder({self.spec.backend}:{self.spec.name}, device={self.device})"


def tiny_clip_embedder(seed: int = 0, **kwargs: Any) -> ClipEmbedder:
    """A random tiny open_clip CLIP (32 px, 32-d embeddings) for tests and benchmarks; no downloads."""
    return ClipEmbedder.from_open_clip("flamingo-tiny-clip", model_cfg=TINY_CLIP_CONFIG, seed=seed, **kwargs)
