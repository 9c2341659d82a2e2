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

from flamingo.prompts import PromptConfig

FORMAT_VERSION = 1
MEDIA_POLICIES = ("previous", "all_previous")
VISION_KINDS = ("open_clip", "hf")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


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
    model_cfg: dict[str, Any] | None = None
    """An open_clip architecture dict to register under ``name`` (custom or tiny encoders)."""
    image_size: int | None = None
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
    """Allow the LM's own modelling code from the hub (needed for MPT-1B RedPajama)."""

    def __post_init__(self) -> None:
        _check(bool(self.name_or_path), "lm.name_or_path is empty: give a hub id or a local LM directory")


@dataclass
class PerceiverConfig:
    """Perceiver Resampler: patch tokens -> a fixed number of latents per image."""

    depth: int = 6
    """Number of (attention, feed-forward) layers."""
    heads: int = 8
    """Attention heads."""
    dim_head: int = 64
    """Width of each head."""
    num_latents: int = 64
    """Latent vectors per image."""
    ff_mult: int = 4
    """Feed-forward expansion factor."""
    max_frames: int | None = None
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

    every_n: int = 1
    """A block sits before decoder layer i when (i + 1) % every_n == 0."""
    heads: int = 8
    """Attention heads."""
    dim_head: int = 64
    """Width of each head."""
    ff_mult: int = 4
    """Feed-forward expansion factor."""
    gate_init: float = 0.0
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
    eoc_id: int | None = None
    """Id of ``eoc_token``."""
    image_id: int | None = None
    """Id of ``image_token``."""
    pad_id: int | None = None
    """Id of the pad token."""
    first_new_id: int | None = None
    """First id of the contiguous block of tokens added to the base tokenizer."""
    num_new: int = 0
    """How many tokens were added (their embedding rows are the only trainable part of the embeddings)."""
    vocab_size: int | None = None
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
    format_version: int = FORMAT_VERSION
    """Version of the checkpoint format."""
    backbones_included: bool = False
    """Whether the frozen LM and vision encoder are stored inside the checkpoint directory."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> FlamingoConfig:
        """Build from a plain dict, naming unknown or misspelt fields in the error."""
        sections = {"lm": LMConfig, "vision": VisionConfig, "perceiver": PerceiverConfig}
        sections |= {"cross_attn": CrossAttnConfig, "tokens": TokenConfig, "prompts": PromptConfig}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in sections:
                kwargs[key] = _build_section(sections[key], value, f"{source}: {key}")
            elif key in ("format_version", "backbones_included"):
                kwargs[key] = value
            elif key != "architecture":
                raise ConfigError(
                    f"{source}: unknown field {key!r}; expected one of {[*sections, 'format_version']}"
                )
        config = cls(**kwargs)
        if config.format_version > FORMAT_VERSION:
            raise ConfigError(
                f"{source}: format_version {config.format_version} is newer than this flamingo-vlm understands "
                f"({FORMAT_VERSION}); upgrade flamingo-vlm"
            )
        return config

    def save(self, path: str | Path) -> None:
        data = {"architecture": "flamingo", **self.to_dict()}
        Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> FlamingoConfig:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from err
        return cls.from_dict(data, source=str(path))


def _build_section(section_cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be an object, got {type(value).__name__}")
    names = {f.name for f in dataclasses.fields(section_cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; valid fields are {sorted(names)}")
    return section_cls(**value)
