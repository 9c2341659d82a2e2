"""Placing one Flamingo over several devices (``device_map="auto"``) with Hugging Face ``accelerate``.

The model code stays single-device (see docs/design.md, "Layers"); this module only decides where each part
lives and moves tensors at the boundaries, the way ``transformers`` does for a plain LM:

- one *placement unit* per decoder layer holds the layer and the gated cross-attention block that runs before it,
  so a block always sits on its layer's device; the vision encoder and the Perceiver form one unit placed first;
  ``accelerate`` sizes the units and fills the devices in execution order (balanced over GPUs by default);
- ``accelerate.dispatch_model`` moves the weights and adds its hooks (CPU and disk offload included);
- a forward pre-hook on the vision encoder, the Perceiver, each cross-attention block, the input embedding and the
  output head moves every tensor it is given (hidden states, media, the blocks' routing plan and cached media
  keys/values) to the device the module runs on. These must be PyTorch pre-hooks: Flamingo's own hooks see a
  module's inputs before ``accelerate``'s forward wrapper moves them;
- the added tokens' rows go to the device of the embedding (and head) that uses them.

Needs the ``accelerate`` package (in the ``serve`` extra). Device map keys are module names of the Flamingo
model (``"lm.model.layers.3"``, ``"cross_attn.3"``, ``"vision"``); values are GPU indices, ``"cpu"`` or ``"disk"``.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flamingo.model.devices import MAP_STRATEGIES
from flamingo.model.flamingo import Flamingo
from flamingo.model.lm import _get_path

DeviceMap = dict[str, int | str]
STRATEGIES = MAP_STRATEGIES
_OFFLOADED = ("cpu", "disk")
_ROW_PARAMS = ("new_token_embeddings", "new_token_output")


class _PlacementUnit(nn.Module):
    """Planning only: modules that must share a device (never called, never part of the model)."""

    def __init__(self, **modules: nn.Module) -> None:
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)


def _planning_view(model: Flamingo) -> nn.Module:
    """A module tree over the model's own tensors (nothing copied) in execution order: ``media`` (vision and
    Perceiver), then the LM with each decoder layer ``i`` replaced by a unit of (cross-attention block, layer)."""
    layers = _get_path(model.lm, model.layers_path)
    units = nn.ModuleList()
    for i, layer in enumerate(layers):
        key = str(i)
        block = {"xattn": model.cross_attn[key]} if key in model.cross_attn else {}
        units.append(_PlacementUnit(**block, layer=layer))
    view = _PlacementUnit(
        media=_PlacementUnit(vision=model.vision, perceiver=model.perceiver),
        lm=_replace_path(model.lm, model.layers_path.split("."), units),
    )
    return view


def _replace_path(module: nn.Module, path: list[str], replacement: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` whose submodule at ``path`` is ``replacement``; ``module`` is untouched."""
    clone = copy.copy(module)
    clone.__dict__["_modules"] = dict(module._modules)
    head, rest = path[0], path[1:]
    clone._modules[head] = _replace_path(module._modules[head], rest, replacement) if rest else replacement
    return clone


def _no_split_classes(model: Flamingo) -> list[str]:
    declared = getattr(model.lm, "_no_split_modules", None) or []
    return sorted({*declared, _PlacementUnit.__name__})


def infer_device_map(
    model: Flamingo,
    max_memory: Mapping[int | str, int | str] | None = None,
    strategy: str = "auto",
) -> DeviceMap:
    """A device map over ``model``'s modules: decoder layers spread over the devices in ``max_memory`` (default:
    what is free on every GPU, then CPU RAM), each cross-attention block with its layer, vision and Perceiver
    first. ``strategy`` is ``auto``/``balanced`` (even over GPUs), ``balanced_low_0`` (GPU 0 kept light for
    generation) or ``sequential`` (fill GPU 0 first)."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    if strategy not in STRATEGIES:
        raise ValueError(f"device_map={strategy!r}: use one of {', '.join(STRATEGIES)} or a dict")
    view = _planning_view(model)
    no_split = _no_split_classes(model)
    memory = dict(max_memory) if max_memory is not None else None
    if strategy != "sequential":
        # get_balanced_memory cannot parse a "disk" entry: balance the rest and keep the disk budget as given.
        disk = {"disk": memory.pop("disk")} if memory and "disk" in memory else {}
        memory = get_balanced_memory(
            view, memory, no_split_module_classes=no_split, low_zero=strategy == "balanced_low_0"
        )
        memory = {**memory, **disk}
    planned = infer_auto_device_map(view, max_memory=memory, no_split_module_classes=no_split)
    return complete_device_map(model, _from_view(model, planned))


def _from_view(model: Flamingo, planned: Mapping[str, int | str]) -> DeviceMap:
    """Keys of the planning view translated to the model's own module names."""
    layers_key = f"lm.{model.layers_path}"
    result: DeviceMap = {}
    for key, device in planned.items():
        if key == "":
            return {"": device}
        if key == "media" or key.startswith("media."):
            result["vision"] = result["perceiver"] = device
        elif key.startswith(layers_key + "."):
            index = key[len(layers_key) + 1 :].split(".")[0]
            result[f"{layers_key}.{index}"] = device
        else:
            result[key] = device  # LM modules outside the layer list, or a container of whole layers
    return result


def complete_device_map(model: Flamingo, device_map: Mapping[str, int | str]) -> DeviceMap:
    """A user's or a planned map made complete and checked: missing cross-attention blocks follow their decoder
    layers, a missing vision encoder or Perceiver goes where the first layer goes, and the added tokens' rows go
    where the embedding and the head run. Raises ``ValueError`` naming the key and the fix."""
    full: DeviceMap = dict(device_map)
    if "" in full:
        return {"": full[""]}
    modules = dict(model.named_modules())
    unknown = [k for k in full if k not in modules and k not in _ROW_PARAMS]
    if unknown:
        raise ValueError(
            f"device_map keys {unknown[:4]} are not modules of this Flamingo model: use names such as "
            f"'lm.{model.layers_path}.0', 'cross_attn.0', 'vision', 'perceiver' (print(model) shows them)"
        )
    layers_key = f"lm.{model.layers_path}"
    for i in model.xattn_indices:
        layer_device = _lookup(full, f"{layers_key}.{i}")
        if layer_device is None:
            raise ValueError(f"device_map gives no device for decoder layer {i} ('{layers_key}.{i}')")
        block_device = full.setdefault(f"cross_attn.{i}", layer_device)
        if block_device != layer_device:
            raise ValueError(
                f"device_map puts cross_attn.{i} on {block_device!r} but decoder layer {i} on {layer_device!r}: "
                "a cross-attention block runs right before its layer and must live on the same device"
            )
    first = _lookup(full, f"{layers_key}.0")
    for name in ("vision", "perceiver"):
        full.setdefault(name, first)
    if full["vision"] != full["perceiver"]:
        raise ValueError(
            "device_map: put 'vision' and 'perceiver' on the same device (the images pass straight on)"
        )
    missing = [name for name, _ in model.named_parameters() if _lookup(full, name) is None]
    missing = [m for m in missing if m not in _ROW_PARAMS]
    if missing:
        raise ValueError(f"device_map gives no device for {', '.join(missing[:4])}: add their modules")
    return full


def plan_device_map(
    model: Flamingo,
    device_map: str | Mapping[str, int | str],
    max_memory: Mapping[int | str, int | str] | None = None,
) -> DeviceMap:
    """The complete device map for ``device_map`` (a strategy, planned by :func:`infer_device_map`, or a dict,
    completed by :func:`complete_device_map`). ``model`` may live on the meta device: planning reads only the
    shapes and dtypes of its tensors, so a checkpoint is planned before any weight is read."""
    if isinstance(device_map, str):
        return infer_device_map(model, max_memory, device_map)
    return complete_device_map(model, device_map)


def tensor_device(device_map: Mapping[str, int | str], name: str) -> torch.device:
    """The device a tensor of module or parameter ``name`` is loaded onto under ``device_map``: its GPU, or the
    CPU for modules offloaded to ``"cpu"`` or ``"disk"`` (:func:`dispatch` moves those afterwards)."""
    device = _lookup(device_map, name)
    return torch.device("cpu") if device is None or device in _OFFLOADED else _as_device(device)


def _lookup(device_map: Mapping[str, int | str], name: str) -> int | str | None:
    """The device of module or parameter ``name``: its own key or that of its closest listed ancestor."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        key = ".".join(parts[:end])
        if key in device_map:
            return device_map[key]
    return device_map.get("")


def dispatch(
    model: Flamingo,
    device_map: str | Mapping[str, int | str] = "auto",
    max_memory: Mapping[int | str, int | str] | None = None,
    offload_folder: str | Path | None = None,
) -> DeviceMap:
    """Place ``model`` over devices, add the hooks that move tensors between them, and return the device map
    used (also kept as ``model.device_map``).

    ``device_map`` is a strategy (see :func:`infer_device_map`) or a dict over module names. ``model`` may be
    loaded on the CPU, or already in place (``flamingo.model.checkpoint.from_pretrained`` reads each tensor
    straight onto the device :func:`tensor_device` names): tensors already where they belong are not copied.
    Modules mapped to ``"disk"`` need ``offload_folder``; with GPUs present, modules mapped to ``"cpu"`` are kept
    in RAM and run on the first GPU. Do not call ``model.to`` afterwards.
    """
    from accelerate import dispatch_model

    planned = plan_device_map(model, device_map, max_memory)
    if "disk" in planned.values() and offload_folder is None:
        raise ValueError(
            "the device map offloads modules to 'disk': pass offload_folder= (an empty directory)"
        )
    main = _main_device(planned)
    tensor_map = {**planned, **_row_devices(model, planned, main)}
    with warnings.catch_warnings():  # the added tokens' rows are parameters, not modules: that is intended
        warnings.filterwarnings("ignore", message=".*do not match any submodules.*")
        dispatch_model(
            model,
            device_map=tensor_map,
            main_device=main,
            offload_dir=str(offload_folder) if offload_folder is not None else None,
            skip_keys=_skip_keys(model),
        )
    _place_rows(model, tensor_map)
    _add_input_movers(model)
    model.device_map = planned
    return planned


def _skip_keys(model: Flamingo) -> list[str] | None:
    """Inputs the hooks must not move, as ``transformers`` declares them (the LM's KV cache lives per layer)."""
    return sorted(getattr(model.lm, "_skip_keys_device_placement", None) or []) or None


def _main_device(device_map: Mapping[str, int | str]) -> int | str:
    """Where offloaded modules run: the first accelerator in the map, else the CPU."""
    return next((d for d in device_map.values() if d not in _OFFLOADED), "cpu")


def _row_devices(model: Flamingo, device_map: Mapping[str, int | str], main: int | str) -> DeviceMap:
    """The added tokens' rows, each on the device where the module that reads it runs."""

    def runs_on(name: str) -> int | str:
        device = _lookup(device_map, name)
        return main if device in _OFFLOADED else device

    embed = runs_on(_module_name(model, model.lm.get_input_embeddings()))
    head_module = model.lm.get_output_embeddings()
    rows: DeviceMap = {"new_token_embeddings": embed}
    if head_module is None:
        return rows
    head = runs_on(_module_name(model, head_module))
    if model.new_token_output is not None:
        rows["new_token_output"] = head
    elif head != embed:
        raise ValueError(
            f"the output head shares its weights with the input embeddings but runs on {head!r}, the embeddings "
            f"on {embed!r}: map both to the same device"
        )
    return rows


def _module_name(model: nn.Module, target: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is target)


def _place_rows(model: Flamingo, device_map: Mapping[str, int | str]) -> None:
    """``dispatch_model`` leaves the root's own parameters on one device; move each row to its own."""
    for name in _ROW_PARAMS:
        param = getattr(model, name)
        if param is not None and name in device_map:
            param.data = param.data.to(_as_device(device_map[name]))


def _as_device(device: int | str | torch.device) -> torch.device:
    if isinstance(device, int):
        return torch.device("cuda", device)
    return torch.device(device)


def _add_input_movers(model: Flamingo) -> None:
    modules = [model.vision, model.perceiver, *model.cross_attn.values(), model.lm.get_input_embeddings()]
    head = model.lm.get_output_embeddings()
    if head is not None:
        modules.append(head)
    for module in modules:
        if not getattr(module, "_flamingo_input_mover", False):
            module.register_forward_pre_hook(_move_inputs, with_kwargs=True)
            module._flamingo_input_mover = True


def _move_inputs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    device = execution_device(module)
    return move_to(args, device), move_to(kwargs, device)


def execution_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: its ``accelerate`` hook's execution device, else its parameters' device."""
    for hook in _hooks(getattr(module, "_hf_hook", None)):
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return _as_device(device)
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _hooks(hook: Any) -> Iterator[Any]:
    if hook is None:
        return
    yield hook
    for inner in getattr(hook, "hooks", ()):  # accelerate's SequentialHook
        yield from _hooks(inner)


def input_device(model: Flamingo) -> torch.device:
    """The device to put a batch's images and token ids on: where the vision encoder runs."""
    return execution_device(model.vision)


def move_to(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor inside (tuples, lists, dicts, dataclasses, nested) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device) if value.device != device else value
    if isinstance(value, tuple):
        moved = [move_to(v, device) for v in value]
        return type(value)(*moved) if hasattr(value, "_fields") else tuple(moved)
    if isinstance(value, list):
        return [move_to(v, device) for v in value]
    if isinstance(value, dict):
        return {k: move_to(v, device) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: move_to(getattr(value, f.name), device) for f in dataclasses.fields(value) if f.init
        }
        return dataclasses.replace(value, **changes)
    return value


__all__ = [
    "STRATEGIES",
    "complete_device_map",
    "dispatch",
    "execution_device",
    "infer_device_map",
    "input_device",
    "move_to",
    "plan_device_map",
    "tensor_device",
]
