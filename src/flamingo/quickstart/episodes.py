"""Novel-label classification in context: every episode gives its classes new invented names.

An episode shows ``shots`` demonstrations ``<image>{name}<|endofchunk|>`` of 2-4 classes (each class at least
once, the rest drawn with repeats) and then a query ``<image>`` of one of the demonstrated classes. Names come
from the held-out pool, never seen in multimodal training, so the answer can only come from the
demonstrations. The prediction is the argmax over the whole vocabulary of the token after the query's
``<image>`` ("open" accuracy); the argmax among the episode's names is reported too.

The generic evaluator scores classification over one fixed class list per task, which cannot express
per-episode names, so episodes are run here on the model directly. Ablations: demonstration images blanked
(a uniform grey picture), removed (text-only context: ``{name}<|endofchunk|>``), and classes drawn from the 8
shape-colour combinations held out of all training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from flamingo.quickstart import world
from flamingo.quickstart.text import PROMPTS

CONDITIONS = ("shots", "blanked", "text_only", "heldout_combos")


@dataclass
class Episode:
    """One episode: demonstration pictures and names, the query picture and its name."""

    demo_images: list[Image.Image]
    demo_names: list[str]
    query_image: Image.Image
    answer: str
    names: list[str]
    classes: list[tuple[str, str]] = field(default_factory=list)


def make_episode(rng: random.Random, shots: int, names: list[str], heldout_combos: bool = False) -> Episode:
    """A random episode; with ``shots`` = 0 the classes and names are drawn but not shown."""
    pool = sorted(world.HELDOUT_COMBOS) if heldout_combos else world.training_combos()
    count = rng.randint(2, max(2, min(4, shots))) if shots else rng.randint(2, 4)
    classes = rng.sample(pool, count)
    episode_names = rng.sample(names, count)
    labels = list(range(count)) + [rng.randrange(count) for _ in range(max(0, shots - count))]
    labels = labels[:shots]
    rng.shuffle(labels)
    draw = lambda c: world.draw_scene(world.Scene(*classes[c], 1), rng)  # noqa: E731
    query = rng.choice(sorted(set(labels))) if labels else rng.randrange(count)
    return Episode(
        [draw(c) for c in labels],
        [episode_names[c] for c in labels],
        draw(query),
        episode_names[query],
        episode_names,
        classes,
    )


def episode_row(
    episode: Episode, image_token: str, eoc_token: str, mode: str = "images"
) -> tuple[str, list[Image.Image]]:
    """The ``(prompt, images)`` row for the processor, in the quickstart's classification template (the query
    is the template's query: its image, the name to come); ``mode``: images, blanked, text_only."""
    if mode == "images":
        shown = list(episode.demo_images)
    elif mode == "blanked":
        shown = [world.blank_image() for _ in episode.demo_images]
    elif mode == "text_only":
        shown = []
    else:
        raise ValueError(f"unknown episode mode {mode!r}")
    demos = [{"label": name} for name in episode.demo_names]
    text = PROMPTS.classify.render(demos, {}, image_token, eoc_token, text_only_demos=mode == "text_only")
    return text, [*shown, episode.query_image]


@torch.no_grad()
def score_episodes(
    model: Any, processor: Any, episodes: list[Episode], mode: str = "images", batch_size: int = 32
) -> dict[str, Any]:
    """Open accuracy (argmax over the vocabulary), accuracy among the episode's names, and predictions."""
    tokenizer = processor.tokenizer
    open_right = among_right = 0
    predictions: list[str] = []
    for start in range(0, len(episodes), batch_size):
        chunk = episodes[start : start + batch_size]
        rows = [episode_row(e, processor.image_token, processor.eoc_token, mode) for e in chunk]
        batch = processor(rows, padding_side="left")
        logits = model(
            batch["images"], batch["input_ids"], batch["attention_mask"], image_mask=batch["image_mask"]
        ).logits[:, -1]  # (b, vocab): the token after the query's <image>
        for episode, row in zip(chunk, logits):
            predicted = tokenizer.convert_ids_to_tokens(int(row.argmax()))
            ids = tokenizer.convert_tokens_to_ids(episode.names)
            best = episode.names[int(row[ids].argmax())]
            open_right += predicted == episode.answer
            among_right += best == episode.answer
            predictions.append(predicted)
    n = max(1, len(episodes))
    return {
        "open_accuracy": open_right / n,
        "among_names_accuracy": among_right / n,
        "predictions": predictions,
    }


def run_conditions(
    model: Any, processor: Any, names: list[str], seed: int, episodes: int, shots: tuple[int, ...] = (0, 4, 8)
) -> dict[str, dict[str, Any]]:
    """Every condition for one seed: ``{condition: {open_accuracy, among_names_accuracy, ...}}``."""
    results: dict[str, dict[str, Any]] = {}
    for k in shots:
        rng = random.Random(f"episodes-{seed}-{k}")
        sample = [make_episode(rng, k, names) for _ in range(episodes)]
        results[f"{k}-shot"] = score_episodes(model, processor, sample)
        if k == 4:
            results["4-shot blanked"] = score_episodes(model, processor, sample, "blanked")
            results["4-shot text-only"] = score_episodes(model, processor, sample, "text_only")
            results["4-shot examples"] = {
                "episodes": sample[:4],
                "predictions": results["4-shot"]["predictions"][:4],
            }
    rng = random.Random(f"episodes-heldout-{seed}")
    sample = [make_episode(rng, 4, names, heldout_combos=True) for _ in range(episodes)]
    results["4-shot held-out combos"] = score_episodes(model, processor, sample)
    return results
