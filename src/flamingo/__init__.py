"""flamingo-vlm: Flamingo-style large multimodal models on any Hugging Face LM and CLIP-like encoder.

``Flamingo``, ``FlamingoConfig`` and ``FlamingoProcessor`` are imported on first use, so that importing a light
module of the package (the command line's parsers, ``flamingo.errors``) does not load torch.
"""

import logging
from typing import TYPE_CHECKING

from flamingo._lazy import lazy_attributes


def _drop_torchao_enum_notice(record: logging.LogRecord) -> bool:
    """False for the notice torch logs once per enum that torchao registers at import (transformers imports
    torchao whenever it is installed, the ``quantize`` extra): it is meant for torchao's authors, not users."""
    return "Enum subclass and is now natively supported" not in str(record.msg)


logging.getLogger("torch.utils._pytree").addFilter(_drop_torchao_enum_notice)

if TYPE_CHECKING:
    from flamingo.model import Flamingo, FlamingoConfig
    from flamingo.processing import FlamingoProcessor

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_attributes(
    __name__, {"model": ["Flamingo", "FlamingoConfig"], "processing": ["FlamingoProcessor"]}
)

__all__ = ["Flamingo", "FlamingoConfig", "FlamingoProcessor", "__version__"]
