"""Resumable checkpoints, written atomically: ``<run_dir>/checkpoints/step-000100/``::

    model/             the trained weights in Flamingo.save_pretrained's layout (Flamingo.from_pretrained loads it)
    model/lora/        the LM's LoRA when it has one (a PEFT adapter directory; flamingo.model.lora loads it)
    lora/              instead, with model.lora.merge_on_save: model/lm/ holds the LM with the LoRA folded in,
                       and the unmerged LoRA stays here for resuming
    optimizer.pt       full (unsharded) optimizer state, keyed by parameter name
    rank-00000.pt      each rank's data position and RNG states
    state.json         step, counters, world size: written last

Everything goes to a hidden temporary folder first, flushed to disk (every file, then every folder) and renamed
into place when complete, then the rename itself is flushed: a run killed at any moment, or a machine that loses
power, leaves either the whole checkpoint or none. The last ``keep_last`` are kept.
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

_STEP_DIR = re.compile(r"^step-(\d+)$")


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
) -> Path:
    """Write checkpoint ``step`` (collective: every rank calls it); returns its directory."""
    final = checkpoints_dir(run_dir) / f"step-{step:06d}"
    tmp = final.with_name(f".tmp-{final.name}")
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(info)
    adapters = gather_adapter_state(model)
    lora = gather_lora_state(model)
    optim_state = _optimizer_state(train_model, optimizer)
    torch.save({**per_rank, "rng": rng_state()}, tmp / f"rank-{info.rank:05d}.pt")
    if info.is_main:
        write_model_dir(model, adapters, tmp / "model", save_backbones, lora, merge_lora)
        if lora and merge_lora:  # model/ has it folded in; resuming needs the factors
            save_lora(model, tmp, lora)
        torch.save(optim_state, tmp / "optimizer.pt")
        state = {**shared, "step": step, "world_size": info.world_size}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
    barrier(info)
    if info.is_main:
        fsync_tree(tmp)  # the data must be on disk before the name that says "complete" is
        shutil.rmtree(final, ignore_errors=True)  # the same step saved again after a resume
        tmp.rename(final)
        fsync_dir(final.parent)
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(info)
    return final


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


def load_training_state(
    checkpoint: Path, train_model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore the optimizer and this rank's RNG states; returns (shared state, this rank's state)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    shared = json.loads((checkpoint / "state.json").read_text())
    if shared["world_size"] != info.world_size:
        raise ValueError(
            f"{checkpoint} was written by {shared['world_size']} rank(s), this run has {info.world_size}: "
            "resume with the same number of ranks (the data position is per rank)"
        )
    optim_state = load_torch_file(checkpoint / "optimizer.pt")
    set_optimizer_state_dict(
        train_model, optimizer, optim_state, options=StateDictOptions(full_state_dict=True)
    )
    per_rank = load_torch_file(checkpoint / f"rank-{info.rank:05d}.pt")
    set_rng_state(per_rank.pop("rng"))
    return shared, per_rank
