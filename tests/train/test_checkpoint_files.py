"""Training checkpoints reach the disk before they are published, a damaged one is named on resume, and a
config file cannot allow a model's own code to run."""

import os
import re
from pathlib import Path

import pytest
import torch
from train_support import TINY_PRESET, tiny_config

from flamingo.model.files import ModelFileError
from flamingo.model.tiny import build_tiny_flamingo
from flamingo.train import checkpointing as ckpt
from flamingo.train.config import ConfigError, load_config
from flamingo.train.parallel import DistInfo


def _save(run_dir: Path, step: int = 1) -> Path:
    model = build_tiny_flamingo("llama", seed=step)
    optimizer = torch.optim.AdamW([p for _, p in model.adapter_parameters()], lr=1e-3)
    return ckpt.save_checkpoint(
        run_dir, step, model, model, optimizer, {"skipped_steps": 0}, {"data": {}}, DistInfo(), 2, False
    )


def test_every_file_and_folder_is_synced_before_the_rename_and_the_rename_after(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst, *args, **kwargs):
        events.append(("rename", str(src)))
        real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    final = _save(tmp_path / "run")
    tmp = final.with_name(f".tmp-{final.name}")
    published = [i for i, (kind, path) in enumerate(events) if kind == "rename" and path == str(tmp)]
    assert len(published) == 1
    before = {path for kind, path in events[: published[0]] if kind == "fsync"}
    expected = {str(tmp / p.relative_to(final)) for p in final.rglob("*")} | {str(tmp)}
    assert any(p.endswith("model.safetensors") for p in expected) and expected <= before, expected - before
    after = {path for kind, path in events[published[0] :] if kind == "fsync"}
    assert str(final.parent) in after


def test_a_truncated_checkpoint_is_named_on_resume(tmp_path):
    final = _save(tmp_path / "run")
    weights = final / "model" / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    model = build_tiny_flamingo("llama")
    with pytest.raises(
        ModelFileError, match=f"^{re.escape(str(weights))} is truncated or corrupt.*re-download or re-save it"
    ):
        ckpt.load_model_weights(model, final)


def test_a_truncated_optimizer_state_is_named_on_resume(tmp_path):
    final = _save(tmp_path / "run")
    state = final / "optimizer.pt"
    with open(state, "r+b") as f:
        f.truncate(state.stat().st_size // 2)
    model = build_tiny_flamingo("llama")
    optimizer = torch.optim.AdamW([p for _, p in model.adapter_parameters()], lr=1e-3)
    with pytest.raises(ModelFileError, match=f"^{re.escape(str(state))} is truncated or corrupt"):
        ckpt.load_training_state(final, model, optimizer, DistInfo())


def test_a_config_cannot_allow_remote_code(tmp_path):
    text = TINY_PRESET.read_text().replace("  kind: tiny\n", "  kind: tiny\n  trust_remote_code: true\n")
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(
        ConfigError, match=r"'model\.trust_remote_code' cannot be set in a config.*--trust-remote-code"
    ):
        load_config(path)
    with pytest.raises(ConfigError, match=r"'trust_remote_code' cannot be set in a config"):
        tiny_config(tmp_path, "trust_remote_code=true")
