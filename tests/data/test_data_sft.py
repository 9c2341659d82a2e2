"""Instruction data: the flamingo-sft/1 schema, rendering, and the answer-only label mask."""

from __future__ import annotations

import pytest
import torch

from flamingo.data.labels import make_response_labels, spans_to_token_mask
from flamingo.data.schema import SchemaError
from flamingo.data.sft import (
    ChatTemplate,
    conversation_from_dict,
    render_conversation,
    tokenize_conversation,
)

IMG, EOC, EOS, PAD = 9, 8, 2, 0
_ = -100


def _conversation(messages: list[dict], images: int = 3) -> dict:
    refs = [f"{i}.png" for i in range(images)]
    return {"format": "flamingo-sft/1", "id": "c0", "images": refs, "messages": messages}


def _image(index: int) -> dict:
    return {"type": "image", "image": index}


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


# Two turns and three images: two open the first turn, one sits inside the second.
TWO_TURNS = _conversation(
    [
        {"role": "user", "content": [_image(0), _image(1), _text("Are these the same colour?")]},
        {"role": "assistant", "content": "No: red and blue."},
        {"role": "user", "content": [_text("And this one"), _image(2), _text("?")]},
        {"role": "assistant", "content": [_text("A green square.")]},
    ]
)


def _supervised_text(conversation: dict, tokenizer, max_tokens: int) -> tuple[list[str], list[int], str]:
    """The text of each supervised token, the kept image indices, and the rendered text."""
    rendered = render_conversation(conversation_from_dict(conversation), eos_token="</s>")
    tokens, answers, order = tokenize_conversation(rendered, tokenizer, max_tokens)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    labels = make_response_labels(
        tokens.input_ids[None], tokens.attention_mask[None], answers[None], image_id
    )[0]
    encoded = tokenizer(rendered.text, max_length=max_tokens, truncation=True, return_offsets_mapping=True)
    kept = [rendered.text[a:b] for (a, b), label in zip(encoded["offset_mapping"], labels) if label != _]
    assert int((tokens.input_ids == image_id).sum()) == len(order)  # one kept image per <image> token
    return kept, order, rendered.text


def test_rendering_puts_opening_images_before_the_prefix_and_ends_each_answer_with_eoc():
    rendered = render_conversation(conversation_from_dict(TWO_TURNS), eos_token="</s>")
    assert rendered.text == (
        "<image><image>User: Are these the same colour? Assistant: No: red and blue.<|endofchunk|>"
        "User: And this one<image>? Assistant: A green square.<|endofchunk|></s>"
    )
    assert [rendered.text[a:b] for a, b in rendered.response_spans] == [
        "No: red and blue.<|endofchunk|>",
        "A green square.<|endofchunk|>",
    ]
    assert rendered.image_order == [0, 1, 2]
    custom = ChatTemplate(user_prefix="Q: ", assistant_prefix="\nA: ", separator="")
    prompt = render_conversation(
        conversation_from_dict(_conversation(TWO_TURNS["messages"][:3])), custom, for_generation=True
    )
    assert prompt.text.endswith("Q: And this one<image>?\nA:") and prompt.response_spans == []
    with pytest.raises(ValueError, match="must end with a user turn"):
        render_conversation(conversation_from_dict(TWO_TURNS), for_generation=True)


def test_only_the_answers_and_their_end_tokens_are_supervised_over_several_turns(tiny_tokenizer):
    kept, order, _ = _supervised_text(TWO_TURNS, tiny_tokenizer, 64)
    first = ["No", ":", "red", "and", "blue", ".", "<|endofchunk|>"]
    assert kept == [*first, "A", "green", "square", ".", "<|endofchunk|>"]
    assert order == [0, 1, 2]


def test_truncation_keeps_the_answers_before_the_cut_and_only_the_images_whose_token_survived(
    tiny_tokenizer,
):
    _, _, text = _supervised_text(TWO_TURNS, tiny_tokenizer, 64)
    cut = len(tiny_tokenizer(text.split("this one")[0]).input_ids) + 1  # ends before the third <image>
    kept, order, _ = _supervised_text(TWO_TURNS, tiny_tokenizer, cut)
    assert kept == ["No", ":", "red", "and", "blue", ".", "<|endofchunk|>"] and order == [0, 1]
    cut_in_answer = len(tiny_tokenizer(text.split(" square")[0]).input_ids)
    kept, order, _ = _supervised_text(TWO_TURNS, tiny_tokenizer, cut_in_answer)
    assert kept[-3:] == ["<|endofchunk|>", "A", "green"] and order == [
        0,
        1,
        2,
    ]  # a cut answer stays supervised
    tiny_tokenizer.truncation_side = "left"
    try:
        kept, order, _ = _supervised_text(TWO_TURNS, tiny_tokenizer, 12)
    finally:
        tiny_tokenizer.truncation_side = "right"
    assert order == [2] and kept == ["A", "green", "square", ".", "<|endofchunk|>"]


def test_response_labels_never_supervise_images_or_padding_even_inside_a_span():
    input_ids = torch.tensor([[IMG, 10, 11, 12, IMG, 13, EOC, EOS, PAD, PAD]])
    attention = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 0, 0]])
    offsets = torch.tensor([[0, 7], [7, 9], [9, 12], [13, 15], [15, 22], [22, 25], [25, 39], [39, 43]])
    offsets = torch.cat([offsets, torch.zeros(2, 2, dtype=torch.long)])  # padding has empty spans
    mask = spans_to_token_mask(offsets, [(14, 39)])  # starts inside token 3: a straddling token counts
    assert mask.tolist() == [False, False, False, True, True, True, True, False, False, False]
    labels = make_response_labels(input_ids, attention, mask[None] | ~attention.bool(), IMG)
    assert labels.tolist() == [[_, _, _, 12, _, 13, EOC, _, _, _]]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["messages"][0].update(role="system"), "messages[0].role"),
        (lambda d: d["messages"][1].update(content=[_image(0)]), "messages[1].content"),
        (lambda d: d["messages"][2].update(content=[_image(7)]), "messages[2].content"),
        (lambda d: d["messages"].pop(0), "messages"),
        (lambda d: d.update(format="flamingo-interleaved/1"), "format"),
    ],
)
def test_schema_errors_name_the_field_and_the_fix(change, field):
    import copy

    data = copy.deepcopy(TWO_TURNS)
    change(data)
    with pytest.raises(SchemaError, match=r"shard\.tar \[k\]: field") as error:
        conversation_from_dict(data, "shard.tar", "k")
    assert error.value.issue.field == field and error.value.issue.fix
