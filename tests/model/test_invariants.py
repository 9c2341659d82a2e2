"""Behavioural invariants of the Flamingo model on tiny random models of several LM families."""

import copy

import pytest
import torch
from model_support import make_images

from flamingo.model.cross_attention import media_positions
from flamingo.model.flamingo import _ACTIVE
from flamingo.model.tiny import build_tiny_flamingo

FAMILIES = ["llama", "mistral", "qwen2", "gemma", "phi3", "gpt2", "gpt_neox", "opt", "mpt", "gptj", "falcon"]
PROMPT = "a cat<image>Output: a red circle.<|endofchunk|><image>Output: two"


def encode(model, text, batch=1):
    return model.tokenizer([text] * batch, return_tensors="pt").input_ids


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_gates_give_the_bare_lm(family):
    model = build_tiny_flamingo(family, gate_init=0.0)
    bare = copy.deepcopy(model.lm)
    for handle in model._hooks:  # the copy carries no Flamingo behaviour: detach its inherited hooks
        handle.remove()
    model.attach()
    bare._forward_pre_hooks.clear()
    for module in bare.modules():
        module._forward_pre_hooks.clear()
        module._forward_hooks.clear()
    ids = encode(model, PROMPT)
    with torch.no_grad():
        ours = model(make_images(1, 2), ids).logits
        reference = bare(input_ids=ids).logits
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max().item() < 1e-5


@pytest.mark.parametrize("family", ["llama", "gpt2", "mpt"])
def test_tokens_before_first_image_ignore_images(family):
    model = build_tiny_flamingo(family, gate_init=0.7)
    ids = encode(model, PROMPT)
    first = (ids[0] == model.config.tokens.image_id).nonzero()[0].item()
    with torch.no_grad():
        a = model(make_images(1, 2, seed=1), ids).logits
        b = model(make_images(1, 2, seed=2), ids).logits
    assert torch.equal(a[:, :first], b[:, :first])
    assert (a[:, first:] - b[:, first:]).abs().max() > 1e-4


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "opt"])
def test_changing_image_k_changes_only_tokens_that_see_it(family):
    model = build_tiny_flamingo(family, gate_init=0.7)
    ids = encode(model, PROMPT)
    positions = media_positions(ids, model.config.tokens.image_id)[0]
    images = make_images(1, 2, seed=1)
    changed = images.clone()
    changed[:, 1] = make_images(1, 1, seed=9)[:, 0]
    with torch.no_grad():
        a = model(images, ids).logits[0]
        b = model(changed, ids).logits[0]
    diff = (a - b).abs().amax(-1)
    assert diff[positions < 2].max().item() == 0.0  # tokens that cannot see image 2 are untouched
    assert (diff[positions == 2] > 1e-5).all()
    # Inside one block the effect is exactly local: only tokens whose latest image is image 2 move.
    block = model.cross_attn[str(model.xattn_indices[0])]
    x = torch.randn(1, ids.shape[1], model.lm.get_input_embeddings().embedding_dim)
    with torch.no_grad():
        out_a, _ = block(x, positions[None], model.encode_media(images))
        out_b, _ = block(x, positions[None], model.encode_media(changed))
    moved = (out_a - out_b).abs().amax(-1)[0] > 0
    assert torch.equal(moved, positions == 2)


def test_all_previous_policy_sees_every_earlier_image():
    model = build_tiny_flamingo("llama", gate_init=0.7, media_policy="all_previous")
    ids = encode(model, PROMPT)
    positions = media_positions(ids, model.config.tokens.image_id)
    images = make_images(1, 2, seed=1)
    changed = images.clone()
    changed[:, 0] = make_images(1, 1, seed=5)[:, 0]
    block = model.cross_attn["0"]
    x = torch.randn(1, ids.shape[1], 64)
    with torch.no_grad():
        out_a, _ = block(x, positions, model.encode_media(images))
        out_b, _ = block(x, positions, model.encode_media(changed))
    moved = (out_a - out_b).abs().amax(-1)[0] > 0
    assert torch.equal(moved, positions[0] >= 1)  # image 1 is seen by every token after it, under this policy


def test_tokens_without_image_get_exactly_zero_attention():
    model = build_tiny_flamingo("llama", gate_init=0.7)
    block = model.cross_attn["0"]
    x = torch.randn(1, 5, 64)
    positions = torch.tensor([[0, 0, 1, 1, 1]])
    media = model.encode_media(make_images(1, 1))
    with torch.no_grad():
        with_media, _ = block(x, positions, media)
        no_media, _ = block(x, None, None)  # feed-forward branch only
    assert torch.equal(with_media[:, :2], no_media[:, :2])


def test_more_image_tokens_than_images_is_a_clear_error():
    model = build_tiny_flamingo("llama", gate_init=0.7)
    ids = encode(model, PROMPT)
    with pytest.raises(ValueError, match="row 0 has 2 <image> tokens but 1 images"):
        model(make_images(1, 1), ids)
    assert not _ACTIVE.get()


def test_exception_leaves_no_state_behind():
    model = build_tiny_flamingo("llama", gate_init=0.7)
    ids = encode(model, PROMPT)
    images = make_images(1, 2)
    with torch.no_grad():
        before = model(images, ids).logits

        def fail(module, args, output):
            raise RuntimeError("simulated failure inside the LM")

        handle = model.lm.model.layers[-1].register_forward_hook(fail)
        with pytest.raises(RuntimeError, match="simulated"):
            model(images, ids)
        handle.remove()
        assert not _ACTIVE.get()
        after = model(images, ids).logits
        text_only = model(None, encode(model, "a cat"))
    assert torch.equal(before, after)
    assert text_only.logits.shape[1] == encode(model, "a cat").shape[1]


def test_encode_media_output_can_be_passed_back():
    model = build_tiny_flamingo("gpt2", gate_init=0.7)
    ids = encode(model, PROMPT)
    images = make_images(1, 2)
    with torch.no_grad():
        direct = model(images, ids).logits
        media = model.encode_media(images)
        reused = model(input_ids=ids, media=media).logits
    assert torch.equal(direct, reused)


def test_empty_image_slots_are_not_encoded():
    model = build_tiny_flamingo("llama", gate_init=0.7)
    seen = []
    model.vision.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    images = make_images(2, 3)
    mask = torch.tensor([[True, False, False], [True, True, True]])
    with torch.no_grad():
        media = model.encode_media(images, mask)
    assert seen == [4]
    assert media[0, 1:].abs().max() == 0


def test_video_frames_with_frame_embeddings():
    model = build_tiny_flamingo("llama", gate_init=0.7, max_frames=4)
    ids = encode(model, "<image>Output: a clip")
    video = torch.randn(1, 1, 3, 3, 32, 32)  # (b, t, f=3, c, h, w)
    with torch.no_grad():
        logits = model(video, ids).logits
        shuffled = model(video[:, :, [2, 1, 0]], ids).logits
    assert torch.isfinite(logits).all()
    assert (logits - shuffled).abs().max() > 1e-6  # frame order matters through the frame embeddings
    with pytest.raises(ValueError, match="max_frames"):
        model(torch.randn(1, 1, 5, 3, 32, 32), ids)


def test_bfloat16_forward_matches_float32_roughly():
    model = build_tiny_flamingo("llama", gate_init=0.7)
    ids = encode(model, PROMPT)
    images = make_images(1, 2)
    with torch.no_grad():
        fp32 = model(images, ids).logits
        bf16 = model.to(torch.bfloat16)(images.bfloat16(), ids).logits
    assert bf16.dtype == torch.bfloat16
    assert (bf16.float() - fp32).abs().max() < 0.1
