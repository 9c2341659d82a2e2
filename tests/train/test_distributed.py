"""``torchrun`` with two gloo processes: DDP and FSDP2 follow the single-process loss curve of the same global batch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_support import QUIET, TINY_PRESET, read_losses, subprocess_env

from flamingo.cli import main

# One synthetic shard per source (fewer shards than ranks: split by sample), no sample skipped, so the two
# ranks' micro-batches together are exactly the single process's batch.
SAME_DATA = [
    "train.steps=6",
    "checkpoint.every=3",
    "data.synthetic_samples=50",
    "data.sources.0.single_image_drop_prob=0",
    "data.sources.0.max_tokens=192",
]


# LoRA puts trained matrices inside the decoder layers: FSDP2 units that mix frozen and trained parameters.
LORA = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8", "train.lr=1e-2"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    """The trained tensors of step 6: adapters, and the LoRA matrices (``lora:`` keys) when there are any."""
    model = run / "checkpoints" / "step-000006" / "model"
    weights = load_file(str(model / "model.safetensors"))
    if (model / "lora").is_dir():
        weights |= {
            f"lora:{k}": v for k, v in load_file(str(model / "lora" / "adapter_model.safetensors")).items()
        }
    return weights


def _parameter_name(key: str) -> str:
    """The model's parameter name of a saved tensor (a LoRA file names them as PEFT does)."""
    if not key.startswith("lora:"):
        return key
    name = key.removeprefix("lora:base_model.model.")
    return "lm." + re.sub(r"\.(lora_[AB])\.", r".\1.default.", name)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "extra"), [("ddp", []), ("fsdp", []), ("fsdp", LORA)], ids=["ddp", "fsdp", "fsdp-lora"]
)
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, strategy, extra):
    reference = tmp_path / "single"
    single = ["train", "--config", str(TINY_PRESET), f"run_dir={reference}", *QUIET, *SAME_DATA, *extra]
    assert main(single) == 0
    run = tmp_path / strategy
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += [
        "-m",
        "flamingo.cli",
        "train",
        "--config",
        str(TINY_PRESET),
        f"run_dir={run}",
        *QUIET,
        *SAME_DATA,
    ]
    command += ["data.sources.0.batch_size=2", "data.sources.1.batch_size=4", f"parallel.strategy={strategy}"]
    command += extra
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    expected, got = read_losses(reference), read_losses(run)
    assert sorted(got) == list(range(1, 7))
    assert all(abs(got[s] - expected[s]) < 1e-4 for s in expected), (got, expected)
    single, multi = _weights(reference), _weights(run)
    assert all(torch.allclose(single[k], multi[k], atol=1e-5) for k in single)
    # Frozen weights have no optimizer state, sharded or not: the state covers exactly the trained tensors.
    optimizer = torch.load(run / "checkpoints" / "step-000006" / "optimizer.pt", weights_only=True)
    assert set(optimizer["state"]) == {_parameter_name(k) for k in multi}
    assert any(k.startswith("lora:") for k in multi) == bool(extra)
    assert (run / "checkpoints" / "step-000006" / "rank-00001.pt").is_file()


@pytest.mark.slow
def test_multi_node_rendezvous_recipe_matches_one_process(tmp_path):
    """The multi-node recipe of docs/training.md: one torchrun agent per node meeting at a c10d rendezvous endpoint.

    Two agents on this machine stand in for two nodes (one process each); the run must follow the single
    process's loss curve with the same global batch, exactly like the one-node two-process test.
    """
    import socket

    reference = tmp_path / "single"
    assert main(["train", "--config", str(TINY_PRESET), f"run_dir={reference}", *QUIET, *SAME_DATA]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "two-nodes"
    agents = []
    for _ in range(2):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
        command += [
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
            "--rdzv-id",
            "flamingo-test",
        ]
        command += ["-m", "flamingo.cli", "train", "--config", str(TINY_PRESET), f"run_dir={run}", *QUIET]
        command += [*SAME_DATA, "data.sources.0.batch_size=2", "data.sources.1.batch_size=4"]
        agents.append(subprocess.Popen(command, env=subprocess_env(), stderr=subprocess.PIPE, text=True))
    errors = [agent.communicate(timeout=300)[1] for agent in agents]
    assert all(agent.returncode == 0 for agent in agents), errors[0][-3000:] + errors[1][-3000:]
    expected, got = read_losses(reference), read_losses(run)
    assert sorted(got) == list(range(1, 7))
    assert all(abs(got[s] - expected[s]) < 1e-4 for s in expected), (got, expected)


@pytest.mark.slow
def test_the_vision_cache_under_ddp_gives_the_uncached_losses(tmp_path):
    """Each rank keeps its own cache; the frozen encoder is outside DDP's gradient buckets, so ranks may skip it."""
    from flamingo.train.metrics import read_metrics

    # 16 samples per source: each rank sees its 8 documents again from step 5 and its 8 pairs from step 3.
    common = ["train.steps=6", "checkpoint.every=0", "logging.every=1", "data.synthetic_samples=16"]
    common += ["data.sources.0.batch_size=2", "data.sources.1.batch_size=4", "parallel.strategy=ddp"]
    losses = {}
    for name, extra in (("plain", []), ("cached", ["train.vision_cache_mb=16"])):
        run = tmp_path / name
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        command += ["-m", "flamingo.cli", "train", "--config", str(TINY_PRESET), f"run_dir={run}", *QUIET]
        command += [*common, *extra]
        done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        losses[name] = read_losses(run)
    assert sorted(losses["cached"]) == sorted(losses["plain"]) == list(range(1, 7))
    assert all(abs(losses["cached"][s] - losses["plain"][s]) < 1e-5 for s in losses["plain"]), losses
    records = read_metrics(tmp_path / "cached")
    assert records[1]["vision_cache_hit_rate"] == 0.0 and records[6]["vision_cache_hit_rate"] > 0.5
