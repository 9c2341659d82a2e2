"""Low-bit frozen backbones: the LM's (and optionally the vision tower's) linear layers in int8 or int4
weight-only form with ``torchao`` (the ``quantize`` extra).

What is quantized: every ``nn.Linear`` of the language model except its output head, and with
``include_vision`` every ``nn.Linear`` of the vision encoder. What stays in the compute dtype:

- the Perceiver Resampler, the gated cross-attention blocks and the added tokens' rows
  (``new_token_embeddings`` / ``new_token_output``): they are what Flamingo trains;
- the input embeddings (a lookup table, not a matmul: weight-only kernels do not apply) and the output head,
  whose weight Flamingo's hooks read directly (the fused training loss and the decode-step head kernel) and
  which is tied to the embeddings in many LMs;
- with int4, a layer whose input width is not a multiple of ``group_size`` (its groups would not tile the row);
- the output projection of an ``nn.MultiheadAttention`` (open_clip's towers), whose weight that module reads
  itself rather than through ``Linear.forward``.

Which kernels: int8 is ``Int8WeightOnlyConfig`` (one scale per output row) everywhere. int4 is
``IntxWeightOnlyConfig(int4, PerGroup(group_size))`` on the CPU, whose values sit unpacked in int8 (the memory
of int8 plus the group scales; plain packed int4 needs a kernel package that is not on PyPI), and
``Int4WeightOnlyConfig`` in the ``tile_packed_to_4d`` format on CUDA, truly packed two values a byte: that
kernel multiplies in bfloat16, so a layer in another dtype is cast to bfloat16 before it is packed (its
inputs are cast on the way in and its outputs back on the way out by the kernel itself).

The quantized weights are a loading-time form of the original backbone, never a file of this project:
:func:`flamingo.model.checkpoint.save_pretrained` refuses ``save_backbones=True`` on a quantized model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from flamingo.configs import ConfigError, between, from_mapping
from flamingo.errors import FlamingoError

QUANT_MODES = ("int8", "int4")
GROUP_SIZES = (32, 64, 128, 256)
"""int4 group sizes every backend here takes (CUDA's packed format needs one of these)."""
EXTRA_HINT = "install the quantize extra: pip install 'flamingo-vlm[quantize]' (torchao)"


class QuantizationError(FlamingoError, ValueError):
    """A quantization that cannot be done as asked; the message says why and what to do."""


@dataclass
class QuantizationConfig:
    """Weight-only quantization of the frozen backbones, applied when the model is loaded."""

    mode: Literal["int8", "int4"] = "int8"
    """``int8`` (one scale per output row) or ``int4`` (one scale per ``group_size`` input columns)."""
    group_size: int = field(default=32, metadata=between(32, 256))
    """int4 only: input columns sharing one scale (32, 64, 128 or 256; smaller is closer to the original)."""
    include_vision: bool = False
    """Also quantize the vision encoder's linear layers (a small share of the memory of the large models)."""

    def __post_init__(self) -> None:
        if self.mode not in QUANT_MODES:
            raise ConfigError(f"quantization.mode={self.mode!r}: use one of {QUANT_MODES}")
        if self.group_size not in GROUP_SIZES:
            raise ConfigError(f"quantization.group_size={self.group_size}: use one of {GROUP_SIZES}")


def parse_quantization(
    value: QuantizationConfig | str | Mapping[str, Any] | None, source: str = "quantization"
) -> QuantizationConfig | None:
    """``"int8"`` / ``"int4"``, a mapping of :class:`QuantizationConfig` fields, a config, or None (no
    quantization) -> a config or None; anything else is a one-line :class:`ConfigError` naming ``source``."""
    if value is None or isinstance(value, QuantizationConfig):
        return value
    if isinstance(value, str):
        if value not in QUANT_MODES:
            raise ConfigError(f"{source}={value!r}: use one of {QUANT_MODES}")
        return QuantizationConfig(mode=value)  # type: ignore[arg-type]
    if isinstance(value, Mapping):
        return from_mapping(QuantizationConfig, dict(value), source)
    raise ConfigError(
        f"{source}: got {type(value).__name__}; expected 'int8', 'int4' or a mapping like {{mode: int4}}"
    )


def import_torchao() -> Any:
    """The ``torchao.quantization`` module, or a one-line error naming the extra when it is missing.

    (The notices torch logs while torchao registers its enums are dropped by the package's ``__init__``.)
    """
    try:
        import torchao.quantization as quantization
    except ImportError as err:
        raise QuantizationError(f"int8/int4 backbones need torchao: {EXTRA_HINT} ({err})") from None
    return quantization


def is_quantized_tensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a torchao quantized tensor (checked without importing torchao)."""
    return type(tensor).__module__.startswith("torchao.")


def quantized_modules(module: nn.Module) -> list[str]:
    """Names of the submodules of ``module`` whose own weight is quantized."""
    return [
        name
        for name, sub in module.named_modules()
        if isinstance(getattr(sub, "weight", None), torch.Tensor) and is_quantized_tensor(sub.weight)
    ]


def is_quantized(model: nn.Module) -> bool:
    """Whether any weight of ``model`` is quantized."""
    return any(is_quantized_tensor(p) for p in model.parameters())


def stored_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers as they are stored (a tied weight counted once).

    A quantized weight counts its parts (int8 values, scales, zero points), not ``numel * element_size`` of
    the dtype it reports.
    """
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += _tensor_bytes(tensor)
    return total


def _tensor_bytes(tensor: torch.Tensor) -> int:
    if is_quantized_tensor(tensor) and hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def _torchao_config(config: QuantizationConfig, device: torch.device) -> Any:
    """The torchao workflow config for ``config`` on ``device``."""
    q = import_torchao()
    if config.mode == "int8":
        return q.Int8WeightOnlyConfig()
    if device.type == "cuda":
        return q.Int4WeightOnlyConfig(group_size=config.group_size, int4_packing_format="tile_packed_to_4d")
    if device.type != "cpu":
        raise QuantizationError(
            f"int4 runs on the CPU and on CUDA, not on {device.type}: use int8 or one of those"
        )
    return q.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=q.PerGroup(config.group_size))


@dataclass(frozen=True)
class QuantizationReport:
    """What :func:`quantize_backbones` did."""

    quantized: tuple[str, ...]
    """Names (in the Flamingo model) of the linear layers now stored in low-bit form."""
    kept: tuple[str, ...]
    """Linear layers of the quantized backbones left in the compute dtype (output head, untileable int4 rows)."""


def quantize_backbones(
    model: nn.Module,
    config: QuantizationConfig | str,
    device: str | torch.device | None = None,
) -> QuantizationReport:
    """Quantize the frozen LM (and with ``include_vision`` the vision encoder) of a Flamingo in place.

    ``device``: where each layer is moved before it is quantized (the whole model ends there), so that a model
    loaded on the CPU never needs its full-precision LM on the GPU; None quantizes where the layers are.
    Quantize before adding or loading LoRA (PEFT then wraps the quantized layers for QLoRA). Raises
    :class:`QuantizationError` for a model already quantized or with LoRA, or an unsupported combination.
    """
    parsed = parse_quantization(config)
    if parsed is None:
        raise QuantizationError("quantize_backbones needs a mode: 'int8', 'int4' or a QuantizationConfig")
    config = parsed
    from flamingo.model.lora import has_lora

    if is_quantized(model):
        raise QuantizationError("the model is already quantized; load it again to quantize it another way")
    if has_lora(model):
        raise QuantizationError(
            "quantize the backbones before adding or loading LoRA (from_pretrained(..., quantization=...) does)"
        )
    head = model.lm.get_output_embeddings()
    roots = [("lm", model.lm)] + ([("vision", model.vision)] if config.include_vision else [])
    targets: list[str] = []
    kept: list[str] = []
    layers: list[nn.Linear] = []
    for prefix, root in roots:
        # nn.MultiheadAttention reads its out_proj's weight itself (not through Linear.forward), which the
        # quantized weight does not support: those projections stay as they are.
        attention = {id(m.out_proj) for m in root.modules() if isinstance(m, nn.MultiheadAttention)}
        for name, module in root.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            full = f"{prefix}.{name}"
            untileable = config.mode == "int4" and module.in_features % config.group_size != 0
            if module is head or untileable or id(module) in attention:
                kept.append(full)
            else:
                targets.append(full)
                layers.append(module)
    if not layers:
        raise QuantizationError(
            f"{type(model.lm).__name__} has no nn.Linear layers to quantize (GPT-2 style Conv1D projections are "
            "not supported): load it without quantization"
        )
    where = torch.device(device) if device is not None else layers[0].weight.device
    ao_config = _torchao_config(config, where)
    if config.mode == "int4" and where.type == "cuda":
        for layer in layers:  # the packed int4 kernel takes bfloat16 weights only
            layer.to(torch.bfloat16)
    chosen = {id(m) for m in layers}
    q = import_torchao()
    for _, root in roots:
        q.quantize_(root, ao_config, filter_fn=lambda m, _fqn: id(m) in chosen, device=device)
    if device is not None:
        model.to(device)
    return QuantizationReport(tuple(targets), tuple(kept))


def refuse_quantized_backbones(model: nn.Module, what: str = "save_backbones=True") -> None:
    """Raise when ``model`` is quantized: its backbones in low-bit form must never replace the originals."""
    if is_quantized(model):
        raise QuantizationError(
            f"{what} on a quantized model would write the int8/int4 backbone in place of the original: save "
            "without the backbones (adapters and LoRA only), or load the model unquantized to save them"
        )


def quantize_loaded(
    model: nn.Module,
    quantization: QuantizationConfig | str | Mapping[str, Any],
    directory: str | Path,
    device: str | torch.device | None = None,
) -> QuantizationReport:
    """The quantizing step of loading a checkpoint ``directory``: :func:`quantize_backbones`, after which a
    model whose checkpoint held its own backbones names them by path in its config (``lm.name_or_path``, the
    vision weights) with ``backbones_included`` off, so that what it saves (adapters and LoRA only) loads again
    on those original full-precision backbones."""
    report = quantize_backbones(model, quantization, device)
    config = model.config
    if config.backbones_included:
        folder = Path(directory).resolve()
        config.lm = dataclasses.replace(config.lm, name_or_path=str(folder / "lm"), revision=None)
        vision = config.vision
        if vision.kind == "hf":
            config.vision = dataclasses.replace(vision, name=str(folder / "vision"), revision=None)
        elif vision.pretrained:
            config.vision = dataclasses.replace(vision, pretrained=str(folder / "vision" / vision.pretrained))
        config.backbones_included = False
    return report
