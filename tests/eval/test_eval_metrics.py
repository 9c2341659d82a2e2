"""Metrics against the official scorers' behaviour."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest

from flamingo.eval import metrics
from flamingo.eval.metrics import (
    cider,
    get_metric,
    roc_auc,
    top1_accuracy,
    vqa_accuracy,
    vqa_process_punctuation,
    vqa_question_accuracy,
)

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="CIDEr's PTBTokenizer needs java")

CAPTION_REFS = {
    1: [
        "A man riding a horse on a beach.",
        "A person rides a brown horse along the sea.",
        "Man on horseback.",
    ],
    2: ["Two dogs playing in the snow.", "A pair of dogs run through snow.", "Dogs in the snow."],
    3: ["A plate of food with broccoli.", "Broccoli and rice on a white plate.", "A meal on a plate."],
}
CAPTION_PREDS = {1: "a man riding a horse on the beach", 2: "Dogs playing in snow!", 3: "a cat on a couch"}


@needs_java
def test_cider_equals_pycocoevalcap_on_the_same_tokenized_captions():
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in CAPTION_REFS.items()})
    res = tokenizer.tokenize({k: [{"caption": v}] for k, v in CAPTION_PREDS.items()})
    expected, _ = Cider().compute_score(gts, res)
    assert cider(CAPTION_PREDS, CAPTION_REFS) == pytest.approx(100 * expected, abs=1e-9)
    assert expected > 0  # a non-trivial corpus: the test would catch a constant score


@needs_java
def test_cider_tokenizes_case_and_punctuation_away_and_registry_uses_lists():
    shouted = {k: v.upper() + " ..." for k, v in CAPTION_PREDS.items()}
    assert cider(shouted, CAPTION_REFS) == pytest.approx(cider(CAPTION_PREDS, CAPTION_REFS))
    by_list = get_metric("cider")(list(CAPTION_PREDS.values()), list(CAPTION_REFS.values()))
    assert by_list == pytest.approx(cider(CAPTION_PREDS, CAPTION_REFS))


@needs_java
def test_cider_empty_prediction_scores_zero_for_that_image_without_misaligning():
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in CAPTION_REFS.items()})
    res = tokenizer.tokenize({k: [{"caption": v}] for k, v in CAPTION_PREDS.items()})
    _, per_image = Cider().compute_score(gts, res)  # document frequencies come from the references only
    expected = 100 * (0.0 + per_image[1] + per_image[2]) / 3
    assert cider({**CAPTION_PREDS, 1: "  "}, CAPTION_REFS) == pytest.approx(expected, abs=1e-9)


def test_cider_without_java_names_the_fix(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match=r"needs Java.*`java`"):
        cider(CAPTION_PREDS, CAPTION_REFS)


def test_cider_with_read_only_tokenizer_dir_names_the_fix(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: "/usr/bin/java")
    monkeypatch.setattr(metrics.os, "access", lambda path, mode: False)
    with pytest.raises(PermissionError, match="not writable"):
        cider(CAPTION_PREDS, CAPTION_REFS)


def test_cider_mismatched_ids_are_an_error():
    with pytest.raises(ValueError, match="same ids"):
        cider({1: "a"}, {2: ["b"]})


# Expected scores derived by hand from the official algorithm (GT-Vision-Lab vqaEval.py, current Python 3
# revision): the prediction is whitespace-cleaned, then punctuation step, then digit/article step; the
# annotators' answers get the punctuation step only, and only when they are not all identical; per
# annotator min(1, matches among the other 9 / 3), averaged. No package on PyPI vendors that script
# unchanged, so this table is the oracle.
VQA_CASES = [
    # (prediction, answers, official, openflamingo)
    ("two", ["2"] * 10, 1.0, 1.0),  # number word -> digit on the prediction
    ("2", ["two"] * 10, 0.0, 1.0),  # identical answers are NOT normalised by the official script
    ("a dog", ["dog"] * 10, 1.0, 1.0),  # article dropped
    ("dog", ["the dog"] * 10, 0.0, 1.0),  # identical answers keep their article
    ("yes", ["yes"] * 2 + ["no"] * 8, 0.6, 0.6),  # (2 * 1/3 + 8 * 2/3) / 10
    ("red", ["red"] * 3 + ["blue"] * 7, 0.9, 0.9),  # (3 * 2/3 + 7 * 1) / 10
    ("red", ["red"] * 4 + ["blue"] * 6, 1.0, 1.0),
    ("cat", ["cat"] + ["dog"] * 9, 0.3, 0.3),  # 9 * 1/3 / 10
    ("dont", ["don't"] * 5 + ["no"] * 5, 1.0, 1.0),  # contraction table; "'" is not a mark
    ("yes.", ["yes"] * 10, 1.0, 1.0),  # trailing period removed
    ("3.5", ["3.5"] * 10, 1.0, 1.0),  # a period before a digit stays
    ("1,000", ["1000"] * 4 + ["1,000"] * 6, 1.0, 1.0),  # digit-comma-digit: marks deleted on both sides
    ("1,000", ["1,000"] * 10, 0.0, 1.0),  # ...but identical answers are left as "1,000"
    ("black/white", ["black white"] * 5 + ["black and white"] * 5, 1.0, 1.0),  # "/" -> a space
    ("black / white", ["black white"] * 10, 1.0, 1.0),  # "/" touching a space is deleted
    ("left-handed", ["left-handed"] * 3 + ["left handed"] * 7, 1.0, 1.0),
    ("The Two dogs", ["2 dogs"] * 10, 1.0, 1.0),
    ("yes", ["Yes"] * 10, 0.0, 1.0),  # identical answers are not lower-cased
    ("none", ["0"] * 10, 1.0, 1.0),
    ("yes\n", ["yes"] * 10, 1.0, 1.0),
]


@pytest.mark.parametrize(("prediction", "answers", "official", "openflamingo"), VQA_CASES)
def test_vqa_question_accuracy_table(prediction, answers, official, openflamingo):
    assert vqa_question_accuracy(prediction, answers) == pytest.approx(official)
    assert vqa_question_accuracy(prediction, answers, "openflamingo") == pytest.approx(openflamingo)


def test_vqa_overall_is_mean_times_100_rounded_to_2_decimals():
    preds = ["cat", "red", "red"]
    refs = [["cat"] + ["dog"] * 9, ["red"] * 4 + ["blue"] * 6, ["red"] * 4 + ["blue"] * 6]
    assert vqa_accuracy(preds, refs) == 76.67  # (0.3 + 1 + 1) / 3 = 0.7666...


def test_vqa_period_strip_keeps_the_official_count_of_32():
    # The official script passes re.UNICODE (32) as re.sub's count.
    assert vqa_process_punctuation("." * 40) == "." * 8


def test_vqa_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="variant"):
        vqa_question_accuracy("a", ["a"], variant="vqa2")


@pytest.mark.reference
@pytest.mark.skipif(importlib.util.find_spec("open_flamingo") is None, reason="needs open-flamingo")
def test_openflamingo_variant_matches_openflamingo_vqa_metric(tmp_path):
    from open_flamingo.eval.vqa_metric import compute_vqa_accuracy

    questions = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}}
    questions["data_subtype"] = "val2014"
    questions["questions"] = [
        {"question_id": i, "image_id": i, "question": "q?"} for i in range(len(VQA_CASES))
    ]
    annotations = {"annotations": [], "info": {}}
    for i, (_, answers, _, _) in enumerate(VQA_CASES):
        ans = [{"answer": a, "answer_id": j + 1, "answer_confidence": "yes"} for j, a in enumerate(answers)]
        annotations["annotations"].append(
            {"question_id": i, "image_id": i, "question_type": "what", "answer_type": "other", "answers": ans}
        )
    results = [{"question_id": i, "answer": case[0]} for i, case in enumerate(VQA_CASES)]
    for name, obj in [("q.json", questions), ("a.json", annotations), ("r.json", results)]:
        (tmp_path / name).write_text(json.dumps(obj))
    expected = compute_vqa_accuracy(
        str(tmp_path / "r.json"), str(tmp_path / "q.json"), str(tmp_path / "a.json")
    )
    ours = vqa_accuracy([c[0] for c in VQA_CASES], [c[1] for c in VQA_CASES], "openflamingo")
    assert ours == expected


def test_roc_auc_equals_sklearn_on_random_inputs_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 200))
        labels = rng.integers(0, 2, n)
        labels[:2] = [0, 1]
        scores = rng.integers(0, 6, n) / 5.0  # few distinct values: many ties
        assert roc_auc(scores.tolist(), labels.tolist()) == pytest.approx(
            roc_auc_score(labels, scores), abs=1e-12
        )
        assert get_metric("roc_auc")(scores.tolist(), labels.tolist()) == pytest.approx(
            100 * roc_auc_score(labels, scores)
        )


def test_roc_auc_needs_both_classes():
    with pytest.raises(ValueError, match="positive and one negative"):
        roc_auc([0.1, 0.2], [1, 1])


def test_top1_accuracy():
    assert top1_accuracy(["cat", "dog", "fox"], ["cat", "cow", ["fox", "vixen"]]) == pytest.approx(2 / 3)
    assert get_metric("top1_accuracy")(["a", "b"], [["a"], ["a"]]) == pytest.approx(50.0)


def test_unknown_metric_lists_the_known_ones():
    with pytest.raises(KeyError, match="vqa_accuracy"):
        get_metric("bleu")


@pytest.mark.reference
@pytest.mark.skipif(importlib.util.find_spec("open_flamingo") is None, reason="needs open-flamingo")
def test_tables_equal_the_copy_of_the_official_tables_in_openflamingo():
    """OpenFlamingo's vqa_metric.py carries the official script's tables unchanged (its scoring differs)."""
    from types import SimpleNamespace

    from open_flamingo.eval.vqa_metric import VQAEval

    reference = VQAEval(SimpleNamespace(getQuesIds=lambda: []), None)
    assert reference.contractions == metrics.VQA_CONTRACTIONS
    assert reference.manualMap == metrics.VQA_NUMBER_WORDS
    assert sorted(metrics.VQA_ARTICLES) == sorted(reference.articles)
    assert list(metrics.VQA_PUNCTUATION) == reference.punct
    assert metrics._PERIOD_STRIP.pattern == reference.periodStrip.pattern
    assert metrics._COMMA_BETWEEN_DIGITS.pattern == reference.commaStrip.pattern
