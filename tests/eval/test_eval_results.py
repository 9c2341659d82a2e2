"""results.json / predictions.jsonl, rescoring from predictions alone, and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from flamingo.eval.metrics import roc_auc, vqa_accuracy
from flamingo.eval.results import (
    PredictionRecord,
    load_published,
    markdown_report,
    read_predictions,
    report,
    rescore,
    write_results,
)
from flamingo.eval.tasks import load_task

ANSWERS = [["red"] * 10, ["2"] * 6 + ["3"] * 4, ["yes"] * 2 + ["no"] * 8, ["cat"] + ["dog"] * 9]


def _vqa_records() -> list[PredictionRecord]:
    rng = np.random.default_rng(0)
    records = []
    for shots in (0, 4):
        for seed in (42, 43, 44):
            for i, answers in enumerate(ANSWERS):
                raw = str(rng.choice(["red", "two", "yes", "cat", "blue"])) + " Question: x"
                records.append(
                    PredictionRecord(
                        str(i), seed, shots, [f"d{seed}"] * shots, raw, raw.split(" ")[0], answers
                    )
                )
    return records


def test_results_and_predictions_round_trip_and_rescore_reproduces_the_scores(tmp_path):
    task, records = load_task("vqav2"), _vqa_records()
    results = write_results(
        tmp_path,
        task,
        records,
        model={"checkpoint": "ckpt/"},
        data={"root": "/data"},
        timings={"total_s": 1.5},
    )
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["scores"] == results["scores"]
    assert read_predictions(tmp_path / "predictions.jsonl") == records
    assert rescore(tmp_path / "predictions.jsonl", "vqav2")["scores"] == results["scores"]
    # The scores are the metric per (shots, seed), then mean and std over seeds.
    per_seed = [
        vqa_accuracy([r.processed_output for r in records if r.shots == 4 and r.seed == s], ANSWERS)
        for s in (42, 43, 44)
    ]
    assert results["scores"]["4"]["per_seed"] == {"42": per_seed[0], "43": per_seed[1], "44": per_seed[2]}
    assert results["scores"]["4"]["mean"] == pytest.approx(np.mean(per_seed))
    assert results["scores"]["4"]["std"] == pytest.approx(np.std(per_seed))
    assert on_disk["model"] == {"checkpoint": "ckpt/"} and on_disk["timings"] == {"total_s": 1.5}
    assert {"python", "torch", "transformers", "flamingo"} <= set(on_disk["versions"])
    assert on_disk["task_settings"]["decoding"]["num_beams"] == 3


def test_rescoring_roc_auc_uses_the_positive_class(tmp_path):
    task = load_task("hateful_memes")
    labels = ["yes", "no", "yes", "no", "no"]
    probs = [0.9, 0.2, 0.4, 0.4, 0.1]
    records = [
        PredictionRecord(str(i), 0, 4, [], {"no": 1 - p, "yes": p}, p, [label])
        for i, (p, label) in enumerate(zip(probs, labels))
    ]
    results = write_results(tmp_path, task, records, model={}, data={})
    expected = 100 * roc_auc(probs, [int(label == "yes") for label in labels])
    assert results["scores"]["4"]["mean"] == pytest.approx(expected)
    assert rescore(tmp_path / "predictions.jsonl", task)["scores"] == results["scores"]


def test_published_numbers_are_the_papers_table():
    published = load_published()
    assert published["shots"] == [0, 4, 8, 16, 32]
    assert published["tasks"]["coco"]["OpenFlamingo-9B"] == [79.5, 89.0, 96.3, 98.8, 99.5]
    assert published["tasks"]["hateful_memes"]["Flamingo-9B"][0] == 57.0
    assert len(published["tasks"]) == 7


def test_report_writes_a_markdown_table_and_a_png(tmp_path):
    records = _vqa_records()
    results = write_results(tmp_path / "run", load_task("vqav2"), records, model={}, data={})
    files = report([results], tmp_path / "report", label="tiny")
    text = files["markdown"].read_text()
    assert "| tiny |" in text and "| OpenFlamingo-3B | 44.6 | 45.8 | 46.2 | 46.6 | 47.0 |" in text
    assert f"{results['scores']['0']['mean']:.1f} ± " in markdown_report([results])
    with Image.open(files["png"]) as image:
        assert image.size[0] > 100


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 6, 7, 8])
def test_report_plot_is_a_grid_with_one_legend(count):
    import matplotlib.pyplot as plt

    from flamingo.eval.results import report_figure

    tasks = ["coco", "flickr30k", "vqav2", "okvqa", "textvqa", "vizwiz", "hateful_memes", "imagenet"]
    base = {"metric": "m", "scores": {"0": {"mean": 1.0, "std": 0.1}, "4": {"mean": 2.0, "std": 0.1}}}
    fig = report_figure([{**base, "task": t} for t in tasks[:count]], label="tiny")
    try:
        visible = [ax for ax in fig.axes if ax.get_visible()]
        assert [ax.get_title() for ax in visible] == tasks[:count]
        columns = len({round(ax.get_position().x0, 3) for ax in visible})
        rows = len({round(ax.get_position().y0, 3) for ax in visible})
        assert columns <= 4 and rows <= 2 and rows * columns < count + columns  # no empty row
        width, height = fig.get_size_inches()
        assert width / columns >= 3.0 and height / rows >= 2.5  # panels stay readable
        # One legend, for the whole figure, naming each model once; none inside a panel.
        assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
        labels = [text.get_text() for text in fig.legends[0].get_texts()]
        assert labels[0] == "tiny" and len(labels) == len(set(labels))
        assert ("OpenFlamingo-3B" in labels) == (count >= 1)  # coco has published numbers
        # The legend sits below every panel.
        legend_top = fig.legends[0].get_window_extent(fig.canvas.get_renderer()).y1
        renderer = fig.canvas.get_renderer()
        assert all(ax.get_tightbbox(renderer).y0 >= legend_top - 1 for ax in visible)  # labels included
    finally:
        plt.close(fig)
