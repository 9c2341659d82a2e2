"""Pure single-device modules: vision adapters, Perceiver, gated cross-attention, the Flamingo model."""

from flamingo.model.config import (
    CrossAttnConfig,
    FlamingoConfig,
    LMConfig,
    PerceiverConfig,
    TokenConfig,
    VisionConfig,
)
from flamingo.model.flamingo import Flamingo, FlamingoOutput

__all__ = [
    "CrossAttnConfig",
    "Flamingo",
    "FlamingoConfig",
    "FlamingoOutput",
    "LMConfig",
    "PerceiverConfig",
    "TokenConfig",
    "VisionConfig",
]
