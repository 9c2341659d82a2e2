"""Self-describing checkpoints: ``config.json`` + ``model.safetensors`` (trained tensors) + ``tokenizer/``,
optionally ``lm/`` and ``vision/`` when the frozen backbones have no other home (tiny or custom models).

Loading is strict about the adapter weights and explains a mismatch in one message; it never unpickles.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from flamingo.errors import FlamingoError, MissingFileError
from flamingo.model.config import FlamingoConfig
from flamingo.model.files import check_safetensors_dir, load_safetensors
from flamingo.model.flamingo import Flamingo
from flamingo.model.lm import add_special_tokens, check_token_ids, ensure_lm_class
from flamingo.model.remote_code import lm_remote_code_reason, refuse
from flamingo.model.vision import VisionAdapter, build_vision_adapter

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class CheckpointError(FlamingoError, ValueError):
    """A checkpoint does not fit the model it is loaded into; the message says why and what to do."""


def load_lm_and_tokenizer(
    config: FlamingoConfig,
    lm_dir: str | None = None,
    tokenizer_dir: str | None = None,
    dtype: Any = None,
    trust_remote_code: bool = False,
    where: str = "model config",
) -> tuple:
    """The LM and its tokenizer: from a checkpoint's own copies when given, else the config's hub id / path.

    An LM that needs code from its repository (``config.lm.trust_remote_code`` set, or its own files asking for
    it) is refused before anything is imported unless the caller passes ``trust_remote_code=True``; ``where``
    names the checkpoint or config in that error. The config's own ``trust_remote_code`` is never permission.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = config.lm
    lm_source = lm_dir or cfg.name_or_path
    tokenizer_source = tokenizer_dir or cfg.tokenizer or cfg.name_or_path
    revision = None if lm_dir else cfg.revision
    ensure_lm_class(lm_source)  # this project's own LM classes count as built in below
    if cfg.trust_remote_code:
        reason: str | None = "its config sets lm.trust_remote_code"
    else:
        reason = lm_remote_code_reason(lm_source, tokenizer_source, revision)
    if reason and not trust_remote_code:
        raise refuse(where, f"the language model {cfg.name_or_path!r}", reason)
    remote = bool(reason)  # the permission is used only by a model that needs it
    if lm_dir:
        check_safetensors_dir(lm_dir)
    lm = AutoModelForCausalLM.from_pretrained(
        lm_source, revision=revision, trust_remote_code=remote, dtype=dtype
    )
    tokenizer = AutoTokenizer.from_pretrained(
        tokenizer_source, revision=None if tokenizer_dir else cfg.revision, trust_remote_code=remote
    )
    return lm, tokenizer


def build_flamingo(
    config: FlamingoConfig,
    lm: Any = None,
    tokenizer: Any = None,
    vision: VisionAdapter | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    where: str = "model config",
) -> Flamingo:
    """A new Flamingo (adapters freshly initialised) from a config; backbones not given are loaded from it.

    Adds the special tokens to the tokenizer and resizes the LM's embeddings to ``len(tokenizer)``.
    ``trust_remote_code`` lets an LM that needs its repository's own code run it (see
    :func:`load_lm_and_tokenizer`; ``where`` names the config in that refusal).
    """
    config = dataclasses.replace(config, tokens=dataclasses.replace(config.tokens))
    if lm is None or tokenizer is None:
        loaded_lm, loaded_tok = load_lm_and_tokenizer(
            config, dtype=dtype, trust_remote_code=trust_remote_code, where=where
        )
        lm, tokenizer = lm or loaded_lm, tokenizer or loaded_tok
    expected = config.tokens
    config.tokens = add_special_tokens(tokenizer, expected)
    check_token_ids(config.tokens, expected, "tokenizer")
    if lm.get_input_embeddings().weight.shape[0] != len(tokenizer):
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    vision = vision if vision is not None else build_vision_adapter(config.vision)
    model = Flamingo(config, lm, vision, tokenizer)
    return model.to(dtype) if dtype is not None else model


def save_pretrained(model: Flamingo, directory: str | Path, save_backbones: bool = False) -> Path:
    """Write the checkpoint directory; ``save_backbones`` also stores the frozen LM and vision encoder (refused
    for a quantized model: its low-bit backbones must never stand in for the originals)."""
    if save_backbones:
        from flamingo.model.quantize import refuse_quantized_backbones

        refuse_quantized_backbones(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(model.config)
    from flamingo.model.lora import has_lora, lm_without_lora, save_lora

    lora = has_lora(model)
    if lora:  # lora/ holds the adapter (PEFT layout); lm/ stays the base LM
        save_lora(model, directory)
    if save_backbones:
        if lora:
            with lm_without_lora(model) as lm:
                lm.save_pretrained(directory / "lm")
        else:
            model.lm.save_pretrained(directory / "lm")
        fields = model.vision.save_backbone(directory / "vision")
        config.vision = dataclasses.replace(config.vision, **fields)
        config.backbones_included = True
    state = {k: v.detach().contiguous().cpu() for k, v in model.adapter_state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "flamingo", "version": "1"})
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(directory / "tokenizer")
    config.save(directory / CONFIG_NAME)
    from flamingo.model.card import write_model_card

    write_model_card(directory, config)  # README.md for the hub; a card someone wrote is kept
    return directory


def resolve_checkpoint_dir(path_or_id: str | Path, revision: str | None = None) -> Path:
    """A local directory as is; anything else is a hub repository id, downloaded (and cached) first."""
    path = Path(path_or_id)
    if path.is_dir():
        return path
    if path.exists() or str(path_or_id).startswith((".", "/")):
        raise MissingFileError(f"{path_or_id}: not a checkpoint directory (expected {CONFIG_NAME} inside)")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(path_or_id), revision=revision))


def from_pretrained(
    path_or_id: str | Path,
    revision: str | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    quantization: Any = None,
) -> Flamingo:
    """Load a checkpoint written by :func:`save_pretrained` (local directory or hub id).

    ``quantization`` (``"int8"``, ``"int4"`` or a :class:`~flamingo.model.quantize.QuantizationConfig`) stores
    the frozen LM's linear layers in low-bit form (see :mod:`flamingo.model.quantize`), before the checkpoint's
    LoRA, if any, is added on top of them.

    A checkpoint whose LM needs code from its repository is refused unless ``trust_remote_code=True``; a
    ``trust_remote_code`` saved in its ``config.json`` only says that it needs it. A damaged weights file raises
    :class:`~flamingo.model.files.ModelFileError` naming it.
    """
    directory = resolve_checkpoint_dir(path_or_id, revision)
    if not (directory / CONFIG_NAME).is_file():
        raise MissingFileError(f"{directory}: no {CONFIG_NAME}; is this a flamingo-vlm checkpoint directory?")
    config = FlamingoConfig.load(directory / CONFIG_NAME)
    lm_dir = str(directory / "lm") if config.backbones_included else None
    tokenizer_dir = str(directory / "tokenizer") if (directory / "tokenizer").is_dir() else None
    lm, tokenizer = load_lm_and_tokenizer(
        config, lm_dir, tokenizer_dir, dtype, trust_remote_code=trust_remote_code, where=str(directory)
    )
    vision_cfg = config.vision
    if config.backbones_included:
        if vision_cfg.kind == "hf":
            check_safetensors_dir(directory / "vision")
            vision_cfg = dataclasses.replace(vision_cfg, name=str(directory / "vision"), revision=None)
        else:
            vision_cfg = dataclasses.replace(
                vision_cfg, pretrained=str(directory / "vision" / vision_cfg.pretrained)
            )
    model = build_flamingo(config, lm, tokenizer, build_vision_adapter(vision_cfg), dtype)
    model.config.vision = config.vision
    model.config.backbones_included = config.backbones_included
    weights = directory / WEIGHTS_NAME
    load_adapter_state(model, load_safetensors(weights), str(weights))
    if quantization is not None:  # before the LoRA, which then wraps the quantized layers
        from flamingo.model.quantize import quantize_loaded

        quantize_loaded(model, quantization, directory, device)
    if (directory / "lora").is_dir():  # a LoRA on the LM, trained with model.lora (needs peft)
        from flamingo.model.lora import load_lora

        load_lora(model, directory)
    model.eval()  # like transformers' from_pretrained: inference mode until a trainer says otherwise
    return model.to(device) if device is not None else model


def load_adapter_state(model: Flamingo, state: dict[str, torch.Tensor], source: str) -> None:
    """Strictly load Perceiver, cross-attention and added-token tensors, or raise one readable error."""
    expected = model.adapter_state_dict()
    message = describe_mismatch(model, state, expected, source)
    if message:
        raise CheckpointError(message)
    with torch.no_grad():
        for name, tensor in expected.items():
            tensor.copy_(state[name])


_XATTN_KEY = re.compile(r"^cross_attn\.(\d+)\.")


def describe_mismatch(
    model: Flamingo, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str
) -> str | None:
    """None when ``state`` fits ``expected`` exactly, else the most useful explanation of why not."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or shapes):
        return None
    lines = [f"{source} does not fit this model:"]
    file_layers = sorted({int(m.group(1)) for k in state if (m := _XATTN_KEY.match(k))})
    if file_layers != model.xattn_indices:
        lines.append(
            f"- it has cross-attention before decoder layers {_span(file_layers)}, the model before "
            f"{_span(model.xattn_indices)} (cross_attn.every_n={model.config.cross_attn.every_n}). Set "
            f"cross_attn.every_n to match the checkpoint, or use the base LM it was trained on."
        )
    width_key = next(
        (k for k in shapes if k.endswith("attn.to_q.weight") and k.startswith("cross_attn.")), None
    )
    if width_key:
        lines.append(
            f"- it was trained on an LM of width {state[width_key].shape[1]}, this LM "
            f"({model.config.lm.name_or_path}) has width {expected[width_key].shape[1]}: load the base LM named "
            "in the checkpoint's config.json"
        )
    if any(k.startswith("perceiver.") for k in shapes):
        lines.append(
            "- its Perceiver has a different width or size: the vision encoder or perceiver config differs"
        )
    if "new_token_embeddings" in shapes:
        lines.append(
            f"- it has {state['new_token_embeddings'].shape[0]} added token rows, the model "
            f"{expected['new_token_embeddings'].shape[0]}: the tokenizer differs from the one it was trained with"
        )
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", sorted(shapes))):
        if keys:
            lines.append(
                f"- {label} keys ({len(keys)}): {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
            )
    return "\n".join(lines)


def _span(indices: list[int]) -> str:
    return (
        "[]" if not indices else f"[{', '.join(map(str, indices[:8]))}{', ...' if len(indices) > 8 else ''}]"
    )
