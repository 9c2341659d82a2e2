"""Generation: cached = uncached = a plain greedy loop; beams; batches equal single rows; media reuse."""

import pytest
import torch
from model_support import make_images

from flamingo.model.tiny import build_tiny_flamingo
from flamingo.processing import FlamingoProcessor

PROMPTS = [
    "<image>Output: a red circle.<|endofchunk|><image>Output:",
    "the<image>Question: what is it? Short answer:",
    "<image>Output: two<|endofchunk|><image>Output: blue<|endofchunk|><image>Output:",
]
COUNTS = [2, 1, 3]


def greedy_by_forward(model, images, ids, steps):
    """Reference decoding: full recomputation with Flamingo.forward at every step."""
    for _ in range(steps):
        logits = model(images, ids).logits[:, -1]
        logits[:, model.config.tokens.image_id] = -float("inf")
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "opt", "mpt", "qwen2"])
def test_cached_and_uncached_greedy_agree(family):
    model = build_tiny_flamingo(family, gate_init=0.8, every_n=2)
    ids = model.tokenizer([PROMPTS[0]], return_tensors="pt").input_ids
    images = make_images(1, 2)
    kwargs = {"max_new_tokens": 8, "do_sample": False, "eos_token_id": None, "min_new_tokens": 8}
    cached = model.generate(images, ids, use_cache=True, **kwargs)
    uncached = model.generate(images, ids, use_cache=False, **kwargs)
    with torch.no_grad():
        looped = greedy_by_forward(model, images, ids, 8)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, looped)


def test_media_keys_and_values_are_computed_once_per_prompt():
    model = build_tiny_flamingo("llama", gate_init=0.8)
    calls = {"vision": 0, "to_kv": 0}
    model.vision.register_forward_hook(lambda *a: calls.__setitem__("vision", calls["vision"] + 1))
    block = model.cross_attn["0"]
    block.attn.to_kv.register_forward_hook(lambda *a: calls.__setitem__("to_kv", calls["to_kv"] + 1))
    ids = model.tokenizer([PROMPTS[0]], return_tensors="pt").input_ids
    model.generate(make_images(1, 2), ids, max_new_tokens=6, min_new_tokens=6, num_beams=3)
    assert calls == {"vision": 1, "to_kv": 1}


def test_beam_search_matches_expanded_media():
    """Folding beams onto one copy of the media gives the same beams as giving every beam its own copy."""
    model = build_tiny_flamingo("llama", gate_init=0.8)
    ids = model.tokenizer([PROMPTS[0]], return_tensors="pt").input_ids
    images = make_images(1, 2)
    beams = model.generate(
        images, ids, max_new_tokens=6, num_beams=3, num_return_sequences=3, eos_token_id=None
    )
    assert beams.shape == (3, ids.shape[1] + 6)
    with torch.no_grad():
        scores = model(images.expand(3, -1, -1, -1, -1, -1), beams).logits.log_softmax(-1)
        manual = model(input_ids=beams, media=model.encode_media(images)).logits.log_softmax(-1)
    assert torch.allclose(scores, manual, atol=1e-5)


def test_batch_equals_single_rows():
    model = build_tiny_flamingo("llama", gate_init=0.8)
    processor = FlamingoProcessor(model.tokenizer, lambda ims: torch.stack(ims), padding_side="left")
    pictures = [list(make_images(1, n, seed=i)[0, :, 0]) for i, n in enumerate(COUNTS)]
    rows = [(p, ims) for p, ims in zip(PROMPTS, pictures)]
    batch = processor(rows)
    kwargs = {"max_new_tokens": 6, "do_sample": False}
    batched = model.generate(
        batch["images"], batch["input_ids"], batch["attention_mask"], image_mask=batch["image_mask"], **kwargs
    )
    with torch.no_grad():
        logits = model(
            batch["images"], batch["input_ids"], batch["attention_mask"], image_mask=batch["image_mask"]
        ).logits
    for i, row in enumerate(rows):
        single = processor([row])
        out = model.generate(single["images"], single["input_ids"], single["attention_mask"], **kwargs)
        width = single["input_ids"].shape[1]
        new_single = out[0, width:]
        new_batched = batched[i, batch["input_ids"].shape[1] :][: len(new_single)]
        assert torch.equal(new_single, new_batched)
        with torch.no_grad():
            one = model(single["images"], single["input_ids"]).logits[0]
        assert (logits[i, -width:] - one).abs().max() < 1e-5


def test_generate_accepts_hf_options():
    from transformers import GenerationConfig, TextIteratorStreamer

    model = build_tiny_flamingo("gpt2", gate_init=0.8)
    ids = model.tokenizer([PROMPTS[0]], return_tensors="pt").input_ids
    images = make_images(1, 2)
    config = GenerationConfig(max_new_tokens=5, do_sample=True, top_k=5, num_return_sequences=2)
    sampled = model.generate(images, ids, generation_config=config)
    assert sampled.shape[0] == 2
    streamer = TextIteratorStreamer(model.tokenizer, skip_prompt=True)
    model.generate(images, ids, max_new_tokens=4, streamer=streamer)
    assert isinstance("".join(streamer), str)
    stopped = model.generate(images, ids, max_new_tokens=20, stop_strings=["a"])
    assert stopped.shape[1] <= ids.shape[1] + 20
    assert not (sampled[:, ids.shape[1] :] == model.config.tokens.image_id).any()


def test_prompt_lookup_decoding_mixes_multi_token_and_one_token_steps_and_matches_greedy():
    """Prompt-lookup decoding checks several candidate tokens per LM call after the prompt; between them come
    one-token steps, which take the fixed one-image plan. The result is greedy decoding's, token for token."""
    model = build_tiny_flamingo("llama", gate_init=0.8)
    text = "<image>Output: a red circle.<|endofchunk|>" * 2 + "<image>Output:"
    ids = model.tokenizer([text], return_tensors="pt").input_ids
    images = make_images(1, 3)
    kwargs = {"max_new_tokens": 12, "min_new_tokens": 12, "do_sample": False}
    greedy = model.generate(images, ids, **kwargs)
    widths = []
    hook = model.lm.register_forward_pre_hook(
        lambda module, args, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    looked_up = model.generate(images, ids, prompt_lookup_num_tokens=3, **kwargs)
    hook.remove()
    assert torch.equal(looked_up, greedy)
    after_prompt = widths[1:]
    assert any(w > 1 for w in after_prompt) and any(w == 1 for w in after_prompt)


def test_generation_stops_at_end_of_chunk_by_default():
    model = build_tiny_flamingo("llama", gate_init=0.8)
    eoc = model.config.tokens.eoc_id

    def favour_eoc(module, args, logits):  # after Flamingo's own head hook: make <|endofchunk|> the argmax
        logits = logits.clone()
        logits[..., eoc] += 1e4
        return logits

    model.lm.lm_head.register_forward_hook(favour_eoc)
    ids = model.tokenizer([PROMPTS[0]], return_tensors="pt").input_ids
    out = model.generate(make_images(1, 2), ids, max_new_tokens=10)
    generated = out[0, ids.shape[1] :].tolist()
    assert eoc in generated and generated.index(eoc) == len(generated) - 1


def test_suppressed_tokens_are_never_generated():
    """<image> and the caller's suppress_tokens (argument or GenerationConfig) never appear, even when they
    would be the argmax; the caller's own logits processors still run."""
    from transformers import GenerationConfig, LogitsProcessor

    model = build_tiny_flamingo("llama", gate_init=0.8)
    image_id, banned = model.config.tokens.image_id, 7

    def favour(module, args, logits):  # runs after Flamingo's head hook
        logits = logits.clone()
        logits[..., image_id] += 1e4
        logits[..., banned] += 5e3
        return logits

    model.lm.lm_head.register_forward_hook(favour)
    seen = []

    class Record(LogitsProcessor):
        def __call__(self, input_ids, scores):
            seen.append(scores.shape)
            return scores

    ids = model.tokenizer([PROMPTS[0]], return_tensors="pt").input_ids
    images = make_images(1, 2)
    plain = model.generate(images, ids, max_new_tokens=3, eos_token_id=None)
    assert (plain[0, ids.shape[1] :] == banned).all()  # only <image> is suppressed by default
    by_kwarg = model.generate(
        images,
        ids,
        max_new_tokens=3,
        eos_token_id=None,
        suppress_tokens=[banned],
        logits_processor=[Record()],
    )
    config = GenerationConfig(max_new_tokens=3, suppress_tokens=[banned])
    by_config = model.generate(images, ids, generation_config=config, eos_token_id=None)
    for out in (plain, by_kwarg, by_config):
        assert not (out[0, ids.shape[1] :] == image_id).any()
    for out in (by_kwarg, by_config):
        assert not (out[0, ids.shape[1] :] == banned).any()
    assert len(seen) == 3
    assert config.suppress_tokens == [banned]  # the caller's config is not modified


@pytest.mark.parametrize("rows", [1, 2, 3, 16])
@pytest.mark.parametrize("bias", [False, True])
def test_skinny_linear_equals_linear(rows, bias):
    from flamingo.model.kernels import skinny_linear

    g = torch.Generator().manual_seed(rows)
    head = torch.nn.Linear(32, 1000, bias=bias)
    x = torch.randn(rows, 1, 32, generator=g)
    expected = head(x)
    got = skinny_linear(x, head.weight, head.bias)
    assert got.shape == expected.shape == (rows, 1, 1000) and got.is_contiguous()
    assert (got - expected).abs().max().item() < 1e-5


def test_decode_steps_take_the_skinny_head_with_the_same_logits(monkeypatch):
    """No-graph CPU calls with few head rows use skinny_linear; the logits (new-token rows included) equal the
    plain head's, and calls with a graph or many rows keep the plain head."""
    import flamingo.model.flamingo as fm

    model = build_tiny_flamingo("llama", gate_init=0.8)
    calls = []
    original = fm.skinny_linear
    monkeypatch.setattr(fm, "skinny_linear", lambda *a: calls.append(a[0].shape) or original(*a))
    ids = model.tokenizer([PROMPTS[0]], return_tensors="pt").input_ids
    images = make_images(1, 2)
    with torch.no_grad():
        last = model(images, ids, logits_to_keep=1).logits  # (1, 1, vocab): one row
        assert calls == [(1, 1, 64)]
        full = model(images, ids).logits  # many rows: the plain head
        assert len(calls) == 1
    assert (last[:, -1] - full[:, -1]).abs().max().item() < 1e-5
    image_id = model.config.tokens.image_id  # an added row, from the trainable output rows
    assert torch.isclose(last[0, -1, image_id], full[0, -1, image_id], atol=1e-6)
    model(images, ids, logits_to_keep=1)  # a graph: plain head
    assert len(calls) == 1
    model.generate(images, ids, max_new_tokens=4, min_new_tokens=4, num_beams=3)
    assert len(calls) == 5 and calls[-1][0] == 3  # prompt + 3 steps, each over the 3 beams
