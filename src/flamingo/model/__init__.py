"""Pure single-device modules: vision adapters, Perceiver, gated cross-attention, the Flamingo model."""

from flamingo._lazy import lazy_attributes

# name -> defining submodule, imported on first use (so that `import flamingo.X.cli` stays light)
__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        "config": [
            "CrossAttnConfig",
            "FlamingoConfig",
            "LMConfig",
            "PerceiverConfig",
            "TokenConfig",
            "VisionConfig",
        ],
        "flamingo": ["Flamingo", "FlamingoOutput"],
    },
)

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
