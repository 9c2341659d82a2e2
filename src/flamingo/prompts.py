"""Prompt templates: the one registry the pipeline, the web demo and the evaluator's task files read.

A template is a demonstration and a query, with placeholders for the example's fields (``{caption}``,
``{answer}``, ``{label}``, ``{question}``, ``{text}``) and for the model's special tokens: ``{image}`` where the
picture goes and ``{eoc}`` where a chunk ends. The tokens are put in when the prompt is rendered, from the
model's ``TokenConfig``, so a template never spells a token.

:class:`PromptConfig` is the set of templates a model uses; a checkpoint records the one it was trained with
(the ``prompts`` section of its ``config.json``), and the pipeline, ``flamingo serve`` and ``flamingo eval``
default to it. A checkpoint without the section uses :data:`OPENFLAMINGO`, the benchmark prompts of
OpenFlamingo's evaluation.

This module imports nothing from the rest of the package, so every layer can use it.
"""

from __future__ import annotations

import dataclasses
import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flamingo.errors import FlamingoError

IMAGE = "image"
"""Placeholder name of the image marker: ``{image}`` in a template."""
EOC = "eoc"
"""Placeholder name of the end of a chunk: ``{eoc}`` in a template."""
DEMO_FIELDS = frozenset({"caption", "answer", "label", "question", "text"})
"""Example fields a demonstration may show."""
QUERY_FIELDS = frozenset({"question", "text"})
"""Example fields a query may show (never the answer)."""


class PromptError(FlamingoError, ValueError):
    """A template is invalid; the message names where it came from, the problem and the fix."""

    def __init__(self, where: str, problem: str, fix: str) -> None:
        super().__init__(f"{where}: {problem}. Fix: {fix}")
        self.where, self.problem, self.fix = where, problem, fix


def placeholders(template: str, where: str = "template") -> list[str]:
    """The placeholder names of ``template`` in order (repeats kept), or a PromptError for bad braces."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise PromptError(where, f"bad template ({err})", "write literal braces as {{ and }}") from err


def check_template(template: str, allowed: frozenset[str], where: str) -> None:
    """``template`` uses only ``allowed`` fields plus ``{image}``/``{eoc}``, and ``{image}`` exactly once."""
    if not isinstance(template, str):
        raise PromptError(where, f"a template is a string, not {type(template).__name__}", "quote it")
    names = placeholders(template, where)
    unknown = sorted(set(names) - allowed - {IMAGE, EOC})
    if unknown:
        raise PromptError(
            where, f"unknown placeholders {unknown}", f"use only {sorted(allowed)}, {{image}} and {{eoc}}"
        )
    if names.count(IMAGE) != 1:
        raise PromptError(
            where,
            f"must contain {{image}} exactly once (found {names.count(IMAGE)})",
            "put one {image} where the picture goes (the model's own image token is put there)",
        )


@dataclass(frozen=True)
class PromptTemplate:
    """One task's prompt: a demonstration, repeated once per shot, then the query the model continues."""

    demo: str
    """One demonstration, e.g. ``"{image}Output:{caption}{eoc}\\n"``."""
    query: str
    """The example asked about, ending where the model continues, e.g. ``"{image}Output:"``."""

    def __post_init__(self) -> None:
        check_template(self.demo, DEMO_FIELDS, "demo")
        check_template(self.query, QUERY_FIELDS, "query")

    def render(
        self,
        demos: Sequence[Mapping[str, str]],
        query: Mapping[str, str],
        image_token: str,
        eoc_token: str,
        text_only_demos: bool = False,
    ) -> str:
        """The prompt text: each demonstration's fields, then the query's, with the model's tokens.

        ``text_only_demos`` leaves the demonstrations' image markers out (0-shot text-only context).
        """
        demo_image = "" if text_only_demos else image_token
        parts = [_fill(self.demo, d, demo_image, eoc_token) for d in demos]
        return "".join(parts) + _fill(self.query, query, image_token, eoc_token)


def _fill(template: str, values: Mapping[str, str], image_token: str, eoc_token: str) -> str:
    return template.format(**{**values, IMAGE: image_token, EOC: eoc_token})


@dataclass
class PromptConfig:
    """The templates a model was trained (or is evaluated) with; the ``prompts`` section of a checkpoint's
    ``config.json``. The defaults are OpenFlamingo's benchmark prompts: no space after a colon; captioning and
    VQA demonstrations end with a newline, classification demonstrations do not."""

    caption: PromptTemplate = field(
        default_factory=lambda: PromptTemplate("{image}Output:{caption}{eoc}\n", "{image}Output:")
    )
    """Captioning (``{caption}``)."""
    vqa: PromptTemplate = field(
        default_factory=lambda: PromptTemplate(
            "{image}Question:{question} Short answer:{answer}{eoc}\n",
            "{image}Question:{question} Short answer:",
        )
    )
    """Visual question answering (``{question}``, ``{answer}``)."""
    classify: PromptTemplate = field(
        default_factory=lambda: PromptTemplate("{image}Output:{label}{eoc}", "{image}Output:")
    )
    """Rank classification (``{label}``); the class names are scored as continuations of the query."""
    interleaved: PromptTemplate = field(
        default_factory=lambda: PromptTemplate("{image}{text}{eoc}\n", "{image}{text}")
    )
    """Free text after each image (the web demo's demonstrations and query, ``{text}``)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Mapping):
                setattr(self, f.name, template_from_dict(value, f"prompts.{f.name}"))
            elif not isinstance(value, PromptTemplate):
                raise PromptError(
                    f"prompts.{f.name}",
                    f"a {type(value).__name__}, not a template",
                    "give 'demo' and 'query'",
                )

    def get(self, name: str) -> PromptTemplate:
        """The template called ``name`` (a field of this class), or a PromptError naming the known ones."""
        known = [f.name for f in dataclasses.fields(self)]
        if name not in known:
            raise PromptError("prompts", f"no template {name!r}", f"use one of {known}")
        return getattr(self, name)


def template_from_dict(data: Mapping[str, Any], where: str) -> PromptTemplate:
    """A template from ``{"demo": ..., "query": ...}``, with errors that name ``where`` and the field."""
    unknown = sorted(set(data) - {"demo", "query"})
    missing = sorted({"demo", "query"} - set(data))
    if unknown or missing:
        raise PromptError(where, f"unknown keys {unknown}, missing keys {missing}", "give 'demo' and 'query'")
    try:
        return PromptTemplate(data["demo"], data["query"])
    except PromptError as err:
        raise PromptError(f"{where}.{err.where}", err.problem, err.fix) from None


OPENFLAMINGO = PromptConfig()
"""OpenFlamingo's benchmark prompts, what a checkpoint without a ``prompts`` section uses."""

BENCHMARK_TEMPLATES: dict[str, PromptTemplate] = {
    "hateful_memes": PromptTemplate(
        "{image}is an image with: '{text}' written on it. Is it hateful? Answer:{label}{eoc}",
        "{image}is an image with: '{text}' written on it. Is it hateful? Answer:",
    ),
}
"""Benchmark templates that are no model's own format (a task file names them; a checkpoint cannot change
them): the Hateful Memes prompt, which shows the meme's text."""


def resolve_template(name: str, prompts: PromptConfig) -> PromptTemplate:
    """A task file's template by name: one of ``prompts`` (the model's), else a :data:`BENCHMARK_TEMPLATES`
    entry."""
    if name in BENCHMARK_TEMPLATES:
        return BENCHMARK_TEMPLATES[name]
    try:
        return prompts.get(name)
    except PromptError:
        known = [f.name for f in dataclasses.fields(PromptConfig)] + sorted(BENCHMARK_TEMPLATES)
        raise PromptError("prompt", f"no template {name!r}", f"use one of {known}") from None


def check_prompt(prompt: str, num_images: int, image_token: str, where: str = "prompt") -> None:
    """One ``image_token`` marker in ``prompt`` per image, or a ValueError naming ``where`` and the counts."""
    markers = prompt.count(image_token)
    if markers != num_images:
        raise ValueError(
            f"{where} has {markers} {image_token} markers but {num_images} images: give exactly one image per "
            f"{image_token}, in order (does a caption or question contain the text {image_token}?). "
            f"Prompt starts: {prompt[:80]!r}"
        )


def load_prompt_config(name_or_path: str | Path) -> PromptConfig:
    """``"openflamingo"`` (the benchmark's templates), or a JSON file holding a ``prompts`` section (a
    checkpoint's ``config.json``) or being one."""
    if str(name_or_path) == "openflamingo":
        return PromptConfig()
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such prompts file; give 'openflamingo' or a JSON file")
    try:
        data = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as err:
        raise PromptError(str(path), f"not valid JSON ({err})", "write a JSON object") from None
    section = data.get("prompts", data) if isinstance(data, dict) else data
    if not isinstance(section, dict):
        raise PromptError(str(path), "no prompts object", 'write {"prompts": {"caption": {...}, ...}}')
    known = {f.name for f in dataclasses.fields(PromptConfig)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise PromptError(f"{path}: prompts", f"unknown templates {unknown}", f"use only {sorted(known)}")
    try:
        return PromptConfig(**section)
    except PromptError as err:
        raise PromptError(f"{path}: {err.where}", err.problem, err.fix) from None
