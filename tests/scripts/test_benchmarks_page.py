"""docs/benchmarks.md is generated from bench/results/*.json: the committed page must equal a fresh render, a
new run must show up as the latest, and a results file no renderer knows must fail loudly."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


page = _load("make_benchmarks_page")
results_log = _load("results_log")


def test_the_committed_page_is_up_to_date():
    assert (ROOT / "docs" / "benchmarks.md").read_text() == page.render(), (
        "docs/benchmarks.md is out of date: run python bench/make_benchmarks_page.py"
    )
    assert page.main(["--check"]) == 0


def test_every_results_file_is_on_the_page_with_its_latest_run():
    text = page.render()
    for path in sorted((ROOT / "bench" / "results").glob("*.json")):
        runs = json.loads(path.read_text())["runs"]
        # The page's rule: the newest date, and of runs on the same date the one recorded last.
        latest = max(enumerate(runs), key=lambda pair: (pair[1]["date"], pair[0]))[1]
        assert latest["command"] in text, path.name
        assert f"Latest run: {latest['date']} on" in text


def test_a_new_run_becomes_the_latest_table(tmp_path, monkeypatch):
    source = ROOT / "bench" / "results" / "model_cpu_tiny.json"
    (tmp_path / source.name).write_text(source.read_text())
    before = page.render(tmp_path)
    recorded = json.loads(source.read_text())["runs"]
    newer = copy.deepcopy(recorded[-1])
    for key in ("date", "cpu", "command", "provenance"):
        newer.pop(key, None)
    newer["rows"][0]["ours_s"] = 0.123456
    newer["rows"][0]["speedup"] = 4.0
    monkeypatch.setattr(sys, "argv", [str(ROOT / "bench" / "bench_model.py"), "--size", "tiny"])
    run = results_log.record(tmp_path / source.name, newer)
    assert run["command"] == "python bench/bench_model.py --size tiny" and run["cpu"] and run["date"]
    runs = json.loads((tmp_path / source.name).read_text())["runs"]
    assert len(runs) == len(recorded) + 1 and runs[-1]["rows"][0]["ours_s"] == 0.123456
    after = page.render(tmp_path)
    assert after != before
    reference_s = newer["rows"][0]["reference_s"]
    assert f"| training step | {reference_s:.3f} s | 0.123 s | 4.00x |" in after
    assert f"{len(recorded)} earlier runs in `model_cpu_tiny.json`" in after
    assert f"Latest run: {run['date']} on {run['cpu']}." in after
    assert "Provenance" not in after  # the new run carries its own date, machine and command


def test_a_results_file_without_a_renderer_is_refused(tmp_path):
    (tmp_path / "mystery_cpu.json").write_text(json.dumps({"runs": [{"date": "2026-01-01"}]}))
    with pytest.raises(ValueError, match=r"mystery_cpu.json: no renderer for benchmark 'mystery'"):
        page.render(tmp_path)
