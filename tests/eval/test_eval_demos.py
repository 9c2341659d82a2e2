"""Demonstration selection and prompt building: the protocol invariants."""

from __future__ import annotations

import math

import pytest
import torch

from flamingo.eval.datasets import EvalExample
from flamingo.eval.demos import (
    Rices,
    build_prompt,
    build_query_set,
    cached_embeddings,
    demo_orders,
    embedding_cache_key,
    ensemble_prompts,
    ensemble_scores,
    sample_random_demos,
    select_demos,
)
from flamingo.eval.tasks import load_task
from flamingo.prompts import OPENFLAMINGO, PromptConfig, PromptTemplate


def _task(name: str):
    """A shipped task with its named template taken from OpenFlamingo's prompts (what the evaluator does
    with a model's own)."""
    return load_task(name).with_prompts(OPENFLAMINGO)


def _vqa_examples(n: int, prefix: str = "train") -> list[EvalExample]:
    return [
        EvalExample(
            f"{prefix}{i}", f"/img/{prefix}{i}.jpg", f"question {i}?", [f"answer {i}", "other"], None, {}
        )
        for i in range(n)
    ]


def test_demos_never_include_the_query_by_id_or_image():
    pool = _vqa_examples(10)
    same_image = EvalExample("other-question", pool[3].image_path, "q?", ["a"])
    for example in [pool[3], same_image]:
        for seed in range(50):
            demos = sample_random_demos(pool, example, 9, seed)
            assert all(d.id != example.id and d.image_path != example.image_path for d in demos)
            assert len({d.id for d in demos}) == 9


def test_same_seed_same_demos_and_other_seeds_differ():
    pool, query = _vqa_examples(100), _vqa_examples(1, "test")[0]
    first = [d.id for d in sample_random_demos(pool, query, 8, seed=1)]
    assert first == [d.id for d in sample_random_demos(list(pool), query, 8, seed=1)]
    assert any(first != [d.id for d in sample_random_demos(pool, query, 8, seed=s)] for s in range(2, 6))
    # Independent of which other examples are evaluated (batching, sharding): only (seed, id) matters.
    other = _vqa_examples(1, "zzz")[0]
    sample_random_demos(pool, other, 8, seed=1)
    assert first == [d.id for d in sample_random_demos(pool, query, 8, seed=1)]


def test_query_set_is_fixed_per_seed():
    train = _vqa_examples(50)
    assert [e.id for e in build_query_set(train, 20, 3)] == [e.id for e in build_query_set(train, 20, 3)]
    assert len(build_query_set(train, 2048, 3)) == 50


def test_too_few_demos_is_a_clear_error():
    with pytest.raises(ValueError, match="query_set_size"):
        sample_random_demos(_vqa_examples(3), _vqa_examples(1)[0], 3, 0)


def test_zero_shot_prompts_have_text_demos_but_no_images():
    task = _task("vqav2")
    query = _vqa_examples(1, "test")[0]
    demos, text_only = select_demos(task, _vqa_examples(20), query, shots=0, seed=0)
    assert len(demos) == 2 and text_only
    prompt = build_prompt(task, demos, query, text_only_demos=text_only)
    assert prompt.text.count("<image>") == 1 and prompt.text.startswith("Question:")
    assert prompt.image_paths == [query.image_path]
    assert f"Short answer:{demos[0].references[0]}<|endofchunk|>\n" in prompt.text


def test_prompt_interleaves_demos_then_the_query_with_images_in_order():
    task = _task("vqav2")
    demos, query = _vqa_examples(2), _vqa_examples(1, "test")[0]
    prompt = build_prompt(task, demos, query)
    assert prompt.text == (
        "<image>Question:question 0? Short answer:answer 0<|endofchunk|>\n"
        "<image>Question:question 1? Short answer:answer 1<|endofchunk|>\n"
        "<image>Question:question 0? Short answer:"
    )
    assert prompt.image_paths == ["/img/train0.jpg", "/img/train1.jpg", "/img/test0.jpg"]
    assert prompt.demo_ids == ["train0", "train1"]


def test_text_only_context_ablation_removes_demo_images_and_tokens():
    task = _task("coco")
    demos = [EvalExample(f"c{i}", f"/c{i}.jpg", None, [f" caption {i} "]) for i in range(4)]
    query = EvalExample("q", "/q.jpg", None, ["x"])
    prompt = build_prompt(task, demos, query, text_only_demos=True)
    assert prompt.text == "".join(f"Output:caption {i}<|endofchunk|>\n" for i in range(4)) + "<image>Output:"
    assert prompt.image_paths == ["/q.jpg"]


def test_hateful_memes_prompt_uses_the_meme_text_and_label():
    task = _task("hateful_memes")
    demo = EvalExample("1", "/1.png", None, ["yes"], "yes", {"text": "some text"})
    query = EvalExample("2", "/2.png", None, ["no"], "no", {"text": "other"})
    assert build_prompt(task, [demo], query).text == (
        "<image>is an image with: 'some text' written on it. Is it hateful? Answer:yes<|endofchunk|>"
        "<image>is an image with: 'other' written on it. Is it hateful? Answer:"
    )


def test_rices_returns_the_most_similar_items_most_similar_last():
    train = _vqa_examples(6)
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.7, 0.3], [-1.0, 0.0], [0.5, 0.5]])
    rices = Rices(train, embeddings * 3.0)  # scale must not matter: cosine similarity
    (found,) = rices.find(torch.tensor([[2.0, 0.0]]), k=3)
    assert [d.id for d in found] == ["train3", "train2", "train0"]


def test_rices_excludes_the_query_itself():
    train = _vqa_examples(4)
    rices = Rices(train, torch.eye(4))
    (found,) = rices.find(torch.eye(4)[:1], k=2, queries=[train[0]])
    assert "train0" not in [d.id for d in found]


def test_rices_embedding_cache_is_keyed_by_files_and_encoder(tmp_path):
    calls = []

    def compute(paths):
        calls.append(list(paths))
        return torch.arange(len(paths) * 3, dtype=torch.float32).reshape(len(paths), 3)

    paths = ["/a.jpg", "/b.jpg"]
    first = cached_embeddings(paths, "clip-vit-l-14", compute, tmp_path)
    again = cached_embeddings(paths, "clip-vit-l-14", compute, tmp_path)
    assert torch.equal(first, again) and len(calls) == 1
    cached_embeddings(paths, "siglip", compute, tmp_path)
    cached_embeddings([*paths, "/c.jpg"], "clip-vit-l-14", compute, tmp_path)
    assert len(calls) == 3 and len(list(tmp_path.glob("*.safetensors"))) == 3
    assert embedding_cache_key(paths, "x") != embedding_cache_key(paths[::-1], "x")


def test_prompt_ensembling_gives_distinct_orders_of_the_same_demos():
    task, demos, query = _task("vqav2"), _vqa_examples(4), _vqa_examples(1, "test")[0]
    prompts = ensemble_prompts(task, demos, query, seed=0, n=6)
    assert len({p.text for p in prompts}) == 6
    assert all(sorted(p.demo_ids) == sorted(d.id for d in demos) for p in prompts)
    assert prompts[0].demo_ids == [d.id for d in demos]
    assert len(demo_orders(demos[:2], 6, 0, "q")) == math.factorial(2)
    assert torch.equal(ensemble_scores([torch.zeros(3), torch.ones(3) * 2]), torch.ones(3))


def test_prompts_use_the_model_tokens_and_its_own_templates():
    """A named template comes from the model's prompts; the tokens are the model's, not a fixed spelling."""
    own = PromptConfig(vqa=PromptTemplate("{image}Q: {question} A: {answer}{eoc}", "{image}Q: {question} A:"))
    task = load_task("vqav2").with_prompts(own)
    demos, query = _vqa_examples(1), _vqa_examples(1, "test")[0]
    prompt = build_prompt(task, demos, query, image_token="<img>", eoc_token="<end>")
    assert prompt.text == "<img>Q: question 0? A: answer 0<end><img>Q: question 0? A:"
    with pytest.raises(ValueError, match="with_prompts"):
        build_prompt(load_task("vqav2"), demos, query)  # a name, not yet resolved
