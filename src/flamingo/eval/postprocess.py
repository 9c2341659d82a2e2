"""Post-processors for generated text, by name (used by a task YAML's ``postprocess`` field).

They follow OpenFlamingo's evaluation (see docs/openflamingo-compat.md, "Evaluation protocol"): a generated
caption is cut at "Output" and its double quotes removed; a VQA answer is cut at "Question", "Answer" or
"Short" and then at the first ", ". All of them first cut at ``<|endofchunk|>``, the stop token, in
case the generator leaves it in. ``vqa_uncased`` makes the same cuts whatever the case, for models whose
tokenizer lower-cases (the quickstart world's): they write "question", never "Question", so OpenFlamingo's
case-sensitive cut would never fire.
"""

from __future__ import annotations

from collections.abc import Callable

from flamingo.errors import UnknownNameError
from flamingo.eval.stemming import okvqa_stem

# The cuts themselves live below the evaluation, where the inference pipeline uses them too.
from flamingo.processing import (  # noqa: F401  (re-exported: task YAMLs and callers name them here)
    END_OF_CHUNK,
    before_stop,
    postprocess_caption,
    postprocess_vqa,
    postprocess_vqa_uncased,
)

PostprocessFn = Callable[[str], str]


def postprocess_okvqa(text: str) -> str:
    """A VQA answer, then stemmed like OK-VQA v1.1's references (see ``flamingo.eval.stemming``)."""
    return okvqa_stem(postprocess_vqa(text))


POSTPROCESSORS: dict[str, PostprocessFn] = {
    "caption": postprocess_caption,
    "vqa": postprocess_vqa,
    "vqa_uncased": postprocess_vqa_uncased,
    "okvqa": postprocess_okvqa,
    "strip": lambda text: before_stop(text).strip(),
    "none": lambda text: text,
}


def register_postprocessor(name: str, fn: PostprocessFn) -> None:
    """Add a post-processor under ``name`` (usable from a task YAML's ``postprocess`` field)."""
    POSTPROCESSORS[name] = fn


def get_postprocessor(name: str) -> PostprocessFn:
    """The post-processor registered as ``name``, or a clear error listing the known ones."""
    if name not in POSTPROCESSORS:
        raise UnknownNameError(f"unknown post-processor {name!r}; known: {sorted(POSTPROCESSORS)}.")
    return POSTPROCESSORS[name]
