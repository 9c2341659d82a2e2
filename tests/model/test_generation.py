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
