"""flamingo-vlm: Flamingo-style large multimodal models on any Hugging Face LM and CLIP-like encoder."""

from flamingo.model import Flamingo, FlamingoConfig

__version__ = "0.1.0"


def __getattr__(name: str):  # the processor pulls in tokenizers/PIL helpers; import it on first use
    if name == "FlamingoProcessor":
        from flamingo.processing import FlamingoProcessor

        return FlamingoProcessor
    raise AttributeError(name)


__all__ = ["Flamingo", "FlamingoConfig", "FlamingoProcessor", "__version__"]
