"""Resumable checkpoints, written atomically: ``<run_dir>/checkpoints/step-000100/``.

Two formats (``checkpoint.format``). ``full``, gathered on rank 0::

    model/             the trained weights in Flamingo.save_pretrained's layout (Flamingo.from_pretrained loads it)
    model/lora/        the LM's LoRA when it has one (a PEFT adapter directory; flamingo.model.lora loads it)
    lora/              instead, with model.lora.merge_on_save: model/lm/ holds the LM with the LoRA folded in,
                       and the unmerged LoRA stays here for resuming
    optimizer.pt       full (unsharded) optimizer state, keyed by parameter name

``sharded``, written by every rank in parallel with ``torch.distributed.checkpoint`` (no gather)::

    state/             the trained tensors (``model.*``) and the optimizer state (``optim.*``), keyed by parameter
                       name: ``.metadata`` and one ``__<rank>_0.distcp`` file per rank with that rank's shards

and, in both::

    rank-00000.pt      each rank's data streams' positions (see flamingo.train.data_streams) and RNG states
    config.yaml        the run's configuration (what ``flamingo export`` rebuilds the model from)
    state.json         step, counters, world size, number of data streams, format

Everything goes to a hidden temporary folder first, flushed to disk (every file, then every folder) and renamed
into place when complete, then the rename itself is flushed: a run killed at any moment, or a machine that loses
power, leaves either the whole checkpoint or none. A sharded checkpoint can be written in the background
(``checkpoint.async_save``); it is renamed into place once every rank has finished writing. The last
``keep_last`` are kept. Both formats resume on any number of ranks: the optimizer state is keyed by parameter
name (``torch.distributed.checkpoint`` reshards ``state/`` on loading) and the data position by stream.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from flamingo.distributed import DistInfo, barrier
from flamingo.errors import MissingFileError
from flamingo.model.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_adapter_state
from flamingo.model.files import fsync_dir, fsync_tree, load_safetensors, load_torch_file
from flamingo.model.flamingo import Flamingo
from flamingo.model.lora import LORA_DIR, has_lora, lm_without_lora, load_lora, lora_state_dict, save_lora
from flamingo.train.config import RunConfig

_STEP_DIR = re.compile(r"^step-(\d+)$")
SHARDED_DIR = "state"
"""Folder of a sharded checkpoint written by torch.distributed.checkpoint."""


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = checkpoints_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found) if (p / "state.json").is_file()]


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """``auto``: the latest checkpoint of ``run_dir`` (None when there is none); a path: that checkpoint."""
    if resume is None:
        return None
    if resume == "auto":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise MissingFileError(f"--resume {resume}: not a complete checkpoint (no state.json inside)")
    return path


def _gathered(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {}
    for name, tensor in tensors.items():
        full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
        state[name] = full.detach().to("cpu", copy=True).contiguous()
    return state


def gather_adapter_state(model: Flamingo) -> dict[str, torch.Tensor]:
    """Full CPU copies of the trained tensors; under FSDP2 every rank must call it (it all-gathers)."""
    return _gathered(model.adapter_state_dict())


def gather_lora_state(model: Flamingo) -> dict[str, torch.Tensor]:
    """Full CPU copies of the LM's LoRA tensors ({} without LoRA); collective under FSDP2 like the above."""
    return _gathered(lora_state_dict(model))


def write_model_dir(
    model: Flamingo,
    state: dict[str, torch.Tensor],
    directory: Path,
    backbones: bool,
    lora: dict[str, torch.Tensor] | None = None,
    merge_lora: bool = False,
) -> None:
    """``directory`` in the layout of :meth:`Flamingo.save_pretrained`, from gathered ``state``.

    With a LoRA (gathered ``lora``): the saved LM backbone is the LM without it (``lm/`` stays a plain
    Hugging Face model) and the LoRA goes to ``lora/``; or, with ``merge_lora``, ``lm/`` holds the LM with the
    LoRA folded into its weights, which plain ``Flamingo.from_pretrained`` loads.
    """
    sharded = any(hasattr(t, "full_tensor") for t in model.adapter_state_dict().values())
    if lora and merge_lora and (sharded or not backbones):
        raise ValueError(
            "model.lora.merge_on_save needs the backbones saved whole: set checkpoint.save_backbones=true "
            "(not possible under FSDP)"
        )
    if not sharded:
        with lm_without_lora(model, merge=bool(lora) and merge_lora):
            model.save_pretrained(str(directory), save_backbones=backbones)
        if lora and not merge_lora:
            save_lora(model, directory, lora)
        return
    if backbones:
        raise ValueError("checkpoint.save_backbones needs unsharded backbones; set it false under FSDP")
    if lora:
        save_lora(model, directory, lora)
    directory.mkdir(parents=True, exist_ok=True)  # the same files save_pretrained writes without backbones
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "flamingo", "version": "1"})
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(directory / "tokenizer")
    model.config.save(directory / CONFIG_NAME)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = (kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss)
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _optimizer_state(train_model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(train_model, optimizer, options=options)


def _begin(run_dir: str | Path, step: int, info: DistInfo) -> tuple[Path, Path]:
    """(final directory, fresh temporary directory) of checkpoint ``step``; collective."""
    final = checkpoints_dir(run_dir) / f"step-{step:06d}"
    tmp = final.with_name(f".tmp-{final.name}")
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(info)
    return final, tmp


def _write_small_files(
    tmp: Path,
    shared: dict[str, Any],
    per_rank: dict[str, Any],
    info: DistInfo,
    run_config: RunConfig | None,
) -> None:
    """This rank's file (data positions and RNG states); on rank 0 also state.json and config.yaml."""
    torch.save({**per_rank, "rng": rng_state()}, tmp / f"rank-{info.rank:05d}.pt")
    if info.is_main:
        if run_config is not None:
            run_config.save(tmp / "config.yaml")
        (tmp / "state.json").write_text(json.dumps({**shared, "world_size": info.world_size}, indent=2))


def _publish(final: Path, tmp: Path, run_dir: str | Path, info: DistInfo, keep_last: int) -> None:
    """Rename the finished temporary folder into place (collective: every rank has written its files)."""
    barrier(info)
    if info.is_main:
        fsync_tree(tmp)  # the data must be on disk before the name that says "complete" is
        shutil.rmtree(final, ignore_errors=True)  # the same step saved again after a resume
        tmp.rename(final)
        fsync_dir(final.parent)
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(info)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: Flamingo,
    train_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    shared: dict[str, Any],
    per_rank: dict[str, Any],
    info: DistInfo,
    keep_last: int,
    save_backbones: bool,
    merge_lora: bool = False,
    run_config: RunConfig | None = None,
) -> Path:
    """Write checkpoint ``step`` in the ``full`` format (collective: every rank calls it); returns its directory."""
    final, tmp = _begin(run_dir, step, info)
    adapters = gather_adapter_state(model)
    lora = gather_lora_state(model)
    optim_state = _optimizer_state(train_model, optimizer)
    _write_small_files(tmp, {**shared, "step": step, "format": "full"}, per_rank, info, run_config)
    if info.is_main:
        write_model_dir(model, adapters, tmp / "model", save_backbones, lora, merge_lora)
        if lora and merge_lora:  # model/ has it folded in; resuming needs the factors
            save_lora(model, tmp, lora)
        torch.save(optim_state, tmp / "optimizer.pt")
    _publish(final, tmp, run_dir, info, keep_last)
    return final


def trained_state(train_model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """``{"model": trained tensors[, "optim": optimizer state]}`` keyed by parameter name, each rank's shards
    as DTensors under FSDP2 (nothing gathered): what ``state/`` of a sharded checkpoint holds."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(ignore_frozen_params=True)
    state = {"model": get_model_state_dict(train_model, options=options)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(train_model, optimizer, options=options)
    return state


class PendingCheckpoint:
    """A sharded checkpoint being written (in the background with ``checkpoint.async_save``).

    :meth:`done` says whether this rank's writing has finished; :meth:`publish` (collective) waits for it and
    renames the checkpoint into place.
    """

    def __init__(
        self, final: Path, tmp: Path, future: Any, run_dir: str | Path, info: DistInfo, keep_last: int
    ):
        self.path, self.tmp, self.future = final, tmp, future
        self.run_dir, self.info, self.keep_last = run_dir, info, keep_last

    def done(self) -> bool:
        return self.future is None or self.future.done()

    def publish(self) -> Path:
        if self.future is not None:
            self.future.result()  # re-raises a failed write
            self.future = None
        _publish(self.path, self.tmp, self.run_dir, self.info, self.keep_last)
        return self.path


def save_sharded_checkpoint(
    run_dir: str | Path,
    step: int,
    train_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    shared: dict[str, Any],
    per_rank: dict[str, Any],
    info: DistInfo,
    keep_last: int,
    run_config: RunConfig | None = None,
    background_group: Any = None,
    asynchronous: bool = False,
) -> PendingCheckpoint:
    """Write checkpoint ``step`` in the ``sharded`` format (collective); published on return unless
    ``asynchronous``, in which case the caller publishes the returned :class:`PendingCheckpoint` later.

    ``background_group``: a gloo process group used only by the background writer, so that its collectives
    never interleave with the training step's on the default group.
    """
    import torch.distributed.checkpoint as dcp

    final, tmp = _begin(run_dir, step, info)
    _write_small_files(tmp, {**shared, "step": step, "format": "sharded"}, per_rank, info, run_config)
    state = trained_state(train_model, optimizer)
    if asynchronous:
        # Staging copies the tensors before async_save returns: the next optimizer step cannot change them.
        future = dcp.async_save(state, checkpoint_id=str(tmp / SHARDED_DIR), process_group=background_group)
        return PendingCheckpoint(final, tmp, future, run_dir, info, keep_last)
    dcp.save(state, checkpoint_id=str(tmp / SHARDED_DIR))
    pending = PendingCheckpoint(final, tmp, None, run_dir, info, keep_last)
    pending.publish()
    return pending


def checkpoint_format(checkpoint: Path) -> str:
    """``full`` or ``sharded`` (checkpoints from before the sharded format are ``full``)."""
    return "sharded" if (checkpoint / SHARDED_DIR / ".metadata").is_file() else "full"


def load_sharded_state(
    checkpoint: Path, train_model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> None:
    """Load ``state/`` into ``train_model`` (sharded or not, any number of ranks) and ``optimizer``; collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state = trained_state(train_model, optimizer)
    dcp.load(state, checkpoint_id=str(checkpoint / SHARDED_DIR))
    options = StateDictOptions(ignore_frozen_params=True, strict=False)
    set_model_state_dict(train_model, state["model"], options=options)
    if optimizer is not None:
        set_optimizer_state_dict(train_model, optimizer, state["optim"], options=options)


def load_model_weights(model: Flamingo, checkpoint: Path) -> None:
    """Load a checkpoint's trained weights (and LoRA) into an unwrapped, unsharded model (before parallelize)."""
    file = checkpoint / "model" / WEIGHTS_NAME
    load_adapter_state(model, load_safetensors(file), str(file))
    saved_lora = next((d for d in (checkpoint / "model", checkpoint) if (d / LORA_DIR).is_dir()), None)
    if saved_lora is not None:
        load_lora(model, saved_lora)
    elif has_lora(model):
        raise ValueError(f"{checkpoint} has no LoRA for this model's LoRA layers (lora/ is missing)")


def check_resume_lora(checkpoint: Path, lora_enabled: bool) -> None:
    """Resuming needs the same ``model.lora.enabled``: the optimizer state covers exactly what trained."""
    trained = json.loads((checkpoint / "state.json").read_text()).get("lora_trained", False)
    if trained != lora_enabled:
        raise ValueError(
            f"{checkpoint} was trained {'with' if trained else 'without'} LoRA: resume with "
            f"model.lora.enabled={'true' if trained else 'false'}"
        )


def read_data_streams(checkpoint: Path, world_size: int) -> dict[int, dict[str, Any]]:
    """``{stream: {source: position}}`` of every data stream, from all ranks' files.

    Checkpoints written before data streams hold each rank's positions as ``data``: stream ``rank``.
    """
    streams: dict[int, dict[str, Any]] = {}
    for rank in range(world_size):
        saved = load_torch_file(checkpoint / f"rank-{rank:05d}.pt")
        if "streams" in saved:
            for stream, state in saved["streams"].items():
                streams.setdefault(int(stream), {}).update(state)
        else:
            streams[rank] = saved["data"]
    return streams


def load_training_state(
    checkpoint: Path, train_model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo
) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """Restore the optimizer (and, for a sharded checkpoint, the trained tensors) and this rank's RNG states.

    Returns (shared state, every data stream's position). Any number of ranks may resume: the tensors are keyed
    by parameter name, the data position by stream. A rank the saving run did not have keeps the RNG state the
    seed gave it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    shared = json.loads((checkpoint / "state.json").read_text())
    shared.setdefault("data_streams", shared["world_size"])
    if checkpoint_format(checkpoint) == "sharded":
        load_sharded_state(checkpoint, train_model, optimizer)
    else:
        optim_state = load_torch_file(checkpoint / "optimizer.pt")
        set_optimizer_state_dict(
            train_model, optimizer, optim_state, options=StateDictOptions(full_state_dict=True)
        )
    if info.rank < shared["world_size"]:
        set_rng_state(load_torch_file(checkpoint / f"rank-{info.rank:05d}.pt")["rng"])
    return shared, read_data_streams(checkpoint, shared["world_size"])
