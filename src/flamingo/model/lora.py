"""LoRA on the language model through PEFT, injected in place, and its files.

Why in place (``peft.inject_adapter_in_model``) and not a ``PeftModel`` wrapper: Flamingo's hooks sit on the LM
object, its decoder-layer objects, its input embedding and its output head (see ``flamingo.model.flamingo``).
Injection only replaces the projections *inside* the decoder layers by ``peft`` LoRA layers, so every hooked
module stays the same object and the hooks keep firing; :func:`add_lora` checks it. The head and the embeddings
are never targeted (their added-token rows are Flamingo's own).

A model directory (``Flamingo.save_pretrained`` layout) may hold ``lora/``, a standard PEFT adapter directory for
the LM (``peft.PeftModel.from_pretrained(lm, "<dir>/lora")`` opens it on the bare LM too)::

    lora/adapter_config.json        peft.LoraConfig; target_modules is a regex of the exact module names
    lora/adapter_model.safetensors  base_model.model.<module>.lora_A.weight (r, d_in), ...lora_B.weight (d_out, r)

``Flamingo.from_pretrained`` loads a directory with its LoRA (through :func:`load_lora`, which adds the LoRA of a
directory to a loaded model). Nothing here freezes or trains: PEFT leaves only the LoRA matrices of the LM requiring grad after
injection, and the trainer applies its own freezing policy afterwards.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from flamingo.model.files import load_safetensors
from flamingo.model.flamingo import Flamingo
from flamingo.model.lm import _get_path
from flamingo.model.quantize import QuantizationError, is_quantized_tensor

LORA_DIR = "lora"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_NAME = "default"
_PEFT_PREFIX = "base_model.model."  # how PeftModel.save_pretrained names the LM's tensors
_WRAPPERS = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


def _linear_types() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D  # GPT-2 style projections

    return (nn.Linear, Conv1D)


def _clean(name: str) -> str:
    """A module or parameter name without activation-checkpoint / compile wrapper segments."""
    for wrapper in _WRAPPERS:
        name = name.replace(wrapper, "")
    return name


def resolve_target_modules(model: Flamingo, targets: str | Sequence[str] = "auto") -> list[str]:
    """The exact names (in ``model.lm``) of the linear layers that get LoRA.

    ``auto``: every linear projection inside the decoder layers (attention and MLP, whatever the family calls
    them); ``all-linear``: every linear layer of the LM except the output head; a list: PEFT's rule, a layer
    whose name equals an entry or ends with ``.<entry>``. The head and the embeddings are refused.
    """
    linear = _linear_types()
    head, embed = model.lm.get_output_embeddings(), model.lm.get_input_embeddings()
    candidates = {n: m for n, m in model.lm.named_modules() if isinstance(m, linear)}
    if targets == "auto":
        inside = f"{model.layers_path}."
        names = [n for n in candidates if n.startswith(inside)]
    elif targets == "all-linear":
        names = [n for n, m in candidates.items() if m is not head]
    elif isinstance(targets, str):
        raise ValueError(
            f"LoRA target_modules={targets!r}: use 'auto', 'all-linear' or a list of layer names"
        )
    else:
        wanted = list(targets)
        names = [n for n in candidates if any(n == t or n.endswith(f".{t}") for t in wanted)]
        forbidden = [n for n, m in model.lm.named_modules() if m is head or m is embed]
        hit = [n for n in forbidden if any(n == t or n.endswith(f".{t}") for t in wanted)]
        if hit:
            raise ValueError(
                f"LoRA target_modules {wanted} name {hit}: the output head and the embeddings carry Flamingo's "
                "added-token rows and cannot take LoRA; target the decoder layers' projections"
            )
    if not names:
        raise ValueError(
            f"LoRA target_modules={targets!r} matches no linear layer of {type(model.lm).__name__}; some of its "
            f"linear layers: {', '.join(list(candidates)[:6])}"
        )
    return sorted(names)


def target_regex(names: Sequence[str], layers_path: str) -> str:
    """A compact regex that PEFT fullmatches against exactly ``names`` (per-layer names share one pattern)."""
    per_layer = re.compile(rf"^{re.escape(layers_path)}\.(\d+)\.(.+)$")
    inner = sorted({m.group(2) for n in names if (m := per_layer.match(n))})
    outer = sorted(n for n in names if not per_layer.match(n))
    options = [re.escape(n) for n in outer]
    if inner:
        options.append(rf"{re.escape(layers_path)}\.\d+\.({'|'.join(map(re.escape, inner))})")
    return "|".join(f"(?:{option})" for option in options)


def lora_modules(module: nn.Module) -> dict[str, nn.Module]:
    """The PEFT LoRA layers inside ``module`` (an LM or a Flamingo), by name (wrapper segments included)."""
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in module.named_modules() if isinstance(m, LoraLayer)}


def _replace(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` inside ``root``; returns what was there."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def has_lora(model: Flamingo) -> bool:
    return bool(lora_modules(model.lm))


def add_lora(
    model: Flamingo,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target_modules: str | Sequence[str] = "auto",
) -> list[str]:
    """Inject LoRA (``W x + (alpha / r) * B A x``, B zero-initialised) into ``model.lm`` in place.

    At injection the model computes exactly what it computed before (B = 0). Returns the adapted layer names.
    """
    from peft import LoraConfig

    if has_lora(model):
        raise ValueError("the LM already has LoRA layers; load or merge them instead of adding a second set")
    if r < 1 or alpha <= 0 or not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA needs r >= 1, alpha > 0 and dropout in [0, 1), got {r}, {alpha}, {dropout}")
    names = resolve_target_modules(model, target_modules)
    conv1d = all(type(model.lm.get_submodule(n)).__name__ == "Conv1D" for n in names)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_regex(names, model.layers_path),
        bias="none",
        fan_in_fan_out=conv1d,  # GPT-2's Conv1D stores weights (in, out)
        base_model_name_or_path=model.config.lm.name_or_path,
    )
    _inject(model, config)
    return names


def _inject(model: Flamingo, config: Any) -> None:
    """``inject_adapter_in_model`` on the LM, checking that every hooked module object survived."""
    from peft import inject_adapter_in_model

    lm = model.lm
    hooked = [lm, *_get_path(lm, model.layers_path), lm.get_input_embeddings(), lm.get_output_embeddings()]
    with warnings.catch_warnings():
        # PEFT warns that LoRA on a quantized layer cannot be merged; merged_linear refuses that anyway.
        warnings.filterwarnings("ignore", message=".*get_apply_tensor_subclass")
        inject_adapter_in_model(config, lm, adapter_name=ADAPTER_NAME)
    after = [lm, *_get_path(lm, model.layers_path), lm.get_input_embeddings(), lm.get_output_embeddings()]
    if any(a is not b for a, b in zip(hooked, after)):
        raise RuntimeError("LoRA injection replaced a module that Flamingo hooks; its hooks would not fire")


def lora_config(model: Flamingo) -> Any:
    """The ``peft.LoraConfig`` of the model's LoRA, or None."""
    configs = getattr(model.lm, "peft_config", None) or {}
    return configs.get(ADAPTER_NAME) if has_lora(model) else None


def lora_state_dict(model: Flamingo) -> dict[str, torch.Tensor]:
    """The LoRA tensors of the LM as PEFT files name them (``<module>.lora_A.weight``, no adapter name).

    Values are the live parameters (DTensor shards under FSDP2); copy or gather them before writing.
    """
    marker = re.compile(rf"\.(lora_[AB])\.{ADAPTER_NAME}\.")
    state = {}
    for name, param in model.lm.named_parameters():
        if marker.search(name):
            state[marker.sub(r".\1.", _clean(name))] = param
    return state


def save_lora(model: Flamingo, directory: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``<directory>/lora/`` (PEFT adapter layout); ``state``: gathered tensors (default: the model's)."""
    config = lora_config(model)
    if config is None:
        raise ValueError("the model has no LoRA to save")
    folder = Path(directory) / LORA_DIR
    folder.mkdir(parents=True, exist_ok=True)
    state = state if state is not None else lora_state_dict(model)
    tensors = {_PEFT_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config.save_pretrained(str(folder))
    return folder


def load_lora(model: Flamingo, directory: str | Path) -> bool:
    """Add the LoRA saved in ``<directory>/lora/`` to ``model`` (injecting it first when absent).

    Strict: every LoRA tensor of the model must be in the file with its shape, and nothing else. Returns False
    when the directory has no ``lora/``.
    """
    from peft import LoraConfig

    folder = Path(directory) / LORA_DIR
    if not (folder / ADAPTER_CONFIG).is_file():
        return False
    if not has_lora(model):
        _inject(model, LoraConfig.from_pretrained(str(folder)))
    file = folder / ADAPTER_WEIGHTS
    saved = {k.removeprefix(_PEFT_PREFIX): v for k, v in load_safetensors(file).items()}
    expected = lora_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    shapes = sorted(k for k in set(saved) & set(expected) if saved[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        raise ValueError(
            f"{file} does not fit this model's LoRA: missing {missing[:4]}, unexpected {unexpected[:4]}, "
            f"wrong shape {shapes[:4]}; it was trained with another LoRA rank, targets or base LM"
        )
    with torch.no_grad():
        for name, param in expected.items():
            param.copy_(saved[name])
    return True


def merged_linear(layer: nn.Module) -> nn.Module:
    """A copy of a LoRA layer's base layer with ``W + (alpha / r) * B A`` folded into its weight."""
    import copy

    base = layer.get_base_layer()
    if is_quantized_tensor(base.weight):  # W + BA in low bits would lose the update; never done silently
        raise QuantizationError(
            "cannot fold LoRA into a quantized layer: load the model unquantized, load the LoRA, then merge"
        )
    merged = copy.deepcopy(base)
    with torch.no_grad():
        delta = layer.get_delta_weight(ADAPTER_NAME)  # (out, in), or (in, out) for Conv1D
        merged.weight.copy_(base.weight + delta.to(base.weight.dtype))
    return merged


@contextmanager
def lm_without_lora(model: Flamingo, merge: bool = False) -> Iterator[nn.Module]:
    """The LM with plain layers in place of its LoRA layers for the duration of the block (to save it).

    ``merge=False``: the original base layers (the LM as loaded); ``True``: copies with the LoRA folded in. The
    LoRA layers are put back afterwards, exception or not; decoder-layer objects never change.
    """
    layers = lora_modules(model.lm)
    try:
        for name, layer in layers.items():
            _replace(model.lm, name, merged_linear(layer) if merge else layer.get_base_layer())
        yield model.lm
    finally:
        for name, layer in layers.items():
            _replace(model.lm, name, layer)


def merge_lora(model: Flamingo) -> None:
    """Fold the LoRA into the LM's weights for good (faster inference; the adapter cannot be trained further)."""
    for name, layer in lora_modules(model.lm).items():
        _replace(model.lm, name, merged_linear(layer))
    if hasattr(model.lm, "peft_config"):
        del model.lm.peft_config
