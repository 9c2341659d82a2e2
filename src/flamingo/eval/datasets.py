"""Readers for the benchmark files users actually have, each returning a list of ``EvalExample``.

Each reader takes the data root and the options of one split of a task YAML (paths relative to the
root), reads only the annotation files (images are opened later, by the evaluator) and is registered
by name in ``READERS``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from flamingo.errors import FlamingoError, UnknownNameError

IMAGENET_WNID_COUNT = 1000
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".webp", ".bmp")


@dataclass
class EvalExample:
    """One benchmark item.

    ``references`` holds the reference captions (captioning), the annotators' answers (VQA), or the
    label (classification); ``label`` is the class name for classification tasks.
    """

    id: str
    image_path: str
    question: str | None = None
    references: list[str] = field(default_factory=list)
    label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Reader = Callable[..., list[EvalExample]]


class DataFileError(FlamingoError, FileNotFoundError):
    """A data file named by a task is missing or malformed."""


def resolve(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """``path`` if absolute, else ``root / path``."""
    path = Path(os.path.expanduser(os.fspath(path)))
    return path if path.is_absolute() else Path(root) / path


def _load_json(root: str | os.PathLike[str], path: str, what: str) -> Any:
    full = resolve(root, path)
    if not full.is_file():
        raise DataFileError(
            f"{what} file not found: {full} (from {path!r} under data root {root!s}). "
            "Point the data root at the folder that holds the benchmark files, or fix the path in the task."
        )
    with open(full, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise DataFileError(f"{full} is not valid JSON ({err}).") from err


def _require_key(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise DataFileError(f"{where}: missing key {key!r}; is this file in the official format?")
    return obj[key]


def read_karpathy(root: str, annotations: str, splits: Sequence[str], images: str = "") -> list[EvalExample]:
    """Karpathy split JSON (``dataset_coco.json`` / ``dataset_flickr30k.json``).

    Keeps ``images[]`` whose ``split`` is in ``splits``; the image is ``images/filepath/filename``
    (COCO) or ``images/filename`` (Flickr30K); the id is ``cocoid`` if present, else ``imgid``.
    """
    data = _load_json(root, annotations, "Karpathy split")
    items = _require_key(data, "images", annotations)
    examples = []
    for item in items:
        if item.get("split") not in splits:
            continue
        image_id = item.get("cocoid", item.get("imgid"))
        image = resolve(root, images) / item.get("filepath", "") / item["filename"]
        captions = [s["raw"] for s in item["sentences"]]
        extra = {"filename": item["filename"], "split": item["split"]}
        examples.append(EvalExample(str(image_id), str(image), None, captions, None, extra))
    return examples


def read_vqa(
    root: str,
    questions: str,
    images: str,
    annotations: str | None = None,
    image_pattern: str = "COCO_val2014_{image_id:012d}.jpg",
) -> list[EvalExample]:
    """VQAv2 / OK-VQA question and annotation JSON pair, joined by ``question_id``.

    ``annotations`` may be omitted for a test split without answers. The image file name comes from
    ``image_pattern`` formatted with the question's ``image_id``.
    """
    qs = _require_key(_load_json(root, questions, "VQA questions"), "questions", questions)
    answers: dict[Any, dict[str, Any]] = {}
    if annotations is not None:
        anns = _require_key(_load_json(root, annotations, "VQA annotations"), "annotations", annotations)
        answers = {a["question_id"]: a for a in anns}
    examples = []
    for q in qs:
        ann = answers.get(q["question_id"])
        if annotations is not None and ann is None:
            raise DataFileError(f"{annotations}: no annotation for question_id {q['question_id']}.")
        refs = [a["answer"] for a in ann["answers"]] if ann else []
        extra: dict[str, Any] = {"image_id": q["image_id"]}
        if ann:
            for key in ("multiple_choice_answer", "question_type", "answer_type"):
                if key in ann:
                    extra[key] = ann[key]
        image = resolve(root, images) / image_pattern.format(image_id=q["image_id"])
        examples.append(EvalExample(str(q["question_id"]), str(image), q["question"], refs, None, extra))
    return examples


def read_textvqa(
    root: str, annotations: str, images: str, image_pattern: str = "{image_id}.jpg"
) -> list[EvalExample]:
    """TextVQA JSON (``TextVQA_0.5.1_val.json``): ``data[]`` with ``question_id``, ``image_id``,
    ``question`` and ``answers`` (10 strings; absent in the test split)."""
    data = _require_key(_load_json(root, annotations, "TextVQA"), "data", annotations)
    examples = []
    for item in data:
        image = resolve(root, images) / image_pattern.format(image_id=item["image_id"])
        extra = {"image_id": item["image_id"], "image_classes": item.get("image_classes", [])}
        refs = list(item.get("answers", []))
        examples.append(
            EvalExample(str(item["question_id"]), str(image), item["question"], refs, None, extra)
        )
    return examples


def read_vizwiz(root: str, annotations: str, images: str) -> list[EvalExample]:
    """VizWiz VQA JSON (``val.json``): a list of ``{image, question, answers[{answer, answer_confidence}],
    answer_type, answerable}``; one question per image, so the id is the image file's stem."""
    data = _load_json(root, annotations, "VizWiz")
    if not isinstance(data, list):
        raise DataFileError(f"{annotations}: expected a JSON list of questions (VizWiz format).")
    examples = []
    for item in data:
        refs = [a["answer"] for a in item.get("answers", [])]
        extra = {k: item[k] for k in ("answer_type", "answerable") if k in item}
        image = resolve(root, images) / item["image"]
        examples.append(
            EvalExample(Path(item["image"]).stem, str(image), item["question"], refs, None, extra)
        )
    return examples


def read_hateful_memes(root: str, annotations: str, images: str = "") -> list[EvalExample]:
    """Hateful Memes JSONL (``train.jsonl``, ``dev_seen.jsonl``, ...): ``{id, img, label, text}``.

    ``img`` ("img/42953.png") is relative to ``images`` (default: the data root); label 1 -> "yes",
    0 -> "no", absent (unlabelled test files) -> None. The meme's text is ``extra["text"]``.
    """
    full = resolve(root, annotations)
    if not full.is_file():
        raise DataFileError(f"Hateful Memes file not found: {full} (from {annotations!r} under {root}).")
    examples = []
    with open(full, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFileError(f"{full}:{line_no} is not valid JSON ({err}).") from err
            label = None if item.get("label") is None else ("yes" if int(item["label"]) == 1 else "no")
            image = resolve(root, images) / item["img"]
            refs = [label] if label is not None else []
            examples.append(
                EvalExample(str(item["id"]), str(image), None, refs, label, {"text": item["text"]})
            )
    return examples


def imagenet_clip_classnames() -> list[str]:
    """The 1000 ImageNet class names used by CLIP and OpenFlamingo, in class-index order."""
    text = resources.files("flamingo.eval").joinpath("resources/imagenet_classnames.txt").read_text("utf-8")
    return text.splitlines()


def read_class_map(path: Path) -> dict[str, str]:
    """A wnid -> class name file: ``wnid<whitespace>name`` per line (e.g. ``LOC_synset_mapping.txt``)
    or a JSON object ``{wnid: name}``."""
    if path.suffix == ".json":
        return {str(k): str(v) for k, v in json.loads(path.read_text("utf-8")).items()}
    mapping = {}
    for line in path.read_text("utf-8").splitlines():
        if line.strip():
            wnid, *name = line.split(None, 1)
            mapping[wnid] = name[0].strip() if name else ""
    return mapping


def class_names_of(examples: Sequence[EvalExample]) -> list[str]:
    """The class names of a labelled split, one per class, in class-index order: the candidates that
    classification ranks when a task says ``class_names: from_data``.

    Classes are ordered by ``extra["class_index"]`` when every labelled example has one (two classes
    may share a name, as two pairs of CLIP's ImageNet names do), else by first appearance.
    """
    labelled = [e for e in examples if e.label is not None]
    if labelled and all(isinstance(e.extra.get("class_index"), int) for e in labelled):
        by_index = {e.extra["class_index"]: e.label for e in labelled}
        return [str(by_index[i]) for i in sorted(by_index)]
    return list(dict.fromkeys(str(e.label) for e in labelled))


IMAGENET_LAYOUTS = (
    "class folders (<folder>/<wnid>/*.JPEG)",
    "the official flat validation folder (<folder>/ILSVRC2012_val_*.JPEG with `labels:` LOC_val_solution.csv)",
)


def _layout_error(folder: Path, problem: str) -> DataFileError:
    return DataFileError(
        f"ImageNet folder {folder}: {problem}; readable layouts: {IMAGENET_LAYOUTS[0]} or {IMAGENET_LAYOUTS[1]}."
    )


def _imagenet_names(
    where: Path, wnids: Sequence[str], layout_wnids: Sequence[str], class_map: Path | None
) -> dict[str, tuple[int, str]]:
    """wnid -> (class index, name) for the ``wnids`` of a split.

    The class index is the wnid's position among the sorted 1000 ImageNet wnids, known when the class
    map (``LOC_synset_mapping.txt``) or the layout itself (all 1000 class folders, or a full
    ``LOC_val_solution.csv``) lists 1000 wnids; the name is then the shipped CLIP name of that index.
    A class map that lists fewer classes gives its first name (``tench`` of ``tench, Tinca tinca``) and
    the index among the split's sorted wnids.
    """
    mapping = read_class_map(class_map) if class_map is not None and class_map.is_file() else {}
    universe = next(
        (sorted(set(w)) for w in (mapping, layout_wnids) if len(set(w)) == IMAGENET_WNID_COUNT), None
    )
    if universe is not None:
        index = {wnid: i for i, wnid in enumerate(universe)}
        unknown = [w for w in wnids if w not in index]
        if unknown:
            source = class_map if len(mapping) == IMAGENET_WNID_COUNT else where
            raise DataFileError(
                f"{where}: wnids {unknown[:5]} are not among the 1000 ImageNet wnids of {source}."
            )
        clip = imagenet_clip_classnames()
        return {w: (index[w], clip[index[w]]) for w in wnids}
    unnamed = [w for w in wnids if w not in mapping]
    if unnamed:
        if class_map is None:
            problem = "no class map names them"
        elif not class_map.is_file():
            problem = f"the class map {class_map} is not found"
        else:
            problem = f"the class map {class_map} does not name {unnamed[:5]}"
        raise DataFileError(
            f"{where}: {len(set(wnids))} classes, not all 1000, and {problem}: set `class_map:` to "
            "LOC_synset_mapping.txt (lines 'wnid name, ...') to name a subset."
        )
    order = {wnid: i for i, wnid in enumerate(sorted(set(wnids)))}
    return {w: (order[w], mapping[w].split(",")[0].strip()) for w in wnids}


def _check_labels(examples: list[EvalExample], where: Path) -> list[EvalExample]:
    """Every label must be among the split's candidates, or it could never be scored right."""
    candidates = set(class_names_of(examples))
    stray = sorted({str(e.label) for e in examples if e.label not in candidates})
    if stray:
        raise DataFileError(f"{where}: labels {stray[:5]} are not among the split's class names.")
    return examples


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _example(image: Path, wnid: str, names: dict[str, tuple[int, str]], example_id: str) -> EvalExample:
    index, label = names[wnid]
    return EvalExample(example_id, str(image), None, [label], label, {"wnid": wnid, "class_index": index})


def read_imagenet_class_folders(root: str, folder: str, class_map: str | None = None) -> list[EvalExample]:
    """Class folders ``folder/<wnid>/*.JPEG`` (the train split, or val after sorting it into folders).

    Examples are in (wnid, file name) order; the id is the image file name (``wnid/name`` when names
    repeat across classes); the label is the class name (see ``_imagenet_names``).
    """
    base = resolve(root, folder)
    if not base.is_dir():
        raise DataFileError(f"ImageNet folder not found: {base} (from {folder!r} under {root}).")
    wnids = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not wnids:
        raise _layout_error(base, "no class folders")
    names = _imagenet_names(base, wnids, wnids, resolve(root, class_map) if class_map else None)
    images = [(wnid, image) for wnid in wnids for image in _images_in(base / wnid)]
    unique = len({image.name for _, image in images}) == len(images)
    return _check_labels(
        [_example(image, w, names, image.name if unique else f"{w}/{image.name}") for w, image in images],
        base,
    )


def read_val_solution(path: Path) -> dict[str, str]:
    """``LOC_val_solution.csv`` -> {image id: wnid}: columns ``ImageId,PredictionString``, the wnid being
    the first token of ``PredictionString`` (``n01751748 x1 y1 x2 y2 n01751748 ...``)."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or ()):
            raise DataFileError(
                f"{path}: expected the columns ImageId,PredictionString of LOC_val_solution.csv, "
                f"found {reader.fieldnames}."
            )
        labels = {}
        for row in reader:
            tokens = (row["PredictionString"] or "").split()
            if not tokens:
                raise DataFileError(f"{path}:{reader.line_num}: empty PredictionString for {row['ImageId']}.")
            labels[row["ImageId"].strip()] = tokens[0]
    return labels


def read_imagenet_flat(
    root: str, folder: str, labels: str, class_map: str | None = None
) -> list[EvalExample]:
    """The official flat validation folder: ``folder/ILSVRC2012_val_00000001.JPEG, ...`` labelled by
    ``labels`` (``LOC_val_solution.csv``), named through ``class_map`` (``LOC_synset_mapping.txt``).

    Every image in the folder must have a row; rows without an image are skipped, so a folder holding a
    subset reads with the full CSV. Examples are in (wnid, file name) order, as in class folders.
    """
    base = resolve(root, folder)
    if not base.is_dir():
        raise DataFileError(f"ImageNet folder not found: {base} (from {folder!r} under {root}).")
    csv_path = resolve(root, labels)
    if not csv_path.is_file():
        raise _layout_error(base, f"images directly in it but its labels file {csv_path} is not found")
    solution = read_val_solution(csv_path)
    images = _images_in(base)
    if not images:
        raise _layout_error(base, "no images directly in it for the flat layout")
    unlabelled = [p.name for p in images if p.stem not in solution]
    if unlabelled:
        raise DataFileError(f"{csv_path}: no row for the images {unlabelled[:5]} of {base}.")
    wnids = sorted({solution[p.stem] for p in images})
    names = _imagenet_names(
        base, wnids, list(solution.values()), resolve(root, class_map) if class_map else None
    )
    images.sort(key=lambda p: (solution[p.stem], p.name))
    return _check_labels([_example(p, solution[p.stem], names, p.name) for p in images], base)


def read_imagenet_folder(
    root: str, folder: str, layout: str = "auto", labels: str | None = None, class_map: str | None = None
) -> list[EvalExample]:
    """An ImageNet split in either layout; ``layout`` is ``class_folders``, ``flat`` or ``auto``.

    ``auto`` reads a folder holding images directly as the flat validation layout (which needs
    ``labels``), and a folder holding only sub-folders as class folders. ``class_map`` is optional when
    the layout lists all 1000 wnids; a named class map that is missing is then ignored.
    """
    base = resolve(root, folder)
    if layout not in ("auto", "class_folders", "flat"):
        raise DataFileError(f"ImageNet layout {layout!r} for {base}: use auto, class_folders or flat.")
    if not base.is_dir():
        raise DataFileError(f"ImageNet folder not found: {base} (from {folder!r} under {root}).")
    if layout == "auto":
        if _images_in(base):
            layout = "flat"
        elif any(p.is_dir() for p in base.iterdir()):
            layout = "class_folders"
        else:
            raise _layout_error(base, "neither images nor class folders in it")
    if layout == "class_folders":
        return read_imagenet_class_folders(root, folder, class_map)
    if labels is None:
        raise _layout_error(
            base, "the flat layout needs its labels file: set `labels:` to LOC_val_solution.csv"
        )
    return read_imagenet_flat(root, folder, labels, class_map)


def read_hf_dataset(
    root: str,
    path: str,
    split: str,
    image_column: str = "image",
    id_column: str | None = None,
    question_column: str | None = None,
    references_column: str | None = None,
    label_column: str | None = None,
    image_cache: str = "hf_images",
) -> list[EvalExample]:
    """A Hugging Face ``datasets`` dataset (hub name or local folder), needs ``pip install datasets``.

    Images stored inside the dataset are written once to ``root/image_cache`` so that every example
    has a file path like the other readers'.
    """
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            "the 'hf_datasets' reader needs the Hugging Face datasets package: `pip install datasets`."
        ) from err
    ds = datasets.load_dataset(path, split=split)
    ds = ds.cast_column(image_column, datasets.Image(decode=False))
    cache = resolve(root, image_cache)
    examples = []
    for index, row in enumerate(ds):
        example_id = str(row[id_column]) if id_column else str(index)
        image_path = _hf_image_file(row[image_column], cache, example_id)
        refs = row[references_column] if references_column else []
        refs = [refs] if isinstance(refs, str) else [str(r) for r in refs]
        label = str(row[label_column]) if label_column else None
        question = row[question_column] if question_column else None
        examples.append(EvalExample(example_id, image_path, question, refs, label, {"hf_index": index}))
    return examples


def _hf_image_file(image: dict[str, Any], cache: Path, example_id: str) -> str:
    """Path of an undecoded ``datasets.Image`` value, writing its bytes to ``cache`` when needed."""
    if image.get("path") and os.path.isfile(image["path"]):
        return image["path"]
    if not image.get("bytes"):
        raise DataFileError(f"example {example_id}: the image has neither a readable path nor bytes.")
    suffix = Path(image.get("path") or "x.png").suffix or ".png"
    target = cache / f"{example_id.replace('/', '_')}{suffix}"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        target.write_bytes(image["bytes"])
    return str(target)


READERS: dict[str, Reader] = {
    "karpathy": read_karpathy,
    "vqa": read_vqa,
    "textvqa": read_textvqa,
    "vizwiz": read_vizwiz,
    "hateful_memes": read_hateful_memes,
    "imagenet_folder": read_imagenet_folder,
    "hf_datasets": read_hf_dataset,
}


def register_reader(name: str, fn: Reader) -> None:
    """Add a reader under ``name`` (usable from a task YAML's ``reader`` field)."""
    READERS[name] = fn


def get_reader(name: str) -> Reader:
    """The reader registered as ``name``, or a clear error listing the known ones."""
    if name not in READERS:
        raise UnknownNameError(f"unknown dataset reader {name!r}; known readers: {sorted(READERS)}.")
    return READERS[name]
