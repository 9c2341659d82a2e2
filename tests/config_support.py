"""Shared by the config tests: a valid model config and the shape every config error must have."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flamingo.configs import ConfigError
from flamingo.model.config import FlamingoConfig, LMConfig, PerceiverConfig

ROOT = Path(__file__).resolve().parents[1]
TINY_VISION = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def model_dict() -> dict[str, Any]:
    """A valid saved ``config.json`` (what a tiny checkpoint holds)."""
    config = FlamingoConfig(lm=LMConfig(name_or_path="tiny-llama"))
    config.vision.model_cfg = json.loads(json.dumps(TINY_VISION))
    config.vision.name, config.vision.pretrained = "flamingo-tiny-vit", None
    config.perceiver = PerceiverConfig(depth=2, heads=2, dim_head=16, num_latents=4)
    config.tokens.eoc_id, config.tokens.vocab_size = 320, 323
    return {"architecture": "flamingo", **config.to_dict()}


def expect_one_line_error(err: ConfigError, path: Path) -> str:
    message = str(err)
    assert len(message.splitlines()) == 1 and message.isprintable(), message
    assert str(path) in message, message
    return message
