"""Interleaved preprocessing: image/<image> pairing, assignment, filters, text building and tokenization."""

from __future__ import annotations

import copy
import itertools
import random
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from flamingo.data.interleaved import (
    InterleavedConfig,
    build_interleaved_text,
    build_pair_text,
    hungarian_assignment,
    preprocess_interleaved,
    tokenize_interleaved,
    tokenize_pair,
)
from flamingo.data.labels import make_labels
from flamingo.data.schema import EncodedImage, ImageInfo, InterleavedDocument
from flamingo.data.synthetic import COLOURS, encode_image

EOC, IMG = "<|endofchunk|>", "<image>"
COLOUR_LIST = sorted(COLOURS)
LOOSE = InterleavedConfig(min_image_bytes=0, single_image_drop_prob=0.0)


def _document(matches: list[tuple[int, float]], sentences: list[str], matrix=None) -> InterleavedDocument:
    """Image i is a flat square of colour COLOUR_LIST[i], matched to sentence matches[i][0]."""
    images = [encode_image(Image.new("RGB", (8, 8), COLOURS[COLOUR_LIST[i]])) for i in range(len(matches))]
    infos = [ImageInfo(f"{i}.png", s, sim) for i, (s, sim) in enumerate(matches)]
    return InterleavedDocument("d", sentences, infos, similarity_matrix=matrix, images=images)


def _colour(image: Image.Image) -> str:
    rgb = image.getpixel((0, 0))
    return next(name for name, value in COLOURS.items() if value == rgb)


def test_images_follow_token_order_for_a_non_monotone_assignment(tiny_tokenizer) -> None:
    sentences = [
        "The weather was mild all week.",
        "A red circle is shown here.",
        "Prices may vary.",
        "A blue bar.",
    ]
    document = _document([(3, 0.3), (1, 0.3)], sentences)  # image 0 -> sentence 3, image 1 -> sentence 1
    sample = preprocess_interleaved(document, LOOSE, random.Random(0), "</s>")
    assert sample is not None
    assert sample.text == (
        f"The weather was mild all week.{IMG}A red circle is shown here. Prices may vary.{EOC}{IMG}A blue bar.{EOC}</s>"
    )
    assert sample.image_indices == [1, 0] and sample.sentence_indices == [1, 3]
    assert [_colour(image) for image in sample.images] == [COLOUR_LIST[1], COLOUR_LIST[0]]
    tokens = tokenize_interleaved(sample.text, sample.images, tiny_tokenizer, max_tokens=40)
    image_id = tiny_tokenizer.convert_tokens_to_ids(IMG)
    assert int((tokens.input_ids == image_id).sum()) == len(tokens.images) == 2


def test_build_text_removes_first_eoc_and_spaces_around_special_tokens() -> None:
    text = build_interleaved_text(["a b", "c ", " d", "e"], [0, 2], eos_token="</s>")
    assert text == f"{IMG}a b c{EOC}{IMG}d e{EOC}</s>"


def _brute_force_best(similarity: np.ndarray) -> float:
    rows, cols = similarity.shape
    if rows <= cols:
        return max(
            sum(similarity[i, s] for i, s in enumerate(p)) for p in itertools.permutations(range(cols), rows)
        )
    return max(
        sum(similarity[i, s] for s, i in enumerate(p)) for p in itertools.permutations(range(rows), cols)
    )


def test_hungarian_matches_brute_force_on_small_random_matrices() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        similarity = rng.uniform(-0.1, 0.5, size=(rng.integers(1, 5), rng.integers(1, 6)))
        pairs = hungarian_assignment(similarity)
        assert len(pairs) == min(similarity.shape)
        assert len({i for i, _ in pairs}) == len({s for _, s in pairs}) == len(pairs)  # one-to-one
        assert sum(similarity[i, s] for i, s in pairs) == pytest.approx(_brute_force_best(similarity))


def test_hungarian_option_recomputes_the_assignment() -> None:
    matrix = [[0.5, 0.6], [0.1, 0.55]]  # per-image argmax would put both images on sentence 1
    document = _document([(1, 0.6), (0, 0.1)], ["first", "second"], matrix)
    stats: Counter[str] = Counter()
    stored = preprocess_interleaved(document, LOOSE, random.Random(0), "", stats)
    assert stored.image_indices == [0] and stored.sentence_indices == [1]
    assert stats == {"image_below_threshold": 1}
    config = InterleavedConfig(min_image_bytes=0, single_image_drop_prob=0.0, assignment="hungarian")
    recomputed = preprocess_interleaved(document, config, random.Random(0), "")
    assert recomputed.image_indices == [0, 1] and recomputed.sentence_indices == [0, 1]
    assert recomputed.text == f"{IMG}first{EOC}{IMG}second{EOC}"


def test_threshold_keeps_equal_similarity_and_drops_lower() -> None:
    document = _document([(0, 0.24), (1, 0.2399), (2, 0.9)], ["a", "b", "c"])
    stats: Counter[str] = Counter()
    sample = preprocess_interleaved(document, LOOSE, random.Random(0), "", stats)
    assert sample.image_indices == [0, 2] and sample.text == f"{IMG}a b{EOC}{IMG}c{EOC}"
    assert stats == {"image_below_threshold": 1}
    stats.clear()
    assert preprocess_interleaved(_document([(0, 0.1)], ["a"]), LOOSE, random.Random(0), "", stats) is None
    assert stats == {"image_below_threshold": 1, "no_images": 1}


def test_max_images_keeps_the_first_images_in_text_order() -> None:
    document = _document([(4, 0.3), (3, 0.3), (2, 0.3), (1, 0.3), (0, 0.3)], list("abcde"))
    config = InterleavedConfig(max_images=2, min_image_bytes=0)
    stats: Counter[str] = Counter()
    sample = preprocess_interleaved(document, config, random.Random(0), "", stats)
    assert sample.image_indices == [4, 3] and sample.text == f"{IMG}a{EOC}{IMG}b c d e{EOC}"
    assert stats == {"image_over_max": 3}


def test_two_images_on_one_sentence_keep_the_most_similar() -> None:
    sample = preprocess_interleaved(_document([(1, 0.3), (1, 0.5)], ["a", "b"]), LOOSE, random.Random(0), "")
    assert sample.image_indices == [1] and sample.text == f"a{IMG}b{EOC}"


def test_single_image_drop_is_deterministic_with_a_seeded_rng() -> None:
    document = _document([(0, 0.3)], ["only one"])
    config = InterleavedConfig(min_image_bytes=0)  # single_image_drop_prob=0.5
    rng, reference = random.Random(1234), random.Random(1234)
    kept = [preprocess_interleaved(document, config, rng, "") is not None for _ in range(200)]
    assert kept == [reference.random() >= 0.5 for _ in range(200)]
    assert 70 < sum(kept) < 130
    always = InterleavedConfig(min_image_bytes=0, single_image_drop_prob=1.0)
    stats: Counter[str] = Counter()
    assert preprocess_interleaved(document, always, random.Random(0), "", stats) is None
    assert stats == {"single_image_dropped": 1}
    two = _document([(0, 0.3), (1, 0.3)], ["a", "b"])
    assert preprocess_interleaved(two, always, random.Random(0), "") is not None  # only one-image documents


def test_small_images_are_dropped_only_when_their_size_is_known() -> None:
    document = _document([(0, 0.3), (1, 0.3), (2, 0.3)], ["a", "b", "c"])
    known = max(document.images[0].num_bytes, document.images[1].num_bytes)
    document.images[2] = EncodedImage.from_decoded(Image.new("RGB", (4, 4)))  # size unknown
    config = InterleavedConfig(min_image_bytes=known + 1, single_image_drop_prob=0.0)
    stats: Counter[str] = Counter()
    sample = preprocess_interleaved(document, config, random.Random(0), "", stats)
    assert sample.image_indices == [2] and stats == {"image_too_small": 2}


def test_tokenize_drops_images_whose_token_was_truncated(tiny_tokenizer) -> None:
    text = f"{IMG}one two{EOC}{IMG}three four{EOC}{IMG}five six{EOC}</s>"
    images = [Image.new("RGB", (4, 4), COLOURS[c]) for c in COLOUR_LIST[:3]]
    tokens = tokenize_interleaved(text, images, tiny_tokenizer, max_tokens=6)
    assert tiny_tokenizer.convert_ids_to_tokens(tokens.input_ids.tolist()) == [
        IMG,
        "one",
        "two",
        EOC,
        IMG,
        "three",
    ]
    assert tokens.images == images[:2]
    padded = tokenize_interleaved(text, images, tiny_tokenizer, max_tokens=16)
    assert padded.input_ids.shape == (16,) and padded.attention_mask.tolist() == [1] * 13 + [0] * 3
    assert padded.images == images
    left = copy.deepcopy(tiny_tokenizer)
    left.truncation_side = "left"
    assert tokenize_interleaved(text, images, left, max_tokens=6).images == images[2:]
    with pytest.raises(ValueError, match="has 3 <image> tokens but only 2 images"):
        tokenize_interleaved(text, images[:2], tiny_tokenizer, max_tokens=16)
    with pytest.raises(ValueError, match="does not know '<img>'"):
        tokenize_interleaved(text, images, tiny_tokenizer, max_tokens=16, image_token="<img>")


def test_pair_text_and_tokens(tiny_tokenizer) -> None:
    assert build_pair_text("  a red\n circle ", "</s>") == f"{IMG}a red circle{EOC}</s>"
    image = Image.new("RGB", (4, 4))
    short = tokenize_pair("a red circle", image, tiny_tokenizer)
    tokens = tiny_tokenizer.convert_ids_to_tokens(short.input_ids.tolist())
    assert tokens[:6] == [IMG, "a", "red", "circle", EOC, "</s>"] and len(tokens) == 32
    long = tokenize_pair(" ".join(["red"] * 50), image, tiny_tokenizer)
    assert long.input_ids.shape == (32,) and int(long.attention_mask.sum()) == 32 and len(long.images) == 1


def test_preprocessed_text_gives_the_documented_labels(tiny_tokenizer) -> None:
    sample = preprocess_interleaved(
        _document([(1, 0.3)], ["one two", "three"]), LOOSE, random.Random(0), "</s>"
    )
    tokens = tokenize_interleaved(sample.text, sample.images, tiny_tokenizer, max_tokens=8)
    ids = tokens.input_ids[None]
    labels = make_labels(ids, tokens.attention_mask[None], *tiny_tokenizer.convert_tokens_to_ids([IMG, EOC]))[
        0
    ].tolist()
    words = tiny_tokenizer.convert_ids_to_tokens(tokens.input_ids.tolist())
    assert words == ["one", "two", IMG, "three", EOC, "</s>", "<PAD>", "<PAD>"]
    eoc_id = tiny_tokenizer.convert_tokens_to_ids(EOC)
    assert labels == [-100, -100, -100, ids[0, 3].item(), eoc_id, -100, -100, -100]
    assert torch.equal(torch.tensor(labels) != -100, torch.tensor([0, 0, 0, 1, 1, 0, 0, 0], dtype=torch.bool))


def test_config_validates_and_round_trips() -> None:
    config = InterleavedConfig(assignment="hungarian", max_images=3)
    assert InterleavedConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="single_image_drop_prob"):
        InterleavedConfig(single_image_drop_prob=1.5)
    with pytest.raises(ValueError, match="field 'max_image': unknown field; did you mean 'max_images'"):
        InterleavedConfig.from_dict({"max_image": 3})
    with pytest.raises(
        ValueError, match=r"x\.json: field 'max_tokens': got 1000000000000; expected an integer"
    ):
        InterleavedConfig.from_dict({"max_tokens": 10**12}, source="x.json")
