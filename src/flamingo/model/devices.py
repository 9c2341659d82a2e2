"""Where a model runs and in what precision: the one place that turns ``--device``, ``--dtype`` and
``--device-map`` (or the same Python arguments) into torch devices, dtypes and device maps.

Every command and every loader resolves these through the functions here, so ``auto`` means the same
everywhere: CUDA when a GPU is visible, else the CPU; and, when no dtype is asked for, float32 on the CPU and the
checkpoint's own dtype on an accelerator. Importing this module loads no torch (the command modules add their
flags from here and must start at once).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flamingo.errors import UsageError

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "bfloat16", "float16")
"""The dtypes a model can be loaded in, by the name ``--dtype`` takes (torch's names)."""
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
"""``device_map`` values that ask ``accelerate`` to plan a split over the devices (see flamingo.model.dispatch)."""


def resolve_device(device: str | int | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): ``cuda`` when a GPU is visible, else ``cpu``; an int is a GPU index; any other name is
    taken as torch spells it (``cpu``, ``cuda``, ``cuda:1``, ``mps``). Raises :class:`UsageError` for a name torch
    does not know or a CUDA device that is not there."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        resolved = device
    else:
        try:
            resolved = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        except (RuntimeError, ValueError) as err:
            raise UsageError(
                f"--device {device!r}: not a device name; use auto, cpu, cuda or cuda:N"
            ) from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is visible here; use --device cpu (or auto)")
    return resolved


def resolve_dtype(
    dtype: str | torch.dtype | None, device: str | int | torch.device | None = "cpu"
) -> torch.dtype | None:
    """A torch dtype from a name (``float32``/``bfloat16``/``float16``, or ``fp32``/``bf16``/``fp16``) or a dtype.

    ``None`` or ``auto`` gives float32 when ``device`` is the CPU (bfloat16 and float16 matmuls are slow there)
    and None elsewhere, meaning "the checkpoint's own dtype". Raises :class:`UsageError` for other names.
    """
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.float32 if resolve_device(device).type == "cpu" else None
    name = _DTYPE_ALIASES.get(str(dtype), str(dtype)).removeprefix("torch.")
    if name not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: use auto, {', '.join(DTYPES)}")
    return getattr(torch, name)


def is_split_map(device_map: Any) -> bool:
    """Whether ``device_map`` spreads the model over devices (a strategy or a dict), rather than naming one."""
    return isinstance(device_map, Mapping) or (isinstance(device_map, str) and device_map in MAP_STRATEGIES)


def parse_device_map(text: str | None) -> str | dict[str, int | str] | None:
    """``--device-map``: a strategy (``auto``, ``balanced``, ``balanced_low_0``, ``sequential``), one device
    (``cpu``, ``cuda:0``), a JSON object (``{"vision": 0, "lm.model.layers.20": "cpu"}``) or a ``.json`` file
    holding one. GPU indices may be written as numbers or digit strings."""
    if text is None:
        return None
    text = text.strip()
    if not text.startswith("{") and not text.endswith(".json"):
        return text
    where = "--device-map"
    if not text.startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise UsageError(f"--device-map {text}: no such file; give a JSON object or a .json file")
        text, where = path.read_text(encoding="utf-8"), f"--device-map {path}"
    try:
        data = json.loads(text)
    except ValueError as err:
        raise UsageError(f'{where}: not valid JSON ({err}); write it like {{"vision": 0}}') from err
    if not isinstance(data, dict) or not all(isinstance(v, int | str) for v in data.values()):
        raise UsageError(f"{where}: expected a JSON object of module name -> GPU index, 'cpu' or 'disk'")
    return {str(k): int(v) if isinstance(v, str) and v.isdigit() else v for k, v in data.items()}


def add_device_arguments(
    parser: argparse.ArgumentParser,
    device_map: bool = True,
    dtype: bool = True,
    device_default: str | None = "auto",
    dtype_default: str | None = "auto",
    quantize: bool = False,
) -> None:
    """Add ``--device`` (and ``--dtype``, ``--device-map``, ``--quantize``) with the same names, defaults and help
    everywhere."""
    parser.add_argument(
        "--device",
        default=device_default,
        help="where the model runs: auto (CUDA when a GPU is visible, else CPU; the default), cpu, cuda, cuda:N",
    )
    if dtype:
        parser.add_argument(
            "--dtype",
            default=dtype_default,
            choices=["auto", *DTYPES],
            help="weights' dtype: auto (the default: float32 on CPU, the checkpoint's own on a GPU), float32, "
            "bfloat16 or float16",
        )
    if device_map:
        parser.add_argument(
            "--device-map",
            default=None,
            help="split a model too large for one device: auto, balanced, balanced_low_0 or sequential (planned "
            "over the visible GPUs, then CPU RAM), or a JSON object / .json file of module name -> device "
            "(instead of --device)",
        )
    if quantize:
        parser.add_argument(
            "--quantize",
            choices=["int8", "int4"],
            default=None,
            help="store the frozen LM's linear layers in int8 or int4 (weight-only, torchao; the quantize extra)",
        )


def device_options(args: argparse.Namespace) -> dict[str, Any]:
    """``device``, ``dtype``, ``device_map`` and ``quantization`` keywords for the loaders from parsed
    :func:`add_device_arguments`."""
    return {
        "device": args.device,
        "dtype": getattr(args, "dtype", None),
        "device_map": parse_device_map(getattr(args, "device_map", None)),
        "quantization": getattr(args, "quantize", None),
    }


__all__ = [
    "DTYPES",
    "MAP_STRATEGIES",
    "add_device_arguments",
    "device_options",
    "is_split_map",
    "parse_device_map",
    "resolve_device",
    "resolve_dtype",
]
