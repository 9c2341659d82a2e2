"""Reading and publishing model files safely: safetensors reads that name a damaged file, and fsync before a
rename makes a checkpoint visible.

Low in the layering (it imports only torch and safetensors) so both ``flamingo.model`` and ``flamingo.train``
use it.
"""

from __future__ import annotations

import os
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
