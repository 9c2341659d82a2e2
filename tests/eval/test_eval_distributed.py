"""Sharding: two gloo processes under torchrun gather exactly the predictions of a single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_eval_end_to_end import save_tiny_model, write_benchmark_data

from flamingo.eval.distributed import dedupe, shard_indices


def test_shards_cover_every_index_once_with_equal_lengths():
    for n, world in [(7, 2), (3, 4), (8, 4), (1, 3)]:
        shards = [shard_indices(n, r, world) for r in range(world)]
        assert len({len(s) for s in shards}) == 1  # equal lengths: ranks stay in step
        assert sorted(set(i for s in shards for i in s)) == list(range(n))
    assert dedupe([(2, "a"), (1, "b"), (2, "c")], key=lambda x: x[0]) == [(1, "b"), (2, "a")]


def _predictions(folder: Path, task: str) -> list[dict]:
    return [json.loads(line) for line in (folder / task / "predictions.jsonl").read_text().splitlines()]


def _cli(nproc: int, out: Path, model: str, data: str) -> None:
    args = [
        "eval",
        "--model",
        model,
        "--tasks",
        "vqav2,hateful_memes",
        "--data-root",
        data,
        "--shots",
        "0,2",
        "--seeds",
        "1",
        "--num-samples",
        "3",
        "--query-set-size",
        "4",
        "--batch-size",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd = (
        [*launcher, "-m", "flamingo.cli", *args]
        if nproc > 1
        else [sys.executable, "-m", "flamingo.cli", *args]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_gloo_processes_equal_one(tmp_path):
    data = str(write_benchmark_data(tmp_path / "data"))
    model = save_tiny_model(tmp_path / "model")
    _cli(1, tmp_path / "single", model, data)
    _cli(2, tmp_path / "sharded", model, data)
    for task in ("vqav2", "hateful_memes"):
        single, sharded = _predictions(tmp_path / "single", task), _predictions(tmp_path / "sharded", task)
        assert len(sharded) == 2 * 3  # 3 examples (odd: one rank pads with a duplicate) x 2 shot counts
        assert sharded == single
        results = json.loads((tmp_path / "sharded" / task / "results.json").read_text())
        assert results["settings"]["world_size"] == 2
        assert (
            results["scores"]
            == json.loads((tmp_path / "single" / task / "results.json").read_text())["scores"]
        )
