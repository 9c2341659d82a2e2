"""bench/bench_train.py's end-to-end rows: both training loops run on the same MMC4-like shards with their own
loaders, and their token counts are consistent with the batches they trained on."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench_train():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_train_under_test", BENCH / "bench_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_end_to_end_counts_real_and_padded_tokens(bench_train, tmp_path):
    pytest.importorskip("open_flamingo")
    pytest.importorskip("skimage")
    args = argparse.Namespace(
        device="cpu",
        size="tiny",
        threads=1,
        e2e_batch=2,
        e2e_warmup=1,
        e2e_steps=2,
        e2e_docs=12,
        e2e_sentences=[2, 6],  # short documents, so that padding and packing show
    )
    rows = bench_train.end_to_end(args, tmp_path)
    by = {row["impl"]: row for row in rows}
    assert set(by) == {"ours", "reference"}
    for row in rows:
        assert row["steps"] == 2 and row["seconds"] > 0
        assert row["samples"] == 2 * 2  # steps x rows per step
        assert 0 < row["real_tokens"] <= row["padded_tokens"] <= row["samples"] * 256
        assert row["real_tokens_per_s"] == pytest.approx(row["real_tokens"] / row["seconds"])
        assert 0 <= row["padding_share"] < 1
    # The reference pads every row to its 256 tokens; ours trims to the longest row of the batch.
    assert by["reference"]["padded_tokens"] == 2 * 2 * 256
    # Packing several short documents into each row leaves less of it padding than one document per row.
    assert by["ours"]["padding_share"] < by["reference"]["padding_share"]
    assert bench_train.print_e2e(rows) == pytest.approx(
        by["ours"]["real_tokens_per_s"] / by["reference"]["real_tokens_per_s"]
    )
