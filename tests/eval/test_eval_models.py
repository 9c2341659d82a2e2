"""``FlamingoEvalModel``: its shortcuts (prompt KV cache, batching, image-latent cache) change nothing but speed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from flamingo.eval.models import (
    FeatureCache,
    FlamingoEvalModel,
    GenerateRequest,
    RankRequest,
)
from flamingo.model.lm import expand_cache
from flamingo.model.tiny import build_tiny_flamingo

PROMPT = "<image>Output: a red circle.<|endofchunk|><image>Output: two blue<|endofchunk|><image>Output:"
# Different token counts (1 to several), so chunks mix lengths and need padding.
NAMES = ["red", "a blue square", "two green triangles on the mat", "cat", "the dog slept", "sun", "o", "mat"]


@pytest.fixture(scope="module")
def model():
    return build_tiny_flamingo(gate_init=0.5)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, colour in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200), (90, 90, 0), (20, 160, 220)]):
        path = folder / f"{i}.png"
        Image.new("RGB", (8, 8), colour).save(path)
        paths.append(str(path))
    return paths


def full_forward_scores(
    ev: FlamingoEvalModel, prompt: str, images: list[str], names: list[str]
) -> torch.Tensor:
    """Mean log-probability of each name from one uncached forward pass over prompt + name."""
    media, _ = ev.batch_media([images])
    context = ev.tokenizer(prompt)["input_ids"]
    scores = []
    for name in names:
        cont = ev.tokenizer(name, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = ev.model(input_ids=torch.tensor([context + cont]), media=media).logits[0]
        logp = F.log_softmax(logits.float(), dim=-1)
        scores.append(sum(logp[len(context) - 1 + j, t].item() for j, t in enumerate(cont)) / len(cont))
    return torch.tensor(scores)


@pytest.mark.parametrize("chunk", [3, 128])
def test_rank_classification_from_the_cache_equals_full_forward(model, images, chunk):
    ev = FlamingoEvalModel(model, class_chunk_size=chunk)
    got = ev.rank_classification(
        [RankRequest(PROMPT, images[:3], NAMES), RankRequest(PROMPT, images[2:5], NAMES)]
    )
    assert got.shape == (2, len(NAMES))
    for row, imgs in zip(got, (images[:3], images[2:5])):
        expected = full_forward_scores(ev, PROMPT, imgs, NAMES)
        assert (row - expected).abs().max().item() < 1e-4
    assert not torch.allclose(got[0], got[1])  # the images matter


def test_loglikelihood_sum_is_mean_times_token_count(model, images):
    ev = FlamingoEvalModel(model, class_chunk_size=4)
    total = ev.loglikelihood(PROMPT, images[:3], NAMES, reduce="sum")
    mean = ev.loglikelihood(PROMPT, images[:3], NAMES, reduce="mean")
    counts = torch.tensor([len(ev.tokenizer(n, add_special_tokens=False)["input_ids"]) for n in NAMES])
    assert torch.allclose(total, mean * counts, atol=1e-5)


def test_expand_cache_leaves_the_prompt_cache_untouched(model):
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
        before = [layer.keys.clone() for layer in cache.layers]
        wide = expand_cache(cache, 3)
        model(input_ids=torch.tensor([[9], [10], [11]]), past_key_values=wide, use_cache=True)
    assert wide.get_seq_length() == 5 and wide.layers[0].keys.shape[0] == 3
    assert cache.get_seq_length() == 4
    assert all(torch.equal(b, layer.keys) for b, layer in zip(before, cache.layers))


def generation_requests(images: list[str]) -> list[GenerateRequest]:
    """Prompts of different lengths and image counts (1 to 3)."""
    requests = []
    for i in range(6):
        demos = i % 3
        text = "<image>Output: a photo of the cat.<|endofchunk|>\n" * demos + "the " * i + "<image>Output:"
        requests.append(GenerateRequest(text, [*images[i % 2 : i % 2 + demos], images[4]], 3, 8))
    return requests


def test_batched_generation_equals_one_by_one(model, images):
    requests = generation_requests(images)
    batched = FlamingoEvalModel(model, batch_size=4).generate(requests)
    single = FlamingoEvalModel(model, batch_size=1).generate(requests)
    assert batched == single
    assert len(set(batched)) > 1  # not a degenerate constant output


def test_demo_images_are_encoded_once(model, images):
    seen = []
    handle = model.vision.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    try:
        ev = FlamingoEvalModel(model, batch_size=2)
        requests = generation_requests(images)
        ev.generate(requests)
        distinct = len({p for r in requests for p in r.images})
        assert sum(seen) == distinct == ev.images_encoded  # each image through the encoder once
        ev.generate(requests)
        ev.rank_classification([RankRequest(PROMPT, images[:3], NAMES)])
        assert sum(seen) == distinct  # everything after that came from the cache
        assert ev.features.hits > 0
    finally:
        handle.remove()


def test_feature_cache_evicts_least_recently_used():
    cache = FeatureCache(2)
    cache.put("a", torch.zeros(1))
    cache.put("b", torch.ones(1))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", torch.ones(1))
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 2


def test_prompt_image_count_mismatch_is_a_clear_error(model, images):
    ev = FlamingoEvalModel(model)
    with pytest.raises(ValueError, match="2 <image> markers but 1 images"):
        ev.generate([GenerateRequest("<image>a<image>b", images[:1])])


def test_embed_images_is_mean_pooled_vision_features(model, images):
    ev = FlamingoEvalModel(model, encode_batch_size=2)
    embeddings = ev.embed_images(images)
    assert embeddings.shape == (len(images), model.vision.width)
    pixels = ev.processor.image_transform([Image.open(images[3]).convert("RGB")])
    with torch.no_grad():
        expected = model.vision(pixels).mean(1)[0]
    assert torch.allclose(embeddings[3], expected, atol=1e-5)
