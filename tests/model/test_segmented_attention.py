"""Segmented cross-attention (policy ``previous``) computes exactly what the dense masked attention computes."""

import pytest
import torch
from model_support import make_images

from flamingo.model.cross_attention import MediaRouting, fixed_image, media_positions, plan_routing
from flamingo.model.tiny import build_tiny_flamingo
from flamingo.processing import FlamingoProcessor

PROMPTS = [
    "<image>Output: a red circle.<|endofchunk|><image>Output: two<|endofchunk|><image>Output:",
    "the start<image>Question: what is it? Short answer:",
    "<image>A<|endofchunk|><image>Output: blue and a long tail of words here<|endofchunk|><image>x<image>y",
]
COUNTS = [3, 1, 4]


def batch(model, padding_side="left"):
    processor = FlamingoProcessor(model.tokenizer, lambda ims: torch.stack(ims), padding_side=padding_side)
    pictures = [list(make_images(1, n, seed=i)[0, :, 0]) for i, n in enumerate(COUNTS)]
    return processor(list(zip(PROMPTS, pictures)))


def test_plan_groups_queries_by_the_image_they_see():
    positions = torch.tensor([[0, 1, 1, 2, 2, 2], [1, 1, 1, 1, 0, 0]])  # second row: e.g. padding after
    plan = plan_routing(positions, num_slots=2, num_latents=3, policy="previous", segmented=True)
    seg = plan.segments
    assert plan.mask is None and seg is not None
    assert seg.media.tolist() == [0, 1, 2]  # (row 0, slot 0), (row 0, slot 1), (row 1, slot 0); t = 2
    dummy = positions.numel()
    assert seg.index.tolist() == [[1, 2, dummy, dummy], [3, 4, 5, dummy], [6, 7, 8, 9]]
    # Every query that sees an image appears exactly once; the others never.
    assert sorted(seg.tokens.tolist()) == [1, 2, 3, 4, 5, 6, 7, 8, 9]


def test_plan_chooses_dense_when_segments_do_not_pay():
    positions = torch.tensor([[0, 1, 1, 1]])
    assert plan_routing(positions, 1, 4, "previous").mask is not None  # one image slot: nothing to save
    assert plan_routing(positions, 8, 4, "all_previous").mask is not None  # other policies are dense
    many = torch.arange(1, 33).repeat_interleave(10)[None]  # 32 images, 10 tokens each
    assert plan_routing(many, 32, 4, "previous").segments is not None
    assert (
        plan_routing(
            torch.zeros(1, 4, dtype=torch.long), 2, 4, "previous", segmented=True
        ).segments.index.numel()
        == 0
    )


@pytest.mark.parametrize("family", ["llama", "gpt2", "mpt"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_forward_and_gradients_match_dense(family, padding_side):
    model = build_tiny_flamingo(family, gate_init=0.7)
    inputs = batch(model, padding_side)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    results = []
    for segmented in (False, True):
        model.segmented_attention = segmented
        model.zero_grad(set_to_none=True)
        out = model(
            inputs["images"],
            inputs["input_ids"],
            inputs["attention_mask"],
            labels,
            image_mask=inputs["image_mask"],
            return_logits=True,
        )
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.logits.detach(), out.loss.item(), grads))
    (dense_logits, dense_loss, dense_grads), (seg_logits, seg_loss, seg_grads) = results
    keep = inputs["attention_mask"].bool()
    assert (dense_logits - seg_logits)[keep].abs().max().item() < 1e-5
    assert abs(dense_loss - seg_loss) < 1e-6
    assert dense_grads.keys() == seg_grads.keys() and any("cross_attn" in n for n in seg_grads)
    for name, grad in dense_grads.items():
        assert torch.allclose(grad, seg_grads[name], atol=1e-6), name


def test_single_block_output_matches_dense_exactly_where_no_image_is_seen():
    model = build_tiny_flamingo("llama", gate_init=0.7)
    block = model.cross_attn["0"]
    ids = model.tokenizer([PROMPTS[2]], return_tensors="pt").input_ids
    positions = media_positions(ids, model.config.tokens.image_id)
    media = model.encode_media(make_images(1, 4))
    x = torch.randn(1, ids.shape[1], 64)
    with torch.no_grad():
        dense, _ = block(x, plan_routing(positions, 4, media.shape[2], "previous", segmented=False), media)
        seg, _ = block(x, plan_routing(positions, 4, media.shape[2], "previous", segmented=True), media)
    assert torch.allclose(dense, seg, atol=1e-6)
    before = positions[0] == 0
    assert torch.equal(dense[0, before], seg[0, before])


def test_gathered_keys_match_dense_for_every_query():
    """Decode-step routing: each query gathers its own image's keys; rows of several queries (beams), images
    at different slots and queries that see no image (exactly zero) all agree with the dense mask."""
    model = build_tiny_flamingo("llama", gate_init=0.7)
    block = model.cross_attn["0"]
    media = model.encode_media(make_images(2, 3))  # (2, 3, l, d)
    positions = torch.tensor([[0, 1, 3, 2], [2, 2, 0, 1]])  # (b, q): 1-based image each query sees
    x = torch.randn(2, 4, 64)
    with torch.no_grad():
        dense, _ = block(x, plan_routing(positions, 3, media.shape[2], "previous", segmented=False), media)
        plan = plan_routing(positions, 3, media.shape[2], "previous", gather=True)
        assert plan.gather is not None and plan.gather.numel() == 8 * media.shape[2]
        gathered, _ = block(x, plan, media)
    assert torch.allclose(dense, gathered, atol=1e-6)
    attn_only = block.attn(x, block.attn.media_kv(media), plan)
    assert torch.equal(attn_only[positions == 0], torch.zeros(2, 64))
    assert plan_routing(positions, 3, 4, "all_previous", gather=True).mask is not None  # dense there


@pytest.mark.parametrize("beams", [1, 3])
def test_generation_matches_dense(beams):
    model = build_tiny_flamingo("llama", gate_init=0.8)
    inputs = batch(model)
    kwargs = {"max_new_tokens": 6, "min_new_tokens": 6, "num_beams": beams, "do_sample": False}
    outputs = []
    # None, the default: segments for the prompt, one image per new token
    for segmented in (False, True, None):
        model.segmented_attention = segmented
        outputs.append(
            model.generate(
                inputs["images"],
                inputs["input_ids"],
                inputs["attention_mask"],
                image_mask=inputs["image_mask"],
                **kwargs,
            )
        )
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])


def test_every_image_segments_take_views_and_match_dense():
    """When each image of every row is seen (one prompt, all its images), the segments are the images in order:
    the keys are views (no gather) and the outputs and gradients equal the dense attention's."""
    seen = plan_routing(torch.tensor([[1, 1, 2, 2], [1, 2, 2, 2]]), 2, 3, "previous", segmented=True)
    assert seen.segments.every_image and seen.segments.media.tolist() == [0, 1, 2, 3]
    partial = plan_routing(torch.tensor([[0, 1, 1, 2, 2, 2], [1, 1, 1, 1, 0, 0]]), 2, 3, "previous", True)
    assert not partial.segments.every_image

    model = build_tiny_flamingo("llama", gate_init=0.7)
    block = model.cross_attn["0"]
    ids = model.tokenizer([PROMPTS[0], PROMPTS[0]], return_tensors="pt").input_ids
    positions = media_positions(ids, model.config.tokens.image_id)
    with torch.no_grad():
        media = model.encode_media(make_images(2, 3))
    x = torch.randn(2, ids.shape[1], 64)
    outputs, grads = [], []
    for segmented in (False, True):
        plan = plan_routing(positions, 3, media.shape[2], "previous", segmented=segmented)
        assert segmented is False or plan.segments.every_image
        block.zero_grad(set_to_none=True)
        out, _ = block(x, plan, media)
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append(block.attn.to_kv.weight.grad.clone())
        with torch.no_grad():
            assert torch.allclose(block(x, plan, media)[0], out, atol=1e-6)
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_one_image_plan_matches_dense_for_beams_and_a_row_without_images():
    """Decode steps of generate(): each prompt's queries (its beams, folded) attend to one fixed image."""
    torch.manual_seed(0)
    model = build_tiny_flamingo("llama", gate_init=0.8)
    block = model.cross_attn["0"]
    media = model.encode_media(make_images(2, 3))  # (2, 3, l, d)
    positions = torch.tensor([[2, 2, 2], [0, 0, 0]])  # (b, e): row 1 has seen no image yet
    x = torch.randn(6, 1, 64)  # (b*e, 1, d): three beams per prompt, one new token each
    plan = fixed_image(positions[:, 0], x.dtype)
    assert plan.slot.tolist() == [1, 0] and plan.seen.flatten().tolist() == [1.0, 0.0]
    assert fixed_image(torch.tensor([1, 3]), x.dtype).seen is None  # every row has an image: no mask
    with torch.no_grad():
        dense, _ = block(x, plan_routing(positions, 3, media.shape[2], "previous", segmented=False), media)
        routing = MediaRouting(positions, fixed=plan)
        fixed, selected = block(x, routing, media)  # picks each row's image from all keys/values
        again, same = block(x, routing, media, selected)  # a later step: given the picked ones
    assert selected[0].shape == (2, 2, media.shape[2], 16) and selected[0].is_contiguous()
    assert same is selected
    assert torch.allclose(dense, fixed, atol=1e-6) and torch.equal(fixed, again)
    with torch.no_grad():
        branch = block.attn.attend_one_image(x.view(2, 3, 64), selected) * plan.seen
    assert torch.equal(branch[1], torch.zeros(3, 64))  # the row without an image gets exactly zero


@pytest.mark.parametrize("beams", [1, 3])
def test_generation_with_a_text_only_row_matches_dense_and_single_rows(beams):
    """A row whose text has no <image> (though it was given pictures) must ignore them at every decode step."""
    model = build_tiny_flamingo("llama", gate_init=0.8)
    texts = ["a plain sentence with no picture", "<image>Output: a red circle.<|endofchunk|><image>Output:"]
    rows = [model.tokenizer(t, return_tensors="pt").input_ids[0] for t in texts]
    width = max(len(r) for r in rows)
    pad = model.config.tokens.pad_id
    ids = torch.stack([torch.cat([torch.full((width - len(r),), pad), r]) for r in rows])  # left padding
    mask = torch.stack([torch.arange(width) >= width - len(r) for r in rows]).long()
    images = make_images(2, 2, seed=3)  # row 0 gets pictures too, which its text never refers to
    kwargs = {"max_new_tokens": 6, "min_new_tokens": 6, "num_beams": beams, "do_sample": False}
    fixed = model.generate(images, ids, mask, **kwargs)  # decode steps take the one-image plan
    model.segmented_attention = False  # every step dense, with a mask
    assert torch.equal(fixed, model.generate(images, ids, mask, **kwargs))
    model.segmented_attention = None
    for row, r in enumerate(rows):
        single = model.generate(images[row : row + 1], r[None], **kwargs)
        assert torch.equal(fixed[row, width - len(r) :], single[0])
