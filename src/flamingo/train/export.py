"""``flamingo export``: a training checkpoint (``full`` or ``sharded``) as a release checkpoint.

The release checkpoint is the directory :meth:`Flamingo.save_pretrained` writes (``config.json``, the trained
tensors in ``model.safetensors``, the tokenizer, a LoRA in ``lora/``, and the backbones when they have no other
home), which :meth:`Flamingo.from_pretrained`, ``flamingo eval`` and ``flamingo serve`` load.
"""

from __future__ import annotations

from pathlib import Path

from flamingo.errors import MissingFileError
from flamingo.model.flamingo import Flamingo
from flamingo.train import checkpointing as ckpt
from flamingo.train.config import RunConfig, load_config
from flamingo.train.freeze import freeze_backbones


def checkpoint_run_config(checkpoint: Path) -> RunConfig:
    """The run configuration saved in ``checkpoint`` (or, for older checkpoints, its run directory's)."""
    for candidate in (checkpoint / "config.yaml", checkpoint.parent.parent / "config.yaml"):
        if candidate.is_file():
            return load_config(candidate)
    raise MissingFileError(
        f"{checkpoint}: no config.yaml in the checkpoint or its run directory; pass the run's config with --config"
    )


def load_checkpoint_model(
    checkpoint: str | Path, config: RunConfig | None = None, trust_remote_code: bool = False
) -> Flamingo:
    """The model of a training checkpoint, built from the run's configuration and loaded with its tensors."""
    from flamingo.train.trainer import build_model, prepare_lora

    checkpoint = Path(checkpoint)
    if not (checkpoint / "state.json").is_file():
        raise MissingFileError(f"{checkpoint}: not a complete training checkpoint (no state.json inside)")
    config = config or checkpoint_run_config(checkpoint)
    model = build_model(config.model, trust_remote_code)
    prepare_lora(model, config.model.lora, config.train.seed)
    ckpt.check_resume_lora(checkpoint, config.model.lora.enabled)
    # The trained set decides which tensors a sharded checkpoint holds: the same as in training.
    freeze_backbones(model, config.model.train_new_token_rows, train_lora=config.model.lora.enabled)
    if ckpt.checkpoint_format(checkpoint) == "sharded":
        ckpt.load_sharded_state(checkpoint, model, None)
    else:
        ckpt.load_model_weights(model, checkpoint)
    return model.eval()


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    config: RunConfig | None = None,
    trust_remote_code: bool = False,
    save_backbones: bool | None = None,
) -> Path:
    """Write ``checkpoint``'s model to ``out`` in :meth:`Flamingo.save_pretrained`'s layout; returns ``out``.

    ``save_backbones`` None: stored when they have no other home (a tiny model, or a model that came from a
    checkpoint holding its own).
    """
    run_config = config or checkpoint_run_config(Path(checkpoint))
    model = load_checkpoint_model(checkpoint, run_config, trust_remote_code)
    if save_backbones is None:
        save_backbones = run_config.model.kind == "tiny" or model.config.backbones_included
    model.save_pretrained(str(out), save_backbones=save_backbones)
    return Path(out)
