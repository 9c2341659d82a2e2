"""``flamingo eval --quantize``: a checkpoint evaluated with int8 / int4 backbones records how it was loaded."""

from __future__ import annotations

import json

import pytest
from test_eval_end_to_end import save_tiny_model, write_benchmark_data

from flamingo.cli import main


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantized")
    return str(write_benchmark_data(root / "data")), save_tiny_model(root / "model")


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_eval_with_quantized_backbones_runs_and_records_the_mode(bench, tmp_path, mode):
    data, model = bench
    out = tmp_path / "eval"
    argv = ["eval", "--model", model, "--tasks", "coco,vqav2", "--data-root", data, "--shots", "2"]
    argv += ["--seeds", "42,", "--num-samples", "2", "--query-set-size", "4", "--out", str(out)]
    assert main([*argv, "--no-progress", "--quantize", mode]) == 0
    for task in ("coco", "vqav2"):
        results = json.loads((out / task / "results.json").read_text())
        assert results["settings"]["quantization"] == {
            "mode": mode,
            "group_size": 32,
            "include_vision": False,
        }
        assert results["scores"]["2"]["num_examples"] == {"42": 2}
    if mode == "int8":  # without --quantize the record says so
        plain = tmp_path / "plain"
        argv[argv.index(str(out))] = str(plain)
        assert main([*argv, "--no-progress"]) == 0
        assert json.loads((plain / "coco" / "results.json").read_text())["settings"]["quantization"] is None
