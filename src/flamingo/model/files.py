"""Reading and publishing model files safely: safetensors reads that name a damaged file, and fsync before a
rename makes a checkpoint visible.

Low in the layering (it imports only torch and safetensors) so both ``flamingo.model`` and ``flamingo.train``
use it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from flamingo.errors import FlamingoError


class ModelFileError(FlamingoError, ValueError):
    """A model or checkpoint file cannot be read; the message names the file and what to do."""


def _damaged(path: Path, error: Exception) -> ModelFileError:
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    return ModelFileError(f"{path} is truncated or corrupt ({detail}); re-download or re-save it")


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file on the CPU; a damaged file raises :class:`ModelFileError` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise _damaged(path, error) from error


def load_torch_file(path: str | Path) -> Any:
    """A plain tensor/container file written by ``torch.save`` (optimizer and RNG states), read with
    ``weights_only=True``; a damaged file raises :class:`ModelFileError` naming it."""
    import pickle
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as error:
        # a cut zip archive surfaces as any of these, depending on where the cut falls
        raise _damaged(path, error) from error


def load_weights_file(path: str | Path) -> Any:
    """The contents of a weights file: ``.safetensors`` through :func:`load_safetensors`, anything else through
    ``torch.load(weights_only=True)``. A file that would need pickled code to load (a TorchScript archive is
    one) is refused, and a cut one named, each as one :class:`ModelFileError`."""
    import pickle
    import zipfile

    path = Path(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, zipfile.BadZipFile) as error:
        raise _damaged(path, error) from error
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as error:
        raise ModelFileError(
            f"{path}: refused to load, it is not a plain tensor file (loading it would run pickled code, which "
            f"flamingo-vlm never does; a TorchScript archive is one): {str(error).splitlines()[0]}"
        ) from error


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def safetensors_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a safetensors file: name -> ``{"dtype", "shape", "data_offsets"}`` (``__metadata__``
    dropped). Reads only the header; a damaged one raises :class:`ModelFileError` naming ``path``."""
    import json

    path = Path(path)
    try:
        with open(path, "rb") as file:
            size = int.from_bytes(file.read(8), "little")
            header = json.loads(file.read(size))
    except (OSError, ValueError) as error:
        raise _damaged(path, error) from error
    header.pop("__metadata__", None)
    return header


def read_safetensors(
    path: str | Path,
    names: Iterable[str],
    device_of: Callable[[str], torch.device],
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors ``names`` of a safetensors file, each read straight onto ``device_of(name)``, floating ones
    cast to ``dtype`` (None: as stored).

    Each tensor is read with plain file reads into memory allocated for it, not through a memory map: mapped file
    pages count in a process's resident memory until the map closes, so a memory-mapped read of a large file
    holds the file and the tensors at once. Here the only extra memory is one tensor's staging buffer (for a
    GPU target or a cast). Call :func:`check_safetensors` first to name a damaged file.
    """
    path = Path(path)
    header = safetensors_header(path)
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb") as file:
        start = 8 + int.from_bytes(file.read(8), "little")
        for name in names:
            entry = header[name]
            begin, end = entry["data_offsets"]
            tensor = torch.empty(entry["shape"], dtype=_SAFETENSORS_DTYPES[entry["dtype"]])
            file.seek(start + begin)
            if (
                tensor.numel()
                and file.readinto(memoryview(tensor.view(-1).view(torch.uint8).numpy())) != end - begin
            ):
                raise _damaged(path, EOFError(f"tensor {name} is cut short"))
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            out[name] = tensor.to(device_of(name))
    return out


def check_safetensors(path: str | Path) -> None:
    """Raise :class:`ModelFileError` naming ``path`` when its header is damaged or the file is shorter than the
    header says. Reads only the header (the tensors are memory-mapped, not loaded)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as error:
        raise _damaged(path, error) from error


def check_safetensors_dir(directory: str | Path) -> None:
    """:func:`check_safetensors` on every ``*.safetensors`` file directly inside ``directory`` (a saved
    Hugging Face model folder), so a damaged file is named before ``transformers`` reports it without a path."""
    directory = Path(directory)
    if directory.is_dir():
        for path in sorted(directory.glob("*.safetensors")):
            check_safetensors(path)


def fsync_tree(root: str | Path) -> None:
    """Flush every file under ``root`` to disk, then every directory (deepest first), then ``root`` itself.

    Call it before the rename that publishes ``root``: without it a power cut soon after the rename can leave a
    directory whose name says "complete" holding empty or partial files.
    """
    root = Path(root)
    directories = [root]
    for current, subdirs, files in os.walk(root):
        for name in files:
            _fsync_path(Path(current) / name, directory=False)
        directories.extend(Path(current) / d for d in subdirs)
    for directory in sorted(directories, key=lambda p: len(p.parts), reverse=True):
        _fsync_path(directory, directory=True)


def fsync_dir(directory: str | Path) -> None:
    """Flush a directory's entries (a rename or a new file inside it) to disk."""
    _fsync_path(Path(directory), directory=True)


def _fsync_path(path: Path, directory: bool) -> None:
    if directory and os.name == "nt":  # Windows cannot open a directory to flush it
        return
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
