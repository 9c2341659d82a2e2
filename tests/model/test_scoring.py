"""Rank classification: the KV-cache scorer equals running the whole prompt again for every continuation, and
both the pipeline and the evaluator score through it."""

from __future__ import annotations

import pytest
import torch
from model_support import make_images

import flamingo.eval.models as eval_models
import flamingo.pipeline as pipeline_module
from flamingo.eval.models import FlamingoEvalModel
from flamingo.model import scoring
from flamingo.model.tiny import build_tiny_flamingo
from flamingo.pipeline import FlamingoPipeline
from flamingo.serve.examples import shape_image

PROMPT = "<image>Output: a red circle.<|endofchunk|><image>Output:"
# 1 to several tokens each, so a chunk mixes lengths and pads.
NAMES = ["red", "a blue square", "two green triangles on the mat", "cat", "the dog slept", "o"]


@pytest.fixture(scope="module")
def model():
    return build_tiny_flamingo(gate_init=0.5).eval()


def _naive(model, ids: torch.Tensor, images: torch.Tensor | None, continuation: list[int]) -> float:
    """The whole prompt run again with one continuation after it: summed log-prob of its tokens."""
    full = torch.cat([ids[0], torch.tensor(continuation)])[None]
    with torch.no_grad():
        logits = model(images, full).logits[0].float()  # (L + n, V)
    logp = logits.log_softmax(-1)
    start = ids.shape[1]
    return float(sum(logp[start - 1 + i, tok] for i, tok in enumerate(continuation)))


@pytest.mark.parametrize("with_images", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 4, 64])
def test_cached_scores_equal_the_full_rerun(model, with_images, chunk_size):
    tokenizer = model.tokenizer
    text = PROMPT if with_images else "the cat sat on the mat. Output:"
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    images = make_images(1, 2) if with_images else None
    media = model.encode_media(images) if with_images else None
    tokens = [tokenizer(n, add_special_tokens=False)["input_ids"] for n in NAMES]
    assert len({len(t) for t in tokens}) > 2  # lengths differ: padding is exercised
    with torch.no_grad():
        summed = scoring.score_continuations(model, ids, tokens, media, chunk_size, reduce="sum")
        mean = scoring.score_continuations(model, ids, tokens, media, chunk_size, reduce="mean")
    naive = torch.tensor([_naive(model, ids, images, t) for t in tokens])
    assert torch.allclose(summed, naive, atol=1e-5), (summed - naive).abs().max()
    counts = torch.tensor([len(t) for t in tokens], dtype=torch.float)
    assert torch.allclose(mean, naive / counts, atol=1e-5)
    assert len({round(float(v), 4) for v in summed}) == len(NAMES)  # the scores really differ


def test_bad_inputs_are_refused(model):
    ids = model.tokenizer("Output:", return_tensors="pt")["input_ids"]
    with pytest.raises(ValueError, match="has no tokens"):
        scoring.score_continuations(model, ids, [[5], []])
    with pytest.raises(ValueError, match="reduce"):
        scoring.score_continuations(model, ids, [[5]], reduce="max")
    with pytest.raises(ValueError, match=r"\(1, L\)"):
        scoring.score_continuations(model, ids.repeat(2, 1), [[5]])


def test_pipeline_and_evaluator_score_through_the_one_scorer(model, monkeypatch):
    """Both call ``flamingo.model.scoring.score_continuations`` (no copy of their own) and agree."""
    assert pipeline_module.score_continuations is scoring.score_continuations
    assert eval_models.score_continuations is scoring.score_continuations
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[2])
        return scoring.score_continuations(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "score_continuations", spy)
    monkeypatch.setattr(eval_models, "score_continuations", spy)
    pictures = [shape_image("circle", "red", size=32), shape_image("square", "blue", size=32)]
    pipe = FlamingoPipeline(model)
    from_pipe = pipe.class_scores(pictures[1], NAMES, demos=[(pictures[0], "red")], batch_size=4)
    evaluator = FlamingoEvalModel(model, class_chunk_size=4)
    prompt = pipe.classify_prompt(["red"])
    from_eval = evaluator.loglikelihood(prompt, pictures, NAMES, reduce="mean")
    assert len(calls) == 2  # one per caller, each with every class name's tokens
    assert all(len(c) == len(NAMES) for c in calls)
    assert torch.allclose(torch.tensor(list(from_pipe.values())), from_eval, atol=1e-5)
