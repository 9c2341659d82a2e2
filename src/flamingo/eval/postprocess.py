"""Post-processors for generated text, by name (used by a task YAML's ``postprocess`` field).

They follow OpenFlamingo's evaluation (reference/openflamingo-facts.md section 5): a generated caption
is cut at "Output" and its double quotes removed; a VQA answer is cut at "Question", "Answer" or
"Short" and then at the first ", ". All of them first cut at ``<|endofchunk|>``, the stop token, in
case the generator leaves it in. ``vqa_uncased`` makes the same cuts whatever the case, for models whose
tokenizer lower-cases (the quickstart world's): they write "question", never "Question", so OpenFlamingo's
case-sensitive cut would never fire.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from flamingo.eval.stemming import okvqa_stem
from flamingo.model.config import TokenConfig

END_OF_CHUNK = TokenConfig.eoc_token
"""The default end of chunk; a model with another one has its output cut there before post-processing."""
_VQA_CUT = re.compile("Question|Answer|Short")
_VQA_CUT_UNCASED = re.compile("question|answer|short", re.IGNORECASE)

PostprocessFn = Callable[[str], str]


def _before_stop(text: str) -> str:
    return text.split(END_OF_CHUNK, 1)[0]


def postprocess_caption(text: str) -> str:
    """A generated caption: cut at "Output", remove double quotes, strip."""
    return _before_stop(text).split("Output", 1)[0].replace('"', "").strip()


def postprocess_vqa(text: str) -> str:
    """A generated short answer: cut at "Question"/"Answer"/"Short", then at the first ", "."""
    answer = _VQA_CUT.split(_before_stop(text), maxsplit=1)[0]
    return answer.split(", ", 1)[0]


def postprocess_vqa_uncased(text: str) -> str:
    """:func:`postprocess_vqa` with case-insensitive cuts, for tokenizers that lower-case everything."""
    answer = _VQA_CUT_UNCASED.split(_before_stop(text), maxsplit=1)[0]
    return answer.split(", ", 1)[0]


def postprocess_okvqa(text: str) -> str:
    """A VQA answer, then stemmed like OK-VQA v1.1's references (see ``flamingo.eval.stemming``)."""
    return okvqa_stem(postprocess_vqa(text))


POSTPROCESSORS: dict[str, PostprocessFn] = {
    "caption": postprocess_caption,
    "vqa": postprocess_vqa,
    "vqa_uncased": postprocess_vqa_uncased,
    "okvqa": postprocess_okvqa,
    "strip": lambda text: _before_stop(text).strip(),
    "none": lambda text: text,
}


def register_postprocessor(name: str, fn: PostprocessFn) -> None:
    """Add a post-processor under ``name`` (usable from a task YAML's ``postprocess`` field)."""
    POSTPROCESSORS[name] = fn


def get_postprocessor(name: str) -> PostprocessFn:
    """The post-processor registered as ``name``, or a clear error listing the known ones."""
    if name not in POSTPROCESSORS:
        raise KeyError(f"unknown post-processor {name!r}; known: {sorted(POSTPROCESSORS)}.")
    return POSTPROCESSORS[name]
