"""Self-describing checkpoints: ``config.json`` + ``model.safetensors`` (trained tensors) + ``tokenizer/``,
optionally ``lm/`` and ``vision/`` when the frozen backbones have no other home (tiny or custom models).

Loading is strict about the adapter weights and explains a mismatch in one message; it never unpickles. It
builds the model on the meta device and reads every tensor once, straight onto the device it runs on, so a
9B-parameter model loads in about its own size of memory (see :func:`from_pretrained`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from flamingo.errors import FlamingoError, MissingFileError, UsageError
from flamingo.model.config import FlamingoConfig
from flamingo.model.devices import is_split_map, resolve_device, resolve_dtype
from flamingo.model.files import (
    check_safetensors,
    check_safetensors_dir,
    read_safetensors,
    safetensors_header,
)
from flamingo.model.flamingo import Flamingo
from flamingo.model.lm import add_special_tokens, check_token_ids, ensure_lm_class
from flamingo.model.remote_code import lm_remote_code_reason, refuse
from flamingo.model.vision import (
    VisionAdapter,
    build_vision_adapter,
    empty_vision_adapter,
    load_vision_adapter,
)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class CheckpointError(FlamingoError, ValueError):
    """A checkpoint does not fit the model it is loaded into; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class _LMSource:
    """Where an LM and its tokenizer come from, once the remote-code question is settled."""

    lm: str
    tokenizer: str
    revision: str | None
    tokenizer_revision: str | None
    remote: bool  # the LM needs its repository's code and the caller allowed it


def _lm_source(
    config: FlamingoConfig, lm_dir: str | None, tokenizer_dir: str | None, trust_remote_code: bool, where: str
) -> _LMSource:
    """The LM's source, refusing an LM that needs code from its repository unless the caller allowed it."""
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
    if lm_dir:
        check_safetensors_dir(lm_dir)
    # the permission is used only by a model that needs it
    return _LMSource(
        lm_source, tokenizer_source, revision, None if tokenizer_dir else cfg.revision, bool(reason)
    )


def _load_tokenizer(source: _LMSource) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        source.tokenizer, revision=source.tokenizer_revision, trust_remote_code=source.remote
    )


def load_lm_and_tokenizer(
    config: FlamingoConfig,
    lm_dir: str | None = None,
    tokenizer_dir: str | None = None,
    dtype: Any = None,
    trust_remote_code: bool = False,
    where: str = "model config",
    device_map: Any = None,
    **load_options: Any,
) -> tuple:
    """The LM and its tokenizer: from a checkpoint's own copies when given, else the config's hub id / path.

    An LM that needs code from its repository (``config.lm.trust_remote_code`` set, or its own files asking for
    it) is refused before anything is imported unless the caller passes ``trust_remote_code=True``; ``where``
    names the checkpoint or config in that error. The config's own ``trust_remote_code`` is never permission.
    ``device_map`` and ``load_options`` (``offload_folder``, ``quantization_config``) go to ``transformers``,
    which builds the LM on the meta device and reads each weight straight onto its device in ``dtype``.
    """
    from transformers import AutoModelForCausalLM

    source = _lm_source(config, lm_dir, tokenizer_dir, trust_remote_code, where)
    if device_map is not None:
        load_options["device_map"] = device_map
    lm = AutoModelForCausalLM.from_pretrained(
        source.lm, revision=source.revision, trust_remote_code=source.remote, dtype=dtype, **load_options
    )
    return lm, _load_tokenizer(source)


def _with_token_ids(config: FlamingoConfig, tokenizer: Any) -> FlamingoConfig:
    """``config`` (a copy) with the special tokens added to ``tokenizer`` and their ids checked and filled in."""
    config = dataclasses.replace(config, tokens=dataclasses.replace(config.tokens))
    expected = config.tokens
    config.tokens = add_special_tokens(tokenizer, expected)
    check_token_ids(config.tokens, expected, "tokenizer")
    return config


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
    if lm is None or tokenizer is None:
        loaded_lm, loaded_tok = load_lm_and_tokenizer(
            config, dtype=dtype, trust_remote_code=trust_remote_code, where=where
        )
        lm, tokenizer = lm or loaded_lm, tokenizer or loaded_tok
    config = _with_token_ids(config, tokenizer)
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
    dtype: torch.dtype | str | None = None,
    device: str | int | torch.device | None = None,
    trust_remote_code: bool = False,
    *,
    device_map: str | int | torch.device | Mapping[str, int | str] | None = None,
    max_memory: Mapping[int | str, int | str] | None = None,
    offload_folder: str | Path | None = None,
    quantization: Any = None,
) -> Flamingo:
    """Load a checkpoint written by :func:`save_pretrained` (local directory or hub id) without ever holding a
    second copy of its weights.

    The model is built on the meta device (no memory), then each tensor is read straight onto its device in its
    dtype: the LM through ``transformers``' own loading, the vision tower and the adapters (Perceiver,
    cross-attention blocks, added token rows) from their safetensors files. Peak memory is about the weights
    themselves.

    ``device`` is one device (``"cpu"``, the default; ``"cuda:0"``; ``"auto"``: CUDA when present).
    ``device_map`` splits the model instead: a strategy (``"auto"``, ``"balanced"``, ``"balanced_low_0"``,
    ``"sequential"``, planned with ``accelerate`` on the empty model within ``max_memory``) or a dict of module
    name -> device (names as in :mod:`flamingo.model.dispatch`); one device name is the same as ``device=``.
    Modules mapped to ``"disk"`` need ``offload_folder``. ``dtype``: ``float32``/``bfloat16``/``float16`` (a
    name or a torch dtype); None or ``"auto"`` is float32 on the CPU and the checkpoint's own dtype elsewhere.
    ``quantization`` (``"int8"``, ``"int4"`` or a :class:`~flamingo.model.quantize.QuantizationConfig`) stores
    the frozen LM's linear layers in low-bit form (see :mod:`flamingo.model.quantize`), before the checkpoint's
    LoRA, if any, is added on top of them. A quantized model is read into CPU memory and each layer is moved to
    ``device`` as it is quantized, so the device never holds the full-precision LM; it runs on one device.

    A checkpoint whose LM needs code from its repository is refused unless ``trust_remote_code=True``; a
    ``trust_remote_code`` saved in its ``config.json`` only says that it needs it. A damaged weights file raises
    :class:`~flamingo.model.files.ModelFileError` naming it.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = resolve_checkpoint_dir(path_or_id, revision)
    if not (directory / CONFIG_NAME).is_file():
        raise MissingFileError(f"{directory}: no {CONFIG_NAME}; is this a flamingo-vlm checkpoint directory?")
    config = FlamingoConfig.load(
        directory / CONFIG_NAME
    )  # a bad config is named before the weights are looked at
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise MissingFileError(f"{weights}: no such weights file")
    check_safetensors(weights)  # a damaged file is named before anything is built
    split = is_split_map(device_map)
    if device_map is not None and not split:
        device = device_map  # one device, named the transformers way
    if quantization is not None:
        from flamingo.model.quantize import parse_quantization

        quantization = parse_quantization(quantization)  # a bad spec is refused before anything is read
        if split:
            raise UsageError(
                f"quantization with device_map={device_map!r}: a quantized model runs on one device (int4 fits "
                "the 9B model on one 24 GB GPU); pass device= instead"
            )
    final = None if split else resolve_device(device if device is not None else "cpu")
    # A quantized LM is read on the CPU and moved layer by layer as it is quantized (below).
    target = torch.device("cpu") if quantization is not None else final
    lm_dir = str(directory / "lm") if config.backbones_included else None
    tokenizer_dir = str(directory / "tokenizer") if (directory / "tokenizer").is_dir() else None
    source = _lm_source(config, lm_dir, tokenizer_dir, trust_remote_code, str(directory))
    tokenizer = _load_tokenizer(source)
    full_config = _with_token_ids(config, tokenizer)
    vision_cfg = _stored_vision_config(directory, config)
    lm_config = AutoConfig.from_pretrained(
        source.lm, revision=source.revision, trust_remote_code=source.remote
    )
    dtype = resolve_dtype(dtype, final if final is not None else "auto") or _config_dtype(lm_config)

    placement: dict[str, int | str] | None = None
    if split:
        from flamingo.model.dispatch import plan_device_map

        empty = _empty_flamingo(full_config, lm_config, vision_cfg, tokenizer, dtype, source.remote)
        placement = plan_device_map(empty, device_map, max_memory)  # type: ignore[arg-type]
        del empty
        if "disk" in placement.values() and offload_folder is None:
            raise UsageError(
                "the device map offloads modules to 'disk': pass offload_folder= (--offload-folder), an empty "
                "directory"
            )
    lm = AutoModelForCausalLM.from_pretrained(
        source.lm,
        revision=source.revision,
        trust_remote_code=source.remote,
        dtype=dtype,
        device_map=_lm_device_map(placement) if placement is not None else {"": target},
    )
    _remove_accelerate_hooks(lm)  # a split LM is placed again with the whole model below
    if lm.get_input_embeddings().weight.shape[0] != len(tokenizer):  # a hub LM without the added tokens
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    vision_device = _tensor_device(placement, "vision") if placement is not None else target
    vision = load_vision_adapter(vision_cfg, vision_device, dtype)
    with torch.device("meta"):  # the adapters cost nothing until their tensors are read below
        model = Flamingo(full_config, lm, vision, tokenizer)
    model.config.backbones_included = config.backbones_included

    def device_of(name: str) -> torch.device:
        if name == "new_token_embeddings":
            return lm.get_input_embeddings().weight.device
        if name == "new_token_output":
            return lm.get_output_embeddings().weight.device
        return _tensor_device(placement, name) if placement is not None else target

    _read_adapters(model, weights, device_of, dtype)
    if quantization is not None:  # before the LoRA, which then wraps the quantized layers
        from flamingo.model.quantize import quantize_loaded

        quantize_loaded(model, quantization, directory, final)
    if (directory / "lora").is_dir():  # a LoRA on the LM, trained with model.lora (needs peft)
        from flamingo.model.lora import load_lora

        load_lora(model, directory)
    _check_materialised(model)
    model.eval()  # like transformers' from_pretrained: inference mode until a trainer says otherwise
    if placement is not None:
        from flamingo.model.dispatch import dispatch

        dispatch(model, placement, offload_folder=offload_folder)
    return model


def _stored_vision_config(directory: Path, config: FlamingoConfig) -> Any:
    """The vision config with its weights pointing into ``directory`` when the checkpoint holds the tower."""
    vision_cfg = config.vision
    if not config.backbones_included:
        return vision_cfg
    if vision_cfg.kind == "hf":
        check_safetensors_dir(directory / "vision")
        return dataclasses.replace(vision_cfg, name=str(directory / "vision"), revision=None)
    return dataclasses.replace(vision_cfg, pretrained=str(directory / "vision" / vision_cfg.pretrained))


def _config_dtype(lm_config: Any) -> torch.dtype:
    """The dtype the LM's ``config.json`` records (float32 when it records none)."""
    value = getattr(lm_config, "dtype", None) or getattr(lm_config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value.removeprefix("torch."), None)
    return value if isinstance(value, torch.dtype) else torch.float32


def _empty_flamingo(
    config: FlamingoConfig, lm_config: Any, vision_cfg: Any, tokenizer: Any, dtype: torch.dtype, remote: bool
) -> Flamingo:
    """The whole model on the meta device (shapes and dtypes, no memory): what a device map is planned on."""
    from transformers import AutoModelForCausalLM

    config = dataclasses.replace(config, tokens=dataclasses.replace(config.tokens))
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(lm_config, trust_remote_code=remote, dtype=dtype)
        if lm.get_input_embeddings().weight.shape[0] != len(tokenizer):
            lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        model = Flamingo(config, lm, empty_vision_adapter(vision_cfg), tokenizer)
    return model.to(dtype)


def _lm_device_map(placement: Mapping[str, int | str]) -> dict[str, int | str]:
    """The LM's part of a Flamingo device map, keyed as ``transformers`` names the LM's modules. Modules
    offloaded to ``"cpu"`` or ``"disk"`` are read into CPU memory: :func:`~flamingo.model.dispatch.dispatch`
    offloads them with the rest of the model."""
    if "" in placement:
        return {"": _loading(placement[""])}
    lm_map = {}
    for key, device in placement.items():
        if key == "lm":
            lm_map[""] = _loading(device)
        elif key.startswith("lm."):
            lm_map[key[len("lm.") :]] = _loading(device)
    return lm_map


def _loading(device: int | str) -> int | str:
    return "cpu" if device in ("cpu", "disk") else device


def _tensor_device(placement: Mapping[str, int | str], name: str) -> torch.device:
    from flamingo.model.dispatch import tensor_device

    return tensor_device(placement, name)


def _remove_accelerate_hooks(lm: nn.Module) -> None:
    """``transformers`` adds ``accelerate`` hooks to an LM it split over devices; they come off (offloaded weights
    return to the CPU) so that :func:`~flamingo.model.dispatch.dispatch` places the whole Flamingo at once."""
    if any(hasattr(module, "_hf_hook") for module in lm.modules()):
        from accelerate.hooks import remove_hook_from_submodules

        remove_hook_from_submodules(lm)


def _read_adapters(
    model: Flamingo, path: Path, device_of: Callable[[str], torch.device], dtype: torch.dtype | None
) -> None:
    """Read the Perceiver, cross-attention and added-token tensors of ``path`` straight onto their devices
    (floating ones in ``dtype``) and put them in ``model`` in place of its empty (meta) tensors. Strict: a file
    that does not fit raises one :class:`CheckpointError` explaining why, before any tensor is read."""
    expected = model.adapter_state_dict()
    header = safetensors_header(path)
    found = {key: torch.empty(entry["shape"], device="meta") for key, entry in header.items()}
    message = describe_mismatch(model, found, expected, str(path))
    if message:
        raise CheckpointError(message)
    state = read_safetensors(path, expected, device_of, dtype)
    model.load_state_dict(state, strict=False, assign=True)


def _check_materialised(model: Flamingo) -> None:
    """Every tensor must have been read: one left on the meta device would fail later, far from its cause."""
    empty = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if empty:
        raise CheckpointError(
            f"{len(empty)} tensors were not loaded ({', '.join(empty[:4])}): the checkpoint or the LM's "
            "transformers class does not provide them"
        )


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
