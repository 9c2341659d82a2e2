"""Every reader on tiny files written in the official formats, images included."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from PIL import Image
from test_eval_end_to_end import IMAGENET_SUBSET, write_imagenet_subset, write_synset_mapping

from flamingo.eval.datasets import (
    DataFileError,
    class_names_of,
    get_reader,
    imagenet_clip_classnames,
    read_hateful_memes,
    read_hf_dataset,
    read_imagenet_flat,
    read_imagenet_folder,
    read_karpathy,
    read_textvqa,
    read_vizwiz,
    read_vqa,
)


def _dump(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _assert_images_open(examples):
    for example in examples:
        with Image.open(example.image_path) as image:
            assert image.size == (8, 8)


def test_karpathy_coco(tmp_path, image_writer):
    items = []
    for i, (split, folder) in enumerate(
        [("train", "train2014"), ("test", "val2014"), ("restval", "val2014")]
    ):
        name = f"COCO_{folder}_{i:012d}.jpg"
        image_writer(tmp_path / "coco" / folder / name)
        sents = [
            {"tokens": ["a"], "raw": f"Caption {i}.{j} ", "imgid": i, "sentid": 10 * i + j} for j in range(5)
        ]
        items.append({"filepath": folder, "sentids": [], "filename": name, "imgid": i, "split": split,
                      "sentences": sents, "cocoid": 1000 + i})  # fmt: skip
    _dump(tmp_path / "karpathy/dataset_coco.json", {"images": items, "dataset": "coco"})
    test = read_karpathy(str(tmp_path), "karpathy/dataset_coco.json", ["test"], images="coco")
    assert [e.id for e in test] == ["1001"]
    assert test[0].references == [f"Caption 1.{j} " for j in range(5)]
    assert test[0].image_path.endswith("coco/val2014/COCO_val2014_000000000001.jpg")
    train = read_karpathy(str(tmp_path), "karpathy/dataset_coco.json", ["train", "restval"], images="coco")
    assert [e.id for e in train] == ["1000", "1002"]
    _assert_images_open(test + train)


def test_karpathy_flickr_uses_imgid_and_no_filepath(tmp_path, image_writer):
    image_writer(tmp_path / "flickr" / "1000092795.jpg")
    item = {"sentids": [0], "imgid": 7, "sentences": [{"raw": "Two men.", "tokens": [], "imgid": 7, "sentid": 0}],
            "split": "test", "filename": "1000092795.jpg"}  # fmt: skip
    _dump(tmp_path / "dataset_flickr30k.json", {"images": [item], "dataset": "flickr30k"})
    (example,) = read_karpathy(str(tmp_path), "dataset_flickr30k.json", ["test"], images="flickr")
    assert example.id == "7" and example.references == ["Two men."]
    _assert_images_open([example])


def _vqa_files(tmp_path: Path, image_writer) -> None:
    questions = [{"image_id": 42, "question": "What color?", "question_id": 420},
                 {"image_id": 43, "question": "How many?", "question_id": 430}]  # fmt: skip
    annotations = [
        {"question_id": 430, "image_id": 43, "question_type": "how many", "answer_type": "number",
         "multiple_choice_answer": "2", "answers": [{"answer": "2", "answer_confidence": "yes", "answer_id": j}
                                                     for j in range(1, 11)]},
        {"question_id": 420, "image_id": 42, "question_type": "what color", "answer_type": "other",
         "multiple_choice_answer": "red", "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j}
                                                       for j, a in enumerate(["red"] * 9 + ["pink"], 1)]},
    ]  # fmt: skip
    _dump(tmp_path / "v2_questions.json", {"info": {}, "task_type": "Open-Ended", "questions": questions})
    _dump(tmp_path / "v2_annotations.json", {"info": {}, "annotations": annotations})
    for image_id in (42, 43):
        image_writer(tmp_path / "val2014" / f"COCO_val2014_{image_id:012d}.jpg")


def test_vqa_pairs_questions_with_annotations_by_question_id(tmp_path, image_writer):
    _vqa_files(tmp_path, image_writer)
    examples = read_vqa(str(tmp_path), "v2_questions.json", "val2014", annotations="v2_annotations.json")
    assert [e.id for e in examples] == ["420", "430"]
    assert examples[0].question == "What color?"
    assert examples[0].references == ["red"] * 9 + ["pink"]
    assert examples[1].extra["multiple_choice_answer"] == "2"
    _assert_images_open(examples)
    unlabelled = read_vqa(str(tmp_path), "v2_questions.json", "val2014")
    assert unlabelled[0].references == []


def test_textvqa(tmp_path, image_writer):
    image_writer(tmp_path / "train_images" / "003a8ae2ef43b901.jpg")
    item = {"question": "what is written?", "image_id": "003a8ae2ef43b901", "image_classes": ["Poster"],
            "answers": ["nous les gosses"] * 10, "question_id": 34602, "set_name": "val"}  # fmt: skip
    _dump(
        tmp_path / "TextVQA_0.5.1_val.json",
        {"dataset_name": "textvqa", "dataset_version": "0.5.1", "data": [item]},
    )
    (example,) = read_textvqa(str(tmp_path), "TextVQA_0.5.1_val.json", "train_images")
    assert example.id == "34602" and example.references[0] == "nous les gosses"
    _assert_images_open([example])


def test_vizwiz(tmp_path, image_writer):
    image_writer(tmp_path / "val" / "VizWiz_val_00000000.jpg")
    answers = [{"answer": "unanswerable", "answer_confidence": "yes"}] * 10
    item = {"image": "VizWiz_val_00000000.jpg", "question": "What is this?", "answers": answers,
            "answer_type": "unanswerable", "answerable": 0}  # fmt: skip
    _dump(tmp_path / "val.json", [item])
    (example,) = read_vizwiz(str(tmp_path), "val.json", "val")
    assert example.id == "VizWiz_val_00000000" and example.references == ["unanswerable"] * 10
    assert example.extra["answerable"] == 0
    _assert_images_open([example])


def test_hateful_memes(tmp_path, image_writer):
    image_writer(tmp_path / "img" / "42953.png")
    image_writer(tmp_path / "img" / "01235.png")
    lines = [{"id": 42953, "img": "img/42953.png", "label": 0, "text": "its their character not their color"},
             {"id": 1235, "img": "img/01235.png", "label": 1, "text": "a meme"}]  # fmt: skip
    (tmp_path / "dev_seen.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    examples = read_hateful_memes(str(tmp_path), "dev_seen.jsonl")
    assert [(e.id, e.label) for e in examples] == [("42953", "no"), ("1235", "yes")]
    assert examples[0].extra["text"] == "its their character not their color"
    _assert_images_open(examples)


def test_imagenet_class_folders_with_a_partial_class_map_take_its_first_names(tmp_path, image_writer):
    for wnid in ("n01440764", "n01443537"):
        image_writer(tmp_path / "val" / wnid / f"ILSVRC2012_val_{wnid}.JPEG", fmt="JPEG")
    (tmp_path / "map.txt").write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    examples = read_imagenet_folder(str(tmp_path), "val", class_map="map.txt")
    assert [e.label for e in examples] == ["tench", "goldfish"]
    assert examples[1].extra["class_index"] == 1
    assert class_names_of(examples) == ["tench", "goldfish"]
    _assert_images_open(examples)


def test_imagenet_subset_without_a_class_map_is_a_clear_error(tmp_path, image_writer):
    image_writer(tmp_path / "val" / "n01440764" / "a.JPEG", fmt="JPEG")
    with pytest.raises(DataFileError, match=r"class_map.*LOC_synset_mapping\.txt"):
        read_imagenet_folder(str(tmp_path), "val")


def _ids_labels_indices(examples):
    return [(e.id, e.label, e.extra["class_index"]) for e in examples]


def test_imagenet_flat_validation_layout(tmp_path):
    write_imagenet_subset(tmp_path, "flat")
    options = {"labels": "imagenet/LOC_val_solution.csv", "class_map": "imagenet/LOC_synset_mapping.txt"}
    examples = read_imagenet_folder(str(tmp_path), "imagenet/val", **options)  # layout: auto
    assert _ids_labels_indices(examples) == [
        ("ILSVRC2012_val_00000001.JPEG", "tench", 0),
        ("ILSVRC2012_val_00000002.JPEG", "tench", 0),
        ("ILSVRC2012_val_00000003.JPEG", "goldfish", 1),
        ("ILSVRC2012_val_00000004.JPEG", "goldfish", 1),
        ("ILSVRC2012_val_00000005.JPEG", "tabby cat", 281),  # CLIP's name, not the map's "tabby, tabby cat"
        ("ILSVRC2012_val_00000006.JPEG", "tabby cat", 281),
    ]
    assert [e.extra["wnid"] for e in examples[::2]] == [w for w, *_ in IMAGENET_SUBSET]
    assert class_names_of(examples) == ["tench", "goldfish", "tabby cat"]
    assert read_imagenet_folder(str(tmp_path), "imagenet/val", layout="flat", **options) == examples
    # The same images in class folders read to the same ids, labels and order.
    other = write_imagenet_subset(tmp_path / "folders", "class_folders")
    folders = read_imagenet_folder(str(other), "imagenet/val", **options)
    assert _ids_labels_indices(folders) == _ids_labels_indices(examples)
    _assert_images_open(examples + folders)


def test_imagenet_flat_layout_names_a_subset_from_a_partial_map(tmp_path):
    write_imagenet_subset(tmp_path, "flat")
    write_synset_mapping(tmp_path / "imagenet/LOC_synset_mapping.txt", full=False)  # the 3 lines only
    examples = read_imagenet_flat(
        str(tmp_path), "imagenet/val", "imagenet/LOC_val_solution.csv", "imagenet/LOC_synset_mapping.txt"
    )
    assert class_names_of(examples) == ["tench", "goldfish", "tabby"]
    assert {e.label for e in examples} == {"tench", "goldfish", "tabby"}


def test_imagenet_flat_layout_with_the_full_csv_needs_no_mapping(tmp_path, image_writer):
    """The full LOC_val_solution.csv lists all 1000 wnids: their sorted order gives the class index."""
    wnids = sorted(
        f"n{(2000000 if i < 281 else 3000000) + i:08d}" for i in range(1000) if i not in (0, 1, 281)
    )
    wnids = sorted(wnids + [w for w, *_ in IMAGENET_SUBSET])
    rows = [f"ILSVRC2012_val_{i + 1:08d},{w} 1 2 3 4" for i, w in enumerate(wnids)]
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    image_writer(tmp_path / "val" / "ILSVRC2012_val_00000282.JPEG", fmt="JPEG")
    (example,) = read_imagenet_folder(
        str(tmp_path), "val", labels="LOC_val_solution.csv", class_map="nope.txt"
    )
    assert (example.label, example.extra["wnid"], example.extra["class_index"]) == (
        "tabby cat",
        "n02123045",
        281,
    )


def test_imagenet_image_without_a_csv_row_is_an_error(tmp_path, image_writer):
    write_imagenet_subset(tmp_path, "flat")
    image_writer(tmp_path / "imagenet/val/ILSVRC2012_val_00000777.JPEG", fmt="JPEG")
    with pytest.raises(DataFileError, match=r"LOC_val_solution\.csv: no row.*ILSVRC2012_val_00000777"):
        read_imagenet_folder(str(tmp_path), "imagenet/val", labels="imagenet/LOC_val_solution.csv")


@pytest.mark.parametrize("case", ["empty", "no_labels", "not_images", "bad_layout"])
def test_an_unreadable_imagenet_layout_names_the_readable_ones(tmp_path, image_writer, case):
    folder = tmp_path / "val"
    folder.mkdir()
    options = {}
    if case == "no_labels":  # a flat folder without its LOC_val_solution.csv
        image_writer(folder / "ILSVRC2012_val_00000001.JPEG", fmt="JPEG")
    elif case == "not_images":
        (folder / "readme.txt").write_text("hi")
    elif case == "bad_layout":
        options = {"layout": "tar"}
    with pytest.raises(DataFileError) as err:
        read_imagenet_folder(str(tmp_path), "val", **options)
    message = str(err.value)
    assert "\n" not in message and str(folder) in message
    if case == "bad_layout":
        assert "auto, class_folders or flat" in message
    else:
        assert "class folders (<folder>/<wnid>/*.JPEG)" in message and "flat validation folder" in message
        assert "LOC_val_solution.csv" in message


def test_imagenet_csv_with_other_columns_is_an_error(tmp_path, image_writer):
    image_writer(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG", fmt="JPEG")
    (tmp_path / "labels.csv").write_text("image,label\nILSVRC2012_val_00000001,n01440764\n")
    with pytest.raises(DataFileError, match="ImageId,PredictionString"):
        read_imagenet_folder(str(tmp_path), "val", labels="labels.csv")


def test_shipped_imagenet_names_are_clips():
    names = imagenet_clip_classnames()
    assert len(names) == 1000  # CLIP's list repeats two names, so not 1000 distinct ones
    assert names[:2] == ["tench", "goldfish"] and names[-1] == "toilet paper"
    open_clip_metadata = pytest.importorskip("open_clip.zero_shot_metadata")
    assert names == list(open_clip_metadata.IMAGENET_CLASSNAMES)


def test_missing_annotation_file_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(DataFileError, match=r"nope\.json.*data root"):
        read_vizwiz(str(tmp_path), "nope.json", "val")


def test_hf_reader_without_datasets_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets"):
        read_hf_dataset(str(tmp_path), "some/dataset", "test")


def test_hf_reader_writes_embedded_images_to_files(monkeypatch, tmp_path):
    png = tmp_path / "src.png"
    Image.new("RGB", (8, 8)).save(png)
    rows = [{"image": {"path": None, "bytes": png.read_bytes()}, "qid": 5, "q": "Why?", "ans": ["yes", "no"]}]

    class FakeDataset(list):
        def cast_column(self, column, feature):
            assert column == "image" and feature == ("Image", False)
            return self

    fake = types.SimpleNamespace(
        load_dataset=lambda path, split: FakeDataset(rows), Image=lambda decode: ("Image", decode)
    )
    monkeypatch.setitem(sys.modules, "datasets", fake)
    (example,) = get_reader("hf_datasets")(
        str(tmp_path), "x", "val", id_column="qid", question_column="q", references_column="ans"
    )
    assert example.id == "5" and example.question == "Why?" and example.references == ["yes", "no"]
    _assert_images_open([example])
