"""The benchmark task registry: one YAML file per task, read into a validated ``TaskSpec``.

The shipped tasks live beside this module (``coco.yaml``, ``vqav2.yaml``, ...). A user adds a task by
writing a YAML file with the same fields and passing its path to ``load_task``; no code changes. The
fields are documented on ``TaskSpec``; ``coco.yaml`` is a commented example.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from dataclasses import MISSING, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from flamingo.eval.datasets import EvalExample, get_reader, imagenet_clip_classnames, resolve
from flamingo.eval.metrics import METRICS
from flamingo.eval.postprocess import POSTPROCESSORS
from flamingo.prompts import (
    BENCHMARK_TEMPLATES,
    PromptConfig,
    PromptError,
    PromptTemplate,
    resolve_template,
    template_from_dict,
)

TASK_TYPES = ("generation", "classification")
TEMPLATE_NAMES = (*(f.name for f in dataclasses.fields(PromptConfig)), *sorted(BENCHMARK_TEMPLATES))


class TaskSpecError(ValueError):
    """A task file is invalid; the message names the file, the field and the fix."""


def _fail(source: str, name: str, problem: str, fix: str) -> TaskSpecError:
    return TaskSpecError(f"{source}: field '{name}': {problem}. Fix: {fix}")


@dataclass(frozen=True)
class DecodingSpec:
    """Generation settings (generation tasks only)."""

    num_beams: int = 3
    """Beam search width."""
    max_new_tokens: int = 20
    """Most tokens generated after the prompt."""
    length_penalty: float = 0.0
    """Beam search length penalty (OpenFlamingo uses 0)."""
    stop: tuple[str, ...] = ()
    """Strings that end generation besides the model's end of chunk (where it always stops)."""


@dataclass(frozen=True)
class TaskSpec:
    """A benchmark task, as declared in its YAML file."""

    name: str
    """Task name, used in results files."""
    task_type: str
    """``generation`` (decode text, then score it) or ``classification`` (rank the class names)."""
    reader: str
    """Dataset reader name (see ``flamingo.eval.datasets.READERS``)."""
    train: dict[str, Any]
    """Reader options for the demonstration split; paths are relative to the data root."""
    test: dict[str, Any]
    """Reader options for the evaluated split."""
    prompt: PromptTemplate | str
    """The name of a template (``caption``, ``vqa``, ``classify``: the evaluated model's own, see
    ``flamingo.prompts``; or ``hateful_memes``), or a demonstration and a query template written out."""
    metric: str
    """Metric name (see ``flamingo.eval.metrics.METRICS``)."""
    postprocess: str = "none"
    """Post-processor applied to generated text (see ``flamingo.eval.postprocess.POSTPROCESSORS``)."""
    decoding: DecodingSpec | None = None
    """Generation settings; required for generation tasks."""
    class_names: str | tuple[str, ...] | None = None
    """Classification: a list of names, ``imagenet_clip``, or a file of names (one a line) under the data root."""
    positive_class: str | None = None
    """Classification scored by ROC AUC: the class whose probability is the score."""
    shots: tuple[int, ...] = (0, 4, 8, 16, 32)
    """Numbers of demonstrations to evaluate."""
    seeds: tuple[int, ...] = (42, 43, 44)
    """Seeds; scores are averaged over them."""
    query_set_size: int = 2048
    """Training examples drawn once per seed, from which random demonstrations are drawn."""
    zero_shot_text_demos: int = 2
    """Text-only demonstrations used for 0-shot (their images removed)."""
    description: str = ""
    """Free text."""
    source: str = "<dict>"
    """The file this task came from (set by ``load_task``)."""

    def __post_init__(self) -> None:
        _validate(self)

    def with_prompts(self, prompts: PromptConfig) -> TaskSpec:
        """This task with its named template taken from ``prompts`` (a model's); a written-out one stays."""
        if isinstance(self.prompt, PromptTemplate):
            return self
        return dataclasses.replace(self, prompt=resolve_template(self.prompt, prompts))

    def load_split(self, split: str, data_root: str) -> list[EvalExample]:
        """Read the ``train`` or ``test`` split from the files under ``data_root``."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', not {split!r}.")
        return get_reader(self.reader)(data_root, **getattr(self, split))

    def class_name_list(self, data_root: str | None = None) -> list[str]:
        """The class names of a classification task, in class-index order."""
        if isinstance(self.class_names, tuple):
            return list(self.class_names)
        if self.class_names == "imagenet_clip":
            return imagenet_clip_classnames()
        if self.class_names is None:
            raise ValueError(f"task {self.name} has no class_names.")
        if data_root is None:
            raise ValueError(f"task {self.name}: class_names is a file; pass the data root.")
        path = resolve(data_root, self.class_names)
        return [line.strip() for line in path.read_text("utf-8").splitlines() if line.strip()]


def _validate(spec: TaskSpec) -> None:
    src = spec.source
    if spec.task_type not in TASK_TYPES:
        raise _fail(src, "task_type", f"{spec.task_type!r} is not a task type", f"use one of {TASK_TYPES}")
    _check_registered(src, "metric", spec.metric, METRICS)
    _check_registered(src, "postprocess", spec.postprocess, POSTPROCESSORS)
    _check_reader(spec)
    if isinstance(spec.prompt, str) and spec.prompt not in TEMPLATE_NAMES:
        close = difflib.get_close_matches(spec.prompt, TEMPLATE_NAMES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise _fail(src, "prompt", f"no template {spec.prompt!r}", f"{hint}known: {list(TEMPLATE_NAMES)}")
    if not isinstance(spec.prompt, (str, PromptTemplate)):
        raise _fail(src, "prompt", "must be a template name or a mapping", "e.g. prompt: caption")
    if spec.task_type == "generation" and spec.decoding is None:
        raise _fail(
            src, "decoding", "a generation task needs decoding settings", "add num_beams, max_new_tokens"
        )
    if spec.task_type == "classification" and spec.class_names is None:
        raise _fail(src, "class_names", "a classification task needs class names", "add a list or a file")
    if spec.metric == "roc_auc" and spec.positive_class is None:
        raise _fail(
            src, "positive_class", "roc_auc needs the positive class", 'add e.g. positive_class: "yes"'
        )
    if not _is_int_tuple(spec.shots) or not spec.shots or min(spec.shots) < 0:
        raise _fail(src, "shots", f"{spec.shots!r} is not a list of counts >= 0", "e.g. shots: [0, 4, 8]")
    if not _is_int_tuple(spec.seeds) or not spec.seeds:
        raise _fail(src, "seeds", f"{spec.seeds!r} is not a list of integers", "e.g. seeds: [42, 43, 44]")
    for name in ("query_set_size", "zero_shot_text_demos"):
        if not isinstance(getattr(spec, name), int) or getattr(spec, name) < 0:
            raise _fail(src, name, "must be an integer >= 0", f"e.g. {name}: 2")
    if spec.query_set_size < max(spec.shots):
        raise _fail(src, "query_set_size", "smaller than the largest shot count", "raise it")


def _is_int_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _check_registered(source: str, name: str, value: str, registry: dict[str, Any]) -> None:
    if value not in registry:
        close = difflib.get_close_matches(str(value), registry, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise _fail(source, name, f"{value!r} is not registered", f"{hint}known: {sorted(registry)}")


def _check_reader(spec: TaskSpec) -> None:
    from flamingo.eval.datasets import READERS

    _check_registered(spec.source, "reader", spec.reader, READERS)
    signature = inspect.signature(READERS[spec.reader])
    for split in ("train", "test"):
        options = getattr(spec, split)
        if not isinstance(options, dict):
            raise _fail(spec.source, split, "must be a mapping of reader options", "see coco.yaml")
        try:
            signature.bind("<data root>", **options)
        except TypeError as err:
            takes = [p for p in signature.parameters if p != "root"]
            raise _fail(
                spec.source, split, f"reader {spec.reader!r}: {err}", f"its options are {takes}"
            ) from err


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def task_from_dict(data: dict[str, Any], source: str = "<dict>") -> TaskSpec:
    """Build a ``TaskSpec`` from parsed YAML, with errors that name ``source`` and the field."""
    if not isinstance(data, dict):
        raise TaskSpecError(f"{source}: a task file must be a YAML mapping of fields; see coco.yaml.")
    known = {f.name for f in fields(TaskSpec)} - {"source"}
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            fix = f"did you mean {close[0]!r}?" if close else f"known fields: {sorted(known)}"
            raise _fail(source, key, "unknown field", fix)
    required = [f.name for f in fields(TaskSpec) if _no_default(f)]
    for name in required:
        if name not in data:
            raise _fail(source, name, "missing", f"add '{name}:' to the task file (see coco.yaml)")
    values = dict(data)
    if isinstance(data["prompt"], dict):
        try:
            values["prompt"] = template_from_dict(data["prompt"], "prompt")
        except PromptError as err:
            raise _fail(source, err.where, err.problem, err.fix) from None
    if data.get("decoding") is not None:
        values["decoding"] = _sub_spec(DecodingSpec, data["decoding"], source, "decoding")
    for key in ("shots", "seeds", "class_names"):
        if key in values:
            values[key] = _as_tuple(values[key])
    if isinstance(values.get("class_names"), tuple) and not all(
        isinstance(c, str) for c in values["class_names"]
    ):
        raise _fail(source, "class_names", "names must be strings", 'quote them, e.g. ["no", "yes"]')
    return TaskSpec(**values, source=source)


def _no_default(f: Any) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _sub_spec(cls: type, data: Any, source: str, name: str) -> Any:
    if not isinstance(data, dict):
        raise _fail(source, name, "must be a mapping", f"see the {name} section of coco.yaml")
    try:
        return cls(**{k: _as_tuple(v) for k, v in data.items()})
    except TypeError as err:
        raise _fail(source, name, str(err), f"its fields are {[f.name for f in fields(cls)]}") from err


def list_tasks() -> list[str]:
    """Names of the tasks shipped with flamingo."""
    folder = resources.files(__name__)
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_task(name_or_path: str | Path) -> TaskSpec:
    """A shipped task by name (``"coco"``), or any task YAML file by path."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"task file not found: {path}")
        source, content = str(path), path.read_text("utf-8")
    else:
        resource = resources.files(__name__).joinpath(f"{text}.yaml")
        if not resource.is_file():
            raise KeyError(
                f"unknown task {text!r}; shipped tasks: {list_tasks()}; or pass a path to a YAML file."
            )
        source, content = f"flamingo/eval/tasks/{text}.yaml", resource.read_text("utf-8")
    try:
        data = yaml.safe_load(content)
    except yaml.YAMLError as err:
        raise TaskSpecError(f"{source}: not valid YAML ({err}).") from err
    return task_from_dict(data, source)
