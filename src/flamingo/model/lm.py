"""Attaching to a stock Hugging Face causal LM: where its decoder layers are, and the added tokens.

Nothing here patches or swaps a ``transformers`` class or function: the LM keeps its own class, and Flamingo
reaches it only through module hooks (see ``flamingo.model.flamingo``).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

from torch import nn

from flamingo.errors import FlamingoError
from flamingo.model.config import TokenConfig

# Dotted path of the decoder layer list, by ``config.model_type``.
DECODER_LAYERS: dict[str, str] = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "mixtral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "phi": "model.layers",
    "phi3": "model.layers",
    "olmo": "model.layers",
    "gpt2": "transformer.h",
    "gptj": "transformer.h",
    "falcon": "transformer.h",
    "bloom": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
    "opt": "model.decoder.layers",
    "mpt": "transformer.blocks",
    "mosaic_gpt": "transformer.blocks",  # MPT-1B RedPajama (remote code), OpenFlamingo-3B's LM
}


# The key of an LM's config.json that names the module registering its class (see ``register_custom_lm``).
LM_MODULE_KEY = "flamingo_lm_module"


@dataclass(frozen=True)
class CustomLM:
    """A causal LM class that ``transformers`` does not ship, made known by the module that defines it."""

    model_type: str
    """``config.model_type`` of the class."""
    module: str
    """The module whose import registers the class (what a saved config names under ``LM_MODULE_KEY``)."""
    plain_head: bool
    """Whether its forward is exactly ``logits = lm_head(final hidden states)``, so that the training loss can
    come from the hidden states without building the logits (see ``Flamingo.fused_loss_supported``)."""


# Filled at run time by ``register_custom_lm``: the model core names no LM class of the packages above it.
CUSTOM_LMS: dict[str, CustomLM] = {}


def register_custom_lm(config_class: type, model_class: type, *, plain_head: bool = False) -> CustomLM:
    """Make a causal LM class known to ``AutoConfig`` / ``AutoModelForCausalLM`` and to Flamingo (idempotent).

    Call it when the module defining the class is imported. A saved LM directory finds its way back to that
    module when its config stores ``LM_MODULE_KEY: "<module>"`` (set it in the config class's ``__init__``):
    :func:`ensure_lm_class` imports the module before ``transformers`` reads the directory.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModelForCausalLM.register(config_class, model_class, exist_ok=True)
    entry = CustomLM(config_class.model_type, config_class.__module__, plain_head)
    CUSTOM_LMS[entry.model_type] = entry
    return entry


def has_custom_plain_head(model_type: str | None) -> bool:
    """Whether ``model_type`` is a registered custom LM whose logits are a plain linear head."""
    entry = CUSTOM_LMS.get(model_type or "")
    return entry is not None and entry.plain_head


def ensure_lm_class(name_or_path: str) -> None:
    """Import the module that registers a custom LM class when a local LM directory names one.

    Only modules of this package are imported from a config file: a checkpoint downloaded from anywhere must not
    choose what code runs. Other custom classes are registered by importing their module before loading.
    """
    import importlib
    import json
    from pathlib import Path

    config = Path(name_or_path) / "config.json"
    if not config.is_file():
        return
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return
    module = data.get(LM_MODULE_KEY) if isinstance(data, dict) else None
    if not module or data.get("model_type") in CUSTOM_LMS:
        return
    if not isinstance(module, str) or module.split(".")[0] != "flamingo":
        raise FlamingoError(
            f"{config}: {LM_MODULE_KEY}={module!r} is not a module of flamingo-vlm; import the module that "
            f"registers model_type {data.get('model_type')!r} yourself before loading this LM"
        )
    importlib.import_module(module)


class LayerLookupError(FlamingoError, LookupError):
    """The decoder layer list of an LM could not be found."""


def _get_path(root: nn.Module, path: str) -> Any:
    return functools.reduce(getattr, path.split("."), root)


def _num_layers(lm: nn.Module) -> int | None:
    cfg = lm.config
    for name in ("num_hidden_layers", "n_layer", "n_layers", "num_layers"):
        value = getattr(cfg, name, None)
        if isinstance(value, int):
            return value
    return None


def _fallback_layers(lm: nn.Module) -> str | None:
    """The largest ``ModuleList`` whose length equals the configured number of layers (must be unique)."""
    expected = _num_layers(lm)
    found = [
        name
        for name, module in lm.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) > 0
        and (expected is None or len(module) == expected)
    ]
    if expected is None:
        found = [n for n in found if len(_get_path(lm, n)) == max(len(_get_path(lm, m)) for m in found)]
    return found[0] if len(found) == 1 else None


def decoder_layers_path(lm: nn.Module, override: str | None = None) -> str:
    """Where the decoder layer list is: ``override``, else the registry, else a unique-ModuleList fallback."""
    model_type = getattr(lm.config, "model_type", None)
    candidates = [override] if override else []
    if not override and model_type in DECODER_LAYERS:
        candidates.append(DECODER_LAYERS[model_type])
    if not override:
        fallback = _fallback_layers(lm)
        if fallback:
            candidates.append(fallback)
    for path in candidates:
        try:
            layers = _get_path(lm, path)
        except AttributeError as err:
            if override:
                raise LayerLookupError(
                    f"lm.decoder_layers_attr={path!r} does not exist on {type(lm).__name__}"
                ) from err
            continue
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return path
    raise LayerLookupError(
        f"cannot find the decoder layer list of {type(lm).__name__} (model_type={model_type!r}). "
        "Set lm.decoder_layers_attr in the model config to its dotted path (for example 'model.layers'; "
        "print(model) shows it), or add the model type to flamingo.model.lm.DECODER_LAYERS."
    )


def cross_attn_layer_indices(num_layers: int, every_n: int) -> list[int]:
    """Decoder layers that get a gated cross-attention block before them: (i + 1) % every_n == 0."""
    return [i for i in range(num_layers) if (i + 1) % every_n == 0]


def lm_width(lm: nn.Module) -> int:
    return int(lm.get_input_embeddings().embedding_dim)


def add_special_tokens(tokenizer: Any, tokens: TokenConfig) -> TokenConfig:
    """Add ``<|endofchunk|>``, ``<image>`` (and a pad token when missing), in OpenFlamingo's order.

    Returns a TokenConfig with the ids filled in. Idempotent: a tokenizer that already has them keeps its ids.
    """
    before = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": [tokens.eoc_token, tokens.image_token]})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": tokens.pad_token})
    ids = {
        "eoc_id": tokenizer.convert_tokens_to_ids(tokens.eoc_token),
        "image_id": tokenizer.convert_tokens_to_ids(tokens.image_token),
        "pad_id": tokenizer.pad_token_id,
    }
    after = len(tokenizer)
    if tokens.first_new_id is not None:  # a known checkpoint: its ids must come back unchanged
        first_new, num_new = tokens.first_new_id, tokens.num_new
    else:
        first_new, num_new = before, after - before
    if num_new == 0:  # the tokenizer already had every token (a saved Flamingo tokenizer, new checkpoint)
        first_new = min(ids["eoc_id"], ids["image_id"])
        num_new = after - first_new
    return TokenConfig(
        eoc_token=tokens.eoc_token,
        image_token=tokens.image_token,
        pad_token=tokens.pad_token,
        **ids,
        first_new_id=first_new,
        num_new=num_new,
        vocab_size=after,
        tied_output=tokens.tied_output,
    )


def check_token_ids(found: TokenConfig, expected: TokenConfig, where: str) -> None:
    """The tokenizer must give the ids a checkpoint was trained with; say which base tokenizer it needs."""
    if expected.first_new_id is None:  # a new model: nothing to check against
        return
    for name in ("eoc_id", "image_id", "pad_id", "first_new_id", "num_new", "vocab_size"):
        want, got = getattr(expected, name), getattr(found, name)
        if want is not None and want != got:
            raise ValueError(
                f"{where}: tokens.{name} is {want} in the checkpoint but {got} with this tokenizer. The checkpoint "
                "was trained with a different base tokenizer: load the tokenizer saved with the checkpoint, or "
                "the base LM named in its config.json (lm.name_or_path / lm.tokenizer)."
            )


def is_tied(lm: nn.Module) -> bool:
    out = lm.get_output_embeddings()
    return out is not None and out.weight is lm.get_input_embeddings().weight


def cache_length(past: Any) -> int:
    """Tokens already held by an LM's KV cache (a ``transformers`` ``Cache`` or legacy tuples); 0 for none."""
    if past is None:
        return 0
    if hasattr(past, "get_seq_length"):
        return int(past.get_seq_length())
    return int(past[0][0].shape[-2]) if len(past) else 0


def expand_cache(cache: Any, rows: int) -> Any:
    """A cache holding ``rows`` copies of the single-row ``cache`` along the batch; ``cache`` is untouched.

    transformers ``Cache`` objects grow in place (``DynamicLayer.update`` concatenates and reassigns), so the
    copy is shallow per layer, then repeated with the public ``batch_repeat_interleave``; legacy tuple caches
    are repeated tensor by tensor.
    """
    from transformers.cache_utils import Cache

    if isinstance(cache, Cache):
        new = copy.copy(cache)
        new.layers = [copy.copy(layer) for layer in cache.layers]
        new.batch_repeat_interleave(rows)
        return new
    return tuple(tuple(t.repeat_interleave(rows, dim=0) for t in layer) for layer in cache)
