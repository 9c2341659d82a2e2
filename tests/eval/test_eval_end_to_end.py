"""Every shipped task end to end through ``flamingo eval`` on a tiny saved model and official-format files.

``write_benchmark_data`` writes a few examples of each benchmark in its official layout (Karpathy JSON, VQA
question/annotation pairs, TextVQA, VizWiz, Hateful Memes JSONL, ImageNet folders with all 1000 wnids);
other test modules import it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from flamingo.cli import main
from flamingo.eval.results import read_predictions, rescore
from flamingo.eval.tasks import list_tasks, load_task

ALL_TASKS = ("coco", "flickr30k", "vqav2", "okvqa", "textvqa", "vizwiz", "hateful_memes", "imagenet")
N_TRAIN, N_TEST = 6, 3


def _image(path: Path, index: int) -> str:
    """A small image whose colour depends on ``index`` (so RICES has something to rank)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = ((53 * index) % 256, (97 * index + 40) % 256, (151 * index + 80) % 256)
    Image.new("RGB", (8, 8), colour).save(path)
    return str(path)


def _dump(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _karpathy(root: Path, dataset: str, folder: str) -> None:
    items = []
    for i in range(N_TRAIN + N_TEST):
        split = "train" if i < N_TRAIN else "test"
        sub = ("train2014" if split == "train" else "val2014") if dataset == "coco" else ""
        name = f"COCO_{sub}_{i:012d}.jpg" if dataset == "coco" else f"{1000 + i}.jpg"
        _image(root / folder / sub / name, i)
        sents = [
            {"raw": f"a photo of {j} red circles ", "tokens": [], "imgid": i, "sentid": j} for j in range(5)
        ]
        item = {
            "filepath": sub,
            "filename": name,
            "imgid": i,
            "split": split,
            "sentences": sents,
            "sentids": [],
        }
        if dataset == "coco":
            item["cocoid"] = 5000 + i
        items.append(item)
    _dump(root / f"karpathy/dataset_{dataset}.json", {"images": items, "dataset": dataset})


def _vqa(root: Path, folder: str, prefix: str) -> None:
    for split, offset, count in (("train", 0, N_TRAIN), ("val", 100, N_TEST)):
        qs, anns = [], []
        for i in range(offset, offset + count):
            image_id = 7000 + i
            _image(root / f"coco/{split}2014/COCO_{split}2014_{image_id:012d}.jpg", i)
            qs.append({"image_id": image_id, "question": f"What colour is shape {i}?", "question_id": 10 * i})
            answers = [
                {"answer": a, "answer_confidence": "yes", "answer_id": j}
                for j, a in enumerate(["red"] * 7 + ["blue"] * 3, 1)
            ]
            anns.append(
                {
                    "question_id": 10 * i,
                    "image_id": image_id,
                    "question_type": "what color",
                    "answer_type": "other",
                    "multiple_choice_answer": "red",
                    "answers": answers,
                }
            )
        _dump(root / f"{folder}/{prefix}OpenEnded_mscoco_{split}2014_questions.json", {"questions": qs})
        _dump(root / f"{folder}/{prefix}mscoco_{split}2014_annotations.json", {"annotations": anns})


def _textvqa(root: Path) -> None:
    for split, offset, count in (("train", 0, N_TRAIN), ("val", 100, N_TEST)):
        data = []
        for i in range(offset, offset + count):
            _image(root / f"textvqa/train_images/tv{i:04d}.jpg", i)
            data.append(
                {
                    "question": "what is written?",
                    "image_id": f"tv{i:04d}",
                    "image_classes": [],
                    "answers": ["stop"] * 10,
                    "question_id": 300 + i,
                    "set_name": split,
                }
            )
        _dump(root / f"textvqa/TextVQA_0.5.1_{split}.json", {"dataset_name": "textvqa", "data": data})


def _vizwiz(root: Path) -> None:
    for split, offset, count in (("train", 0, N_TRAIN), ("val", 100, N_TEST)):
        items = []
        for i in range(offset, offset + count):
            name = f"VizWiz_{split}_{i:08d}.jpg"
            _image(root / f"vizwiz/{split}/{name}", i)
            answers = [{"answer": "unanswerable", "answer_confidence": "yes"}] * 10
            items.append(
                {
                    "image": name,
                    "question": "What is this?",
                    "answers": answers,
                    "answer_type": "unanswerable",
                    "answerable": 0,
                }
            )
        _dump(root / f"vizwiz/{split}.json", items)


def _hateful_memes(root: Path) -> None:
    for split, offset, count in (("train", 0, N_TRAIN), ("dev_seen", 100, 4)):
        lines = []
        for i in range(offset, offset + count):
            _image(root / f"hateful_memes/img/{i:05d}.png", i)
            lines.append({"id": i, "img": f"img/{i:05d}.png", "label": i % 2, "text": f"meme text {i}"})
        text = "\n".join(json.dumps(x) for x in lines) + "\n"
        (root / f"hateful_memes/{split}.jsonl").write_text(text)


def _imagenet(root: Path) -> None:
    """All 1000 wnid folders (the shipped names pair with them); a few hold images."""
    wnids = [f"n{i:08d}" for i in range(1000)]
    for split, count in (("train", N_TRAIN), ("val", N_TEST)):
        for wnid in wnids:
            (root / f"imagenet/{split}/{wnid}").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            index = i if split == "train" else 500 + i
            _image(root / f"imagenet/{split}/{wnids[index]}/{split}_{index}.JPEG", index)


# A real ImageNet subset: (wnid, index among the sorted 1000 wnids, LOC_synset_mapping.txt names, CLIP name).
IMAGENET_SUBSET = (
    ("n01440764", 0, "tench, Tinca tinca", "tench"),
    ("n01443537", 1, "goldfish, Carassius auratus", "goldfish"),
    ("n02123045", 281, "tabby, tabby cat", "tabby cat"),
)


def write_synset_mapping(path: Path, full: bool = True) -> Path:
    """``LOC_synset_mapping.txt``: the subset's real lines, plus (``full``) 997 made-up wnids that sort into
    the other class indices, so the file has the official 1000 lines in class-index order."""
    lines = {index: f"{wnid} {names}" for wnid, index, names, _ in IMAGENET_SUBSET}
    if full:
        for index in range(1000):  # n0200xxxx sort between goldfish and tabby, n03xxxxxx after tabby
            lines.setdefault(
                index, f"n{(2000000 if index < 281 else 3000000) + index:08d} made-up class {index}"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines[i] + "\n" for i in sorted(lines)))
    return path


def write_imagenet_subset(root: Path, layout: str, per_class: int = 2) -> Path:
    """The subset under ``root/imagenet``: train in class folders; val in ``layout`` ("flat": the official
    flat folder with ``LOC_val_solution.csv``; "class_folders": the same images sorted into wnid folders),
    plus ``LOC_synset_mapping.txt``. The CSV also lists images that are not in the folder (a subset)."""
    base = root / "imagenet"
    write_synset_mapping(base / "LOC_synset_mapping.txt")
    rows = ["ImageId,PredictionString"]
    number = 0
    for c, (wnid, _, _, _) in enumerate(IMAGENET_SUBSET):
        for k in range(per_class):
            _image(base / f"train/{wnid}/{wnid}_{k}.JPEG", 10 * c + k)
            number += 1
            name = f"ILSVRC2012_val_{number:08d}"
            box = f"{wnid} 10 20 30 40"
            rows.append(f"{name},{box} {box}")
            _image(base / ("val" if layout == "flat" else f"val/{wnid}") / f"{name}.JPEG", 10 * c + k + 5)
    rows.append("ILSVRC2012_val_00049999,n09999999 1 2 3 4")  # an image the subset does not hold
    (base / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return root


def write_benchmark_data(root: Path) -> Path:
    """Every shipped task's files, in the official formats, under ``root``."""
    _karpathy(root, "coco", "coco")
    _karpathy(root, "flickr30k", "flickr30k/flickr30k-images")
    _vqa(root, "vqav2", "v2_")
    _vqa(root, "okvqa", "")
    _textvqa(root)
    _vizwiz(root)
    _hateful_memes(root)
    _imagenet(root)
    return root


def save_tiny_model(directory: Path) -> str:
    from flamingo.model.tiny import build_tiny_flamingo

    build_tiny_flamingo(gate_init=0.5).save_pretrained(str(directory), save_backbones=True)
    return str(directory)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    return {"data": str(write_benchmark_data(root / "data")), "model": save_tiny_model(root / "model")}


def test_fixture_covers_every_shipped_task():
    assert set(ALL_TASKS) == set(list_tasks())


def test_every_task_through_the_cli(bench, tmp_path):
    out = tmp_path / "eval"
    argv = [
        "eval",
        "--model",
        bench["model"],
        "--tasks",
        ",".join(ALL_TASKS),
        "--data-root",
        bench["data"],
        "--shots",
        "0,2",
        "--seeds",
        "2",
        "--out",
        str(out),
        "--num-samples",
        "3",
        "--query-set-size",
        "4",
        "--batch-size",
        "4",
        "--no-progress",
    ]
    assert main(argv) == 0
    for task in ALL_TASKS:
        results = json.loads((out / task / "results.json").read_text())
        spec = load_task(task)
        assert results["task"] == task and results["metric"] == spec.metric
        assert set(results["scores"]) == {"0", "2"}
        for score in results["scores"].values():
            assert set(score["per_seed"]) == {"42", "43"}
            assert set(score["num_examples"].values()) == {3}
        settings = results["settings"]
        assert settings["demo_mode"] == "random" and settings["num_samples"] == 3
        assert settings["batch_size"] == 4 and settings["text_only_context"] is False
        assert results["task_settings"]["shots"] == [0, 2] and results["task_settings"]["seeds"] == [42, 43]
        assert results["task_settings"]["query_set_size"] == 4
        records = read_predictions(out / task / "predictions.jsonl")
        assert len(records) == 2 * 2 * 3  # shots x seeds x samples
        for record in records:
            assert len(record.demo_ids) == (2 if record.shots == 2 else spec.zero_shot_text_demos)
            if spec.metric == "roc_auc":
                assert 0.0 <= record.processed_output <= 1.0 and set(record.raw_output) == {"no", "yes"}
            elif spec.task_type == "classification":
                assert record.processed_output in spec.class_name_list(bench["data"])
        # Re-scoring predictions.jsonl alone gives the recorded scores.
        assert rescore(out / task / "predictions.jsonl", task)["scores"] == results["scores"]

    report_dir = tmp_path / "report"
    assert main(["eval", "report", str(out), "--out", str(report_dir)]) == 0
    table = (report_dir / "report.md").read_text()
    assert all(f"### {task}" in table for task in ALL_TASKS)
    assert (report_dir / "scores_vs_shots.png").stat().st_size > 0


class RecordingModel:
    """Wraps a ``FlamingoEvalModel``: keeps every request and counts embedded images."""

    def __init__(self, inner):
        self.inner, self.requests, self.embedded = inner, [], 0
        self.name, self.batch_size = inner.name, inner.batch_size

    def generate(self, requests):
        self.requests.extend(requests)
        return self.inner.generate(requests)

    def rank_classification(self, requests):
        self.requests.extend(requests)
        return self.inner.rank_classification(requests)

    def embed_images(self, images):
        self.embedded += len(images)
        return self.inner.embed_images(images)

    def describe(self):
        return self.inner.describe()


@pytest.fixture(scope="module")
def recording(bench):
    from flamingo.eval.models import FlamingoEvalModel

    return lambda: RecordingModel(FlamingoEvalModel.from_pretrained(bench["model"]))


def _evaluate(model, bench, out, tasks=("vqav2", "hateful_memes"), **kwargs):
    from flamingo.eval.evaluator import evaluate

    options = {"shots": (0, 2), "seeds": (42,), "num_samples": 3, "query_set_size": 4, "progress": False}
    return evaluate(model, list(tasks), bench["data"], out_dir=out, **(options | kwargs))


def test_zero_shot_prompts_show_only_the_query_image(recording, bench, tmp_path):
    model = recording()
    _evaluate(model, bench, tmp_path, shots=(0,))
    assert len(model.requests) == 2 * 3
    for request in model.requests:
        assert len(request.images) == 1 and request.prompt.count("<image>") == 1
        *demos, query = request.prompt.split("<|endofchunk|>")
        assert len(demos) == 2 and not any("<image>" in d for d in demos)  # 2 text-only demonstrations
        assert query.lstrip("\n").startswith("<image>")  # the only image is the query's


def test_text_only_context_removes_demo_images(recording, bench, tmp_path):
    model = recording()
    results = _evaluate(model, bench, tmp_path, shots=(2,), text_only_context=True)
    assert all(len(r.images) == 1 and r.prompt.count("<image>") == 1 for r in model.requests)
    assert results["vqav2"]["settings"]["text_only_context"] is True


def test_prompt_ensembles_average_demo_orders(recording, bench, tmp_path):
    model = recording()
    results = _evaluate(model, bench, tmp_path, tasks=("hateful_memes",), shots=(2,), prompt_ensembles=2)
    assert len(model.requests) == 2 * 3  # two orders per example ...
    assert results["hateful_memes"]["scores"]["2"]["num_examples"] == {"42": 3}  # ... one record each
    assert results["hateful_memes"]["settings"]["prompt_ensembles"] == 2


def test_rices_picks_the_nearest_training_images(recording, bench, tmp_path):
    from flamingo.eval.datasets import EvalExample  # noqa: F401  (documents the record's demo ids)

    model = recording()
    results = _evaluate(model, bench, tmp_path, tasks=("coco",), shots=(2,), demo_mode="rices")
    spec = load_task("coco")
    train = spec.load_split("train", bench["data"])
    test = {e.id: e for e in spec.load_split("test", bench["data"])}
    train_emb = torch.nn.functional.normalize(model.inner.embed_images([e.image_path for e in train]), dim=-1)
    for record in read_predictions(tmp_path / "coco" / "predictions.jsonl"):
        query = torch.nn.functional.normalize(
            model.inner.embed_images([test[record.example_id].image_path]), dim=-1
        )
        nearest = (query @ train_emb.T)[0].argsort(descending=True)[:2].tolist()
        assert record.demo_ids == [train[nearest[1]].id, train[nearest[0]].id]  # most similar last
    assert results["coco"]["settings"]["demo_mode"] == "rices"
    assert list((tmp_path / "rices_cache").glob("rices-*.safetensors"))
    # A second run reads the training embeddings from the cache: only the 3 queries are embedded.
    again = recording()
    _evaluate(
        again,
        bench,
        tmp_path / "again",
        tasks=("coco",),
        shots=(2,),
        demo_mode="rices",
        rices_cache_dir=tmp_path / "rices_cache",
    )
    assert again.embedded == 3 and model.embedded == len(train) + 3


@pytest.mark.parametrize("shots", [0, 2])
def test_imagenet_subset_in_both_layouts_ranks_its_own_classes(recording, tmp_path, shots):
    from flamingo.eval.evaluator import evaluate

    predictions = {}
    for layout in ("flat", "class_folders"):
        data = write_imagenet_subset(tmp_path / layout / "data", layout)
        options = {"shots": (shots,), "seeds": (42,), "query_set_size": 4, "progress": False}
        results = evaluate(recording(), ["imagenet"], str(data), out_dir=tmp_path / layout / "out", **options)
        assert results["imagenet"]["scores"][str(shots)]["num_examples"] == {"42": 6}
        records = read_predictions(tmp_path / layout / "out" / "imagenet" / "predictions.jsonl")
        assert len(records) == 6
        for record in records:
            # The candidates ranked are the subset's own CLIP names, and every label is one of them.
            assert list(record.raw_output) == ["tench", "goldfish", "tabby cat"]
            assert record.references[0] in record.raw_output
            assert record.processed_output in record.raw_output
        labels = {r.example_id: r.references for r in records}
        assert labels["ILSVRC2012_val_00000001.JPEG"] == ["tench"]
        assert labels["ILSVRC2012_val_00000006.JPEG"] == ["tabby cat"]
        predictions[layout] = {r.example_id: (r.demo_ids, r.processed_output, r.raw_output) for r in records}
    # The same images in either layout: same ids, demonstrations and predictions.
    assert predictions["flat"].keys() == predictions["class_folders"].keys()
    for example_id, (demos, predicted, raw) in predictions["flat"].items():
        other_demos, other_predicted, other_raw = predictions["class_folders"][example_id]
        assert demos == other_demos and predicted == other_predicted
        assert raw == pytest.approx(other_raw, abs=1e-5)


def test_a_label_outside_the_candidates_is_an_error(recording, bench, tmp_path):
    from importlib import resources

    import yaml

    from flamingo.eval.evaluator import evaluate

    task = tmp_path / "memes.yaml"
    data = yaml.safe_load(resources.files("flamingo.eval.tasks").joinpath("hateful_memes.yaml").read_text())
    task.write_text(yaml.safe_dump(data | {"class_names": ["maybe", "yes"], "metric": "top1_accuracy"}))
    with pytest.raises(ValueError, match=r"labels \['no'\] are not among its 2 class names"):
        evaluate(
            recording(), [str(task)], bench["data"], out_dir=tmp_path / "out", shots=(0,), progress=False
        )
