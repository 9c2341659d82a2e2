"""Benchmark metrics: CIDEr, VQA accuracy, ROC AUC and top-1 accuracy, plus a registry by name.

Every registered metric takes aligned lists ``(predictions, references)`` and returns a score on the
0-100 scale of the published tables (see docs/openflamingo-compat.md, "Published numbers").
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from flamingo.errors import UnknownNameError

# --------------------------------------------------------------------------------------------------
# CIDEr (pycocoevalcap: Stanford PTBTokenizer + CIDEr-D as used by the COCO caption server)
# --------------------------------------------------------------------------------------------------


def require_java() -> str:
    """Return the path of ``java``, or raise a clear error: pycocoevalcap's PTBTokenizer runs a Java jar."""
    java = shutil.which("java")
    if java is None:
        raise RuntimeError(
            "CIDEr needs Java: pycocoevalcap tokenizes captions with the Stanford PTBTokenizer jar. "
            "Install a Java runtime (e.g. `apt-get install default-jre-headless` or OpenJDK 17) "
            "so that `java` is on PATH, then rerun."
        )
    return java


def _ptb_tokenizer_dir() -> str:
    """The folder of pycocoevalcap's tokenizer, which must be writable (it writes temp files there)."""
    try:
        from pycocoevalcap.tokenizer import ptbtokenizer
    except ImportError as err:
        raise ImportError(
            "CIDEr needs pycocoevalcap: `pip install 'flamingo-vlm[eval]'` (or `pip install pycocoevalcap`)."
        ) from err
    folder = os.path.dirname(os.path.abspath(ptbtokenizer.__file__))
    if not os.access(folder, os.W_OK):
        raise PermissionError(
            f"pycocoevalcap's PTBTokenizer writes temporary files next to its own module, but {folder} is "
            "not writable. Install pycocoevalcap into a writable environment (a virtualenv you own, or "
            "`pip install --user pycocoevalcap`)."
        )
    return folder


def ptb_tokenize(captions: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    """Tokenize ``{id: [caption, ...]}`` with pycocoevalcap's PTBTokenizer (lower-cases, drops punctuation)."""
    require_java()
    _ptb_tokenizer_dir()
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # An empty caption would make the tokenizer's output shorter than its input (it drops trailing
    # blank lines) and misalign ids; a placeholder word that is in no reference scores exactly the same.
    packed = {k: [{"caption": c if c.strip() else "<empty>"} for c in v] for k, v in captions.items()}
    return PTBTokenizer().tokenize(packed)


def cider(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]) -> float:
    """Corpus CIDEr-D of ``{id: caption}`` against ``{id: [reference captions]}``, times 100.

    Both sides go through the PTBTokenizer and then pycocoevalcap's ``Cider`` scorer, as the COCO
    caption evaluation (and OpenFlamingo) does; document frequencies come from this corpus's references.
    """
    missing = set(references) ^ set(predictions)
    if missing:
        raise ValueError(
            f"cider: predictions and references must have the same ids; {len(missing)} differ, "
            f"e.g. {sorted(map(str, missing))[:5]}."
        )
    if not predictions:
        raise ValueError("cider: no predictions to score.")
    from pycocoevalcap.cider.cider import Cider

    gts = ptb_tokenize(references)
    res = ptb_tokenize({k: [v] for k, v in predictions.items()})
    score, _ = Cider().compute_score(gts, res)
    return float(score) * 100.0


# --------------------------------------------------------------------------------------------------
# VQA accuracy, as GT-Vision-Lab's PythonEvaluationTools/vqaEvaluation/vqaEval.py computes it
# --------------------------------------------------------------------------------------------------

# The punctuation list of the official script (the current Python 3 revision of GT-Vision-Lab/VQA;
# OpenFlamingo's vqa_metric.py uses the same one).
VQA_PUNCTUATION = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip
VQA_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
VQA_ARTICLES = frozenset({"a", "an", "the"})
# The official contraction table, entries as they are there, including its oddities: the capitalised
# keys never match (words are lower-cased first) and "somebody'd" maps to "somebodyd".
VQA_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip
# The official period regex. Its "(?!<=\d)" is a negative *lookahead* for the text "<=digit" (a typo for
# a lookbehind), which always holds before a ".", so in effect a period is removed unless a digit follows.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(\,)(\d)")
# The official script calls periodStrip.sub("", text, re.UNICODE): re.UNICODE (32) lands in the `count`
# argument, so at most 32 periods are removed. Kept for exactness.
_PERIOD_STRIP_COUNT = int(re.UNICODE)
VQA_VARIANTS = ("official", "openflamingo")


def vqa_process_punctuation(text: str) -> str:
    """The official punctuation step.

    Each mark is deleted when it touches a space in the input (or when the input has a digit-comma-digit
    anywhere), else replaced by a space; then periods not followed by a digit are removed.
    """
    out = text
    has_digit_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for mark in VQA_PUNCTUATION:
        if (mark + " " in text or " " + mark in text) or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def vqa_process_digit_article(text: str) -> str:
    """The official digit/article step: lower-case, number words to digits, drop articles, contractions."""
    words = [VQA_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in VQA_ARTICLES]
    return " ".join(VQA_CONTRACTIONS.get(w, w) for w in words)


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa_answer(text: str) -> str:
    """The full normalisation applied to a prediction: whitespace, punctuation, then digits/articles."""
    return vqa_process_digit_article(vqa_process_punctuation(_clean_whitespace(text)))


def vqa_question_accuracy(prediction: str, answers: Sequence[str], variant: str = "official") -> float:
    """Accuracy in [0, 1] of one prediction against the annotators' answers (usually 10).

    ``official``: the prediction is fully normalised; the answers go through the punctuation step only,
    and only when they are not all identical. ``openflamingo``: both sides are whitespace-cleaned and
    fully normalised every time (OpenFlamingo v2's vqa_metric.py). Then, for each annotator, the score is
    min(1, matches among the other annotators / 3); the result is their mean.
    """
    if variant not in VQA_VARIANTS:
        raise ValueError(f"vqa accuracy: unknown variant {variant!r}; choose one of {VQA_VARIANTS}.")
    if not answers:
        raise ValueError("vqa accuracy: a question has no reference answers.")
    pred = normalize_vqa_answer(prediction)
    if variant == "openflamingo":
        refs = [normalize_vqa_answer(a) for a in answers]
    elif len(set(answers)) > 1:
        refs = [vqa_process_punctuation(a) for a in answers]
    else:
        refs = list(answers)
    per_annotator = []
    for i in range(len(refs)):
        matches = sum(1 for j, ref in enumerate(refs) if j != i and ref == pred)
        per_annotator.append(min(1.0, matches / 3.0))
    return sum(per_annotator) / len(per_annotator)


def vqa_accuracy(
    predictions: Sequence[str], references: Sequence[Sequence[str]], variant: str = "official"
) -> float:
    """Overall VQA accuracy: mean per-question accuracy times 100, rounded to 2 decimals (as official)."""
    _check_aligned("vqa_accuracy", predictions, references)
    scores = [vqa_question_accuracy(p, a, variant) for p, a in zip(predictions, references)]
    return round(100.0 * sum(scores) / len(scores), 2)


# --------------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------------


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` with tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of every run of equal values, and the average rank of that run.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    run_ranks = (starts + ends + 1) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(run_ranks, ends - starts)
    return ranks


def roc_auc(scores: Sequence[float], labels: Sequence[int | bool]) -> float:
    """Area under the ROC curve in [0, 1], equal to ``sklearn.metrics.roc_auc_score(labels, scores)``.

    Computed as the Mann-Whitney statistic with average ranks, which counts tied positive/negative
    pairs as one half, exactly as the trapezoidal ROC area does.
    """
    _check_aligned("roc_auc", scores, labels)
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc: needs at least one positive and one negative label.")
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def top1_accuracy(predictions: Sequence[Any], labels: Sequence[Any]) -> float:
    """Fraction in [0, 1] of predictions equal to their label (a list label accepts any of its items)."""
    _check_aligned("top1_accuracy", predictions, labels)
    hits = 0
    for pred, label in zip(predictions, labels):
        hits += pred in label if isinstance(label, list | tuple) else pred == label
    return hits / len(predictions)


def _check_aligned(name: str, predictions: Sequence[Any], references: Sequence[Any]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{name}: {len(predictions)} predictions but {len(references)} references.")
    if len(predictions) == 0:
        raise ValueError(f"{name}: no predictions to score.")


# --------------------------------------------------------------------------------------------------
# Registry: name -> fn(predictions, references) -> score on the 0-100 scale
# --------------------------------------------------------------------------------------------------

MetricFn = Callable[[Sequence[Any], Sequence[Any]], float]


def _cider_lists(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    _check_aligned("cider", predictions, references)
    return cider(dict(enumerate(predictions)), {i: list(r) for i, r in enumerate(references)})


def _first_label(references: Sequence[Any]) -> list[Any]:
    return [r[0] if isinstance(r, list | tuple) else r for r in references]


METRICS: dict[str, MetricFn] = {
    "cider": _cider_lists,
    "vqa_accuracy": lambda p, r: vqa_accuracy(p, r, "official"),
    "vqa_accuracy_openflamingo": lambda p, r: vqa_accuracy(p, r, "openflamingo"),
    # ROC AUC: predictions are scores of the positive class, references are 0/1 labels.
    "roc_auc": lambda p, r: 100.0 * roc_auc(p, [int(x) for x in _first_label(r)]),
    "top1_accuracy": lambda p, r: 100.0 * top1_accuracy(p, r),
}


def register_metric(name: str, fn: MetricFn) -> None:
    """Add a metric under ``name`` (it then becomes usable from a task YAML's ``metric`` field)."""
    METRICS[name] = fn


def get_metric(name: str) -> MetricFn:
    """The metric registered as ``name``, or a clear error listing the known ones."""
    if name not in METRICS:
        raise UnknownNameError(f"unknown metric {name!r}; known metrics: {sorted(METRICS)}.")
    return METRICS[name]
