"""The benchmark task registry: one YAML file per task, read into a validated ``TaskSpec``.

The shipped tasks live beside this module (``coco.yaml``, ``vqav2.yaml``, ...). A user adds a task by
writing a YAML file with the same fields and passing its path to ``load_task``; no code changes. The
fields are documented on ``TaskSpec``; ``coco.yaml`` is a commented example.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from flamingo.configs import MAX_SEED, ConfigError, between, from_mapping, hint, parse_mapping
from flamingo.errors import MissingFileError, UnknownNameError
from flamingo.eval.datasets import EvalExample, class_names_of, get_reader, imagenet_clip_classnames, resolve
from flamingo.eval.metrics import METRICS
from flamingo.eval.postprocess import POSTPROCESSORS
from flamingo.prompts import (
    BENCHMARK_TEMPLATES,
    PromptConfig,
    PromptTemplate,
    resolve_template,
)

TASK_TYPES = ("generation", "classification")
TEMPLATE_NAMES = (*(f.name for f in dataclasses.fields(PromptConfig)), *sorted(BENCHMARK_TEMPLATES))


class TaskSpecError(ConfigError):
    """A task file is invalid; the message names the file, the field and the fix."""


def _fail(source: str, name: str, problem: str, fix: str) -> TaskSpecError:
    return TaskSpecError(f"{source}: field '{name}': {problem}. Fix: {fix}")


@dataclass(frozen=True)
class DecodingSpec:
    """Generation settings (generation tasks only)."""

    num_beams: int = field(default=3, metadata=between(1, 64))
    """Beam search width."""
    max_new_tokens: int = field(default=20, metadata=between(1, 4096))
    """Most tokens generated after the prompt."""
    length_penalty: float = field(default=0.0, metadata=between(-100, 100))
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
    class_names: str | tuple[str, ...] | None = field(default=None, metadata=hint('e.g. ["no", "yes"]'))
    """Classification: a list of names; ``from_data``: the classes of the test split's labels, in class-index
    order (ImageNet: a subset scores against its own classes); ``imagenet_clip``: all 1000 CLIP ImageNet names;
    or a file of names (one a line) under the data root."""
    positive_class: str | None = None
    """Classification scored by ROC AUC: the class whose probability is the score."""
    shots: tuple[int, ...] = field(
        default=(0, 4, 8, 16, 32), metadata=between(0, 1024, hint="e.g. shots: [0, 4, 8]")
    )
    """Numbers of demonstrations to evaluate."""
    seeds: tuple[int, ...] = field(
        default=(42, 43, 44), metadata=between(0, MAX_SEED, hint="e.g. seeds: [42, 43, 44]")
    )
    """Seeds; scores are averaged over them."""
    query_set_size: int = field(default=2048, metadata=between(0, 10_000_000))
    """Training examples drawn once per seed, from which random demonstrations are drawn."""
    zero_shot_text_demos: int = field(default=2, metadata=between(0, 1024))
    """Text-only demonstrations used for 0-shot (their images removed)."""
    description: str = ""
    """Free text."""
    source: str = field(default="<dict>", metadata={"internal": True})
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

    def class_name_list(
        self, data_root: str | None = None, test: list[EvalExample] | None = None
    ) -> list[str]:
        """The class names of a classification task, in class-index order: the candidates it ranks.

        ``test`` is the whole test split (read from ``data_root`` when omitted) for ``from_data``.
        """
        if isinstance(self.class_names, tuple):
            return list(self.class_names)
        if self.class_names == "imagenet_clip":
            return imagenet_clip_classnames()
        if self.class_names is None:
            raise ValueError(f"task {self.name} has no class_names.")
        if data_root is None and (test is None or self.class_names != "from_data"):
            raise ValueError(f"task {self.name}: class_names is {self.class_names!r}; pass the data root.")
        if self.class_names == "from_data":
            names = class_names_of(test if test is not None else self.load_split("test", data_root))
            if not names:
                raise ValueError(
                    f"task {self.name}: class_names is 'from_data' but the test split has no labels."
                )
            return names
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


def task_from_dict(data: dict[str, Any], source: str = "<dict>") -> TaskSpec:
    """Build a ``TaskSpec`` from parsed YAML, checking every field's type and bounds.

    Errors are :class:`TaskSpecError` naming ``source``, the field and the fix.
    """
    return from_mapping(TaskSpec, data, source, fixed={"source": source}, error=TaskSpecError)


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
            raise MissingFileError(f"task file not found: {path}")
        source, content = str(path), path.read_text("utf-8")
    else:
        resource = resources.files(__name__).joinpath(f"{text}.yaml")
        if not resource.is_file():
            raise UnknownNameError(
                f"unknown task {text!r}; shipped tasks: {list_tasks()}; or pass a path to a YAML file."
            )
        source, content = f"flamingo/eval/tasks/{text}.yaml", resource.read_text("utf-8")
    try:
        data = parse_mapping(content, source, what="task")
    except TaskSpecError:
        raise
    except ConfigError as err:
        raise TaskSpecError(str(err), source=source, field=err.field) from None
    return task_from_dict(data, source)
