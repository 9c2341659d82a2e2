"""Post-processors and OK-VQA stemming."""

from __future__ import annotations

import pytest

from flamingo.eval import stemming
from flamingo.eval.postprocess import (
    get_postprocessor,
    postprocess_caption,
    postprocess_okvqa,
    postprocess_vqa,
    postprocess_vqa_uncased,
)
from flamingo.eval.stemming import okvqa_stem, singularize, strip_ing


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('A "red" bus on a street.\nOutput: a car', "A red bus on a street."),
        ("a dog<|endofchunk|>Output:", "a dog"),
        ("  two cats  ", "two cats"),
    ],
)
def test_caption_cut_at_output_and_quotes_removed(raw, expected):
    assert postprocess_caption(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("yes Question: is it", "yes "),
        ("red, white and blue", "red"),
        ("2 Short answer: 3", "2 "),
        ("blue Answer: red", "blue "),
        ("a dog<|endofchunk|>", "a dog"),
        ("tennis", "tennis"),
    ],
)
def test_vqa_cut_at_question_answer_short_and_first_comma(raw, expected):
    assert postprocess_vqa(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected_cased", "expected_uncased"),
    [
        ("three question : how", "three question : how", "three "),
        ("diamond? answer", "diamond? answer", "diamond? "),
        ("red short answer: blue", "red short answer: blue", "red "),
        ("yes Question: is it", "yes ", "yes "),
        ("red, white", "red", "red"),
        ("tennis<|endofchunk|>question", "tennis", "tennis"),
    ],
)
def test_uncased_vqa_cut_fires_on_lower_case_and_keeps_the_rest_of_the_rules(
    raw, expected_cased, expected_uncased
):
    assert postprocess_vqa(raw) == expected_cased
    assert postprocess_vqa_uncased(raw) == expected_uncased
    assert get_postprocessor("vqa_uncased") is postprocess_vqa_uncased


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("dogs", "dog"), ("bananas", "banana"), ("buses", "bus"), ("boxes", "box"), ("puppies", "puppy"),
        ("knives", "knife"), ("children", "child"), ("glass", "glass"), ("tennis", "tennis"), ("shoes", "shoe"),
        ("benches", "bench"), ("cactus", "cactus"), ("skis", "ski"), ("potatoes", "potato"),
    ],
)  # fmt: skip
def test_rule_singularize(word, expected):
    assert singularize(word) == expected


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("running", "run"), ("making", "make"), ("skiing", "ski"), ("surfing", "surf"), ("eating", "eat"),
        ("riding", "ride"), ("falling", "fall"), ("king", "king"), ("string", "string"), ("wedding", "wed"),
    ],
)  # fmt: skip
def test_rule_ing_stripping(word, expected):
    assert strip_ing(word) == expected


def test_okvqa_rules_backend_uses_the_manual_matches_and_rules():
    assert okvqa_stem("police", backend="rules") == "police"
    assert okvqa_stem("weddings", backend="rules") == "wed"
    assert okvqa_stem("jeans", backend="rules") == "jean"
    assert okvqa_stem("surfing dogs", backend="rules") == "surf dog"


def test_okvqa_nltk_backend_without_data_names_the_fix(monkeypatch):
    monkeypatch.setattr(
        stemming, "_nltk_stemmer_or_reason", lambda: (None, "NLTK data 'corpora/wordnet' missing")
    )
    with pytest.raises(RuntimeError, match="wordnet"):
        okvqa_stem("dogs", backend="nltk")
    with pytest.warns(UserWarning, match="approximation"):
        assert okvqa_stem("dogs", backend="auto") == "dog"  # auto falls back to the rules, and says so


@pytest.mark.filterwarnings("ignore:OK-VQA stemming")
def test_okvqa_postprocessor_cuts_then_stems(monkeypatch):
    monkeypatch.setattr(stemming, "_nltk_stemmer_or_reason", lambda: (None, "no data"))
    assert postprocess_okvqa("bananas Question: what") == "banana"
    assert get_postprocessor("okvqa") is postprocess_okvqa


def test_unknown_postprocessor_lists_the_known_ones():
    with pytest.raises(KeyError, match="caption"):
        get_postprocessor("captions")
