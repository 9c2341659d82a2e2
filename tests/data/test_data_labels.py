"""make_labels on hand-made sequences, and against a per-token reference on random ones."""

from __future__ import annotations

import pytest
import torch

from flamingo.data.labels import make_labels

IMG, EOC, EOS, PAD = 9, 8, 2, 0
_ = -100  # ignored


def test_interleaved_labels_with_padding_on_both_sides_and_several_chunks() -> None:
    input_ids = torch.tensor(
        [
            [
                PAD,
                PAD,
                10,
                IMG,
                11,
                12,
                EOC,
                13,
                IMG,
                14,
                EOC,
                EOS,
            ],  # left padded, text before the first image
            [IMG, 11, EOC, IMG, 12, EOC, 13, 14, IMG, 15, PAD, PAD],  # right padded, cut after the last image
            [10, 11, EOC, EOS, 12, 13, 14, 15, 16, 17, 18, 19],  # no image: nothing is supervised
            [
                EOC,
                EOC,
                IMG,
                IMG,
                11,
                EOC,
                EOS,
                10,
                EOC,
                IMG,
                12,
                EOC,
            ],  # pads that share the EOC id; two images
        ]
    )
    attention_mask = torch.tensor(
        [
            [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0],
            [1] * 12,
            [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        ]
    )
    expected = torch.tensor(
        [
            [_, _, _, _, 11, 12, EOC, _, _, 14, EOC, _],
            [_, 11, EOC, _, 12, EOC, _, _, _, 15, _, _],
            [_] * 12,
            [_, _, _, _, 11, EOC, _, _, _, _, 12, EOC],
        ]
    )
    before = input_ids.clone()
    labels = make_labels(input_ids, attention_mask, IMG, EOC)
    assert labels.dtype == torch.int64 and torch.equal(labels, expected)
    assert torch.equal(input_ids, before)


def test_pair_labels_ignore_only_padding_and_image() -> None:
    input_ids = torch.tensor([[IMG, 11, 12, EOC, EOS, PAD], [PAD, IMG, 13, EOC, EOS, 14]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]])
    expected = torch.tensor([[_, 11, 12, EOC, EOS, _], [_, _, 13, EOC, EOS, 14]])
    assert torch.equal(make_labels(input_ids, attention_mask, IMG, EOC, mode="pairs"), expected)
    custom = make_labels(input_ids, attention_mask, IMG, EOC, ignore_index=-1, mode="pairs")
    assert torch.equal(custom, expected.masked_fill(expected == _, -1))


def _reference(ids: list[int], mask: list[int]) -> list[int]:
    """The rule token by token: supervised inside a chunk (after an <image>, through its <|endofchunk|>)."""
    out, inside = [], False
    for token, real in zip(ids, mask):
        if not real:
            out.append(_)
            continue
        if token == IMG:
            inside = True
            out.append(_)
            continue
        out.append(token if inside else _)
        if token == EOC:
            inside = False
    return out


def test_vectorised_rule_equals_the_token_by_token_rule() -> None:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(7, 13, (64, 20), generator=generator)  # ids 7..12 hit IMG and EOC often
    lengths = torch.randint(0, 21, (64,), generator=generator)
    attention_mask = (torch.arange(20)[None] < lengths[:, None]).long()
    attention_mask[32:] = attention_mask[32:].flip(1)  # half of the rows left padded
    labels = make_labels(input_ids, attention_mask, IMG, EOC)
    for row in range(64):
        assert labels[row].tolist() == _reference(input_ids[row].tolist(), attention_mask[row].tolist())


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="must both be"):
        make_labels(torch.zeros(3, dtype=torch.long), torch.ones(3), IMG, EOC)
    with pytest.raises(ValueError, match="mode must be"):
        make_labels(torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3), IMG, EOC, mode="other")  # type: ignore[arg-type]
