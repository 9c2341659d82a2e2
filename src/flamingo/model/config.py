"""Typed, JSON-serialisable configuration of a Flamingo model.

One dataclass per component, validated in ``__post_init__``; presets (model sizes, OpenFlamingo releases) are
data kept elsewhere (``flamingo.model.presets``). Every field has a one-line docstring-style comment that the
CLI reuses as help text.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from flamingo.configs import ConfigError, between, from_mapping, read_mapping, show
from flamingo.prompts import PromptConfig

FORMAT_VERSION = 1
MEDIA_POLICIES = ("previous", "all_previous")
VISION_KINDS = ("open_clip", "hf")
MAX_VOCAB = 1 << 24
"""Largest vocabulary (and token id) a config may name."""
MAX_IMAGE_SIZE = 4096
"""Largest input resolution (pixels per side)."""
OPEN_CLIP_NUMBER = 1 << 20
"""Largest magnitude of a number in an open_clip architecture dict (widths, layers, vocabulary sizes)."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class VisionConfig:
    """Which vision encoder produces the patch features, and how."""

    kind: Literal["open_clip", "hf"] = "open_clip"
    """Adapter family: ``open_clip`` (an open_clip model) or ``hf`` (a Hugging Face CLIP/SigLIP vision tower)."""
    name: str = "ViT-L-14"
    """open_clip model name, or a Hugging Face hub id / local directory for ``hf``."""
    pretrained: str | None = "openai"
    """open_clip pretrained tag or a local weights file; ignored for ``hf``."""
    revision: str | None = None
    """Hub revision (commit or tag) for ``hf`` encoders."""
    legacy_tokens: bool = True
    """open_clip < 2.23 token semantics (last-block patch tokens, no ln_post): what OpenFlamingo's weights need."""
    model_cfg: dict[str, Any] | None = field(
        default=None, metadata=between(-OPEN_CLIP_NUMBER, OPEN_CLIP_NUMBER)
    )
    """An open_clip architecture dict to register under ``name`` (custom or tiny encoders)."""
    image_size: int | None = field(default=None, metadata=between(1, MAX_IMAGE_SIZE))
    """Input resolution override; None uses the encoder's own."""

    def __post_init__(self) -> None:
        _check(self.kind in VISION_KINDS, f"vision.kind={self.kind!r}: use one of {VISION_KINDS}")
        _check(bool(self.name), "vision.name is empty: give an open_clip model name or a hub id / path")


@dataclass
class LMConfig:
    """Which Hugging Face causal LM carries the text, and where its decoder layers are."""

    name_or_path: str = ""
    """Hub id or local directory of the causal LM."""
    tokenizer: str | None = None
    """Hub id or directory of the tokenizer; None uses ``name_or_path``."""
    revision: str | None = None
    """Hub revision of the LM and tokenizer."""
    decoder_layers_attr: str | None = None
    """Dotted path of the decoder layer list (e.g. ``model.layers``); None looks it up by ``model_type``."""
    trust_remote_code: bool = False
    """Marks an LM defined by its repository's own code (MPT-1B RedPajama). Never a permission: loading such an
    LM needs the caller's ``--trust-remote-code`` / ``trust_remote_code=True``."""

    def __post_init__(self) -> None:
        _check(bool(self.name_or_path), "lm.name_or_path is empty: give a hub id or a local LM directory")


@dataclass
class PerceiverConfig:
    """Perceiver Resampler: patch tokens -> a fixed number of latents per image."""

    depth: int = field(default=6, metadata=between(1, 64))
    """Number of (attention, feed-forward) layers."""
    heads: int = field(default=8, metadata=between(1, 128))
    """Attention heads."""
    dim_head: int = field(default=64, metadata=between(1, 512))
    """Width of each head."""
    num_latents: int = field(default=64, metadata=between(1, 4096))
    """Latent vectors per image."""
    ff_mult: int = field(default=4, metadata=between(1, 16))
    """Feed-forward expansion factor."""
    max_frames: int | None = field(default=None, metadata=between(1, 1024))
    """Learned frame (time) embeddings for video input with up to this many frames; None disables them."""

    def __post_init__(self) -> None:
        for name in ("depth", "heads", "dim_head", "num_latents", "ff_mult"):
            _check(getattr(self, name) > 0, f"perceiver.{name} must be positive")
        _check(
            self.max_frames is None or self.max_frames > 0, "perceiver.max_frames must be positive or null"
        )


@dataclass
class CrossAttnConfig:
    """Gated cross-attention blocks inserted before LM decoder layers."""

    every_n: int = field(default=1, metadata=between(1, 1024))
    """A block sits before decoder layer i when (i + 1) % every_n == 0."""
    heads: int = field(default=8, metadata=between(1, 128))
    """Attention heads."""
    dim_head: int = field(default=64, metadata=between(1, 512))
    """Width of each head."""
    ff_mult: int = field(default=4, metadata=between(1, 16))
    """Feed-forward expansion factor."""
    gate_init: float = field(default=0.0, metadata=between(-10, 10))
    """Initial value of both tanh gates (0 makes the untrained model exactly the text-only LM)."""
    media_policy: Literal["previous", "all_previous"] = "previous"
    """Which images a token sees: the latest one at or before it (OpenFlamingo), or all of those."""

    def __post_init__(self) -> None:
        _check(self.every_n > 0, "cross_attn.every_n must be >= 1")
        _check(self.heads > 0 and self.dim_head > 0, "cross_attn.heads and dim_head must be positive")
        _check(
            self.media_policy in MEDIA_POLICIES,
            f"cross_attn.media_policy={self.media_policy!r}: use one of {MEDIA_POLICIES}",
        )


@dataclass
class TokenConfig:
    """Special token ids, filled in when the tokenizer is prepared; checked again at load time."""

    eoc_token: str = "<|endofchunk|>"
    """Ends every image-text chunk; the default stop token of generation."""
    image_token: str = "<image>"
    """Marks where an image sits in the text."""
    pad_token: str = "<PAD>"
    """Added only when the tokenizer has no pad token."""
    eoc_id: int | None = field(default=None, metadata=between(0, MAX_VOCAB - 1))
    """Id of ``eoc_token``."""
    image_id: int | None = field(default=None, metadata=between(0, MAX_VOCAB - 1))
    """Id of ``image_token``."""
    pad_id: int | None = field(default=None, metadata=between(0, MAX_VOCAB - 1))
    """Id of the pad token."""
    first_new_id: int | None = field(default=None, metadata=between(0, MAX_VOCAB - 1))
    """First id of the contiguous block of tokens added to the base tokenizer."""
    num_new: int = field(default=0, metadata=between(0, 65536))
    """How many tokens were added (their embedding rows are the only trainable part of the embeddings)."""
    vocab_size: int | None = field(default=None, metadata=between(1, MAX_VOCAB))
    """Tokenizer length after adding the tokens (= rows of the resized embedding matrix)."""
    tied_output: bool | None = None
    """Whether the LM's output head shares the input embedding matrix."""


@dataclass
class FlamingoConfig:
    """The whole architecture: enough to rebuild the model and check a checkpoint against it."""

    lm: LMConfig = field(default_factory=LMConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    perceiver: PerceiverConfig = field(default_factory=PerceiverConfig)
    cross_attn: CrossAttnConfig = field(default_factory=CrossAttnConfig)
    tokens: TokenConfig = field(default_factory=TokenConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    """The prompt templates the model was trained with (absent from older checkpoints: OpenFlamingo's)."""
    format_version: int = field(default=FORMAT_VERSION, metadata=between(1, 1_000_000))
    """Version of the checkpoint format."""
    backbones_included: bool = False
    """Whether the frozen LM and vision encoder are stored inside the checkpoint directory."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> FlamingoConfig:
        """Build from a plain dict (a ``config.json``), checking every field's type and bounds.

        Unknown or misspelt fields, values of the wrong type and sizes out of bounds raise one
        :class:`ConfigError` naming ``source`` and the field.
        """
        if isinstance(data, dict) and "architecture" in data:
            data = dict(data)
            architecture = data.pop("architecture")
            if architecture != "flamingo":
                raise ConfigError(
                    f"{source}: field 'architecture': got {show(architecture)}; expected 'flamingo' (this is not "
                    "a flamingo-vlm model config)",
                    source=source,
                    field="architecture",
                )
        config = from_mapping(cls, data, source)
        if config.format_version > FORMAT_VERSION:
            raise ConfigError(
                f"{source}: format_version {config.format_version} is newer than this flamingo-vlm understands "
                f"({FORMAT_VERSION}); upgrade flamingo-vlm",
                source=source,
                field="format_version",
            )
        return config

    def save(self, path: str | Path) -> None:
        data = {"architecture": "flamingo", **self.to_dict()}
        Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> FlamingoConfig:
        """Read a ``config.json``; every problem is a one-line :class:`ConfigError` naming the file."""
        return cls.from_dict(read_mapping(path, "model config"), source=str(path))
