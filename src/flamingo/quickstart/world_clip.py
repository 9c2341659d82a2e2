"""A tiny CLIP in open_clip's own architecture format, trained contrastively on the world's pictures and
sentences. Its vision tower becomes the Flamingo vision encoder; the whole model gives the dataset builder its
image-sentence similarities (through ``flamingo.corpus.clip.ClipEmbedder``).

Two weight files are written: ``clip.safetensors`` (the whole open_clip model, what ``ClipEmbedder`` loads) and
``clip_visual.safetensors`` (keys ``visual.*``, what ``VisionConfig(kind="open_clip", pretrained=...)`` loads).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from flamingo.quickstart import text, world

CLIP_NAME = "flamingo-quickstart-clip"
# open_clip architecture dict: a 4-layer ViT on 32 px with 8 px patches (16 patch tokens of width 64) and a
# 2-layer text tower over open_clip's own byte-pair tokenizer (whose 49408 ids fix the vocabulary size).
CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@dataclass
class ClipResult:
    """Where the weights are and how good the model is."""

    full_weights: Path
    visual_weights: Path
    metrics: dict[str, float]
    losses: list[float]
    seconds: float


def world_sentence(
    scene: world.Scene,
    rng: random.Random,
    names: list[str],
    qa_style: str = "marked",
    pet_quiz: bool = False,
) -> tuple[str, bool]:
    """A random sentence of any page kind about ``scene`` (bursty sentences only for single objects), and
    whether it says how many objects there are (else it says only one / several); quiz sentences in
    ``qa_style`` (:func:`text.qa_sentence`); with ``pet_quiz``, pet-quiz sentences too (single objects)."""
    single = ["bursty", "pet_quiz"] if pet_quiz else ["bursty"]
    kinds = ["caption", "bare", "qa"] + (single if scene.count == 1 else [])
    kind = rng.choice(kinds)
    if kind == "caption":
        return text.caption_sentence(scene, rng), True
    if kind == "bare":
        return scene.caption(), True
    if kind == "qa":
        question = rng.choice(text.QUESTION_KINDS)
        return text.qa_sentence(scene, question, style=qa_style), question == "count" or scene.count == 1
    if kind == "pet_quiz":
        return text.name_sentence(rng.choice(names), scene), True
    return text.bursty_sentence(rng.choice(names), scene, rng), True


def _positives(scenes: list[world.Scene], exact: list[bool]) -> torch.Tensor:
    """(b, b) target distribution of each picture over the batch's sentences: every sentence that fits it.

    Several pictures of a batch often share a class; counting their sentences as negatives (plain CLIP)
    would teach the model to tell apart pictures that no sentence tells apart.
    """
    ids: dict[Any, int] = {}
    combo = torch.tensor([ids.setdefault(s.combo, len(ids)) for s in scenes])  # (b,)
    count = torch.tensor([s.count for s in scenes])  # (b,)
    same_count = torch.where(
        torch.tensor(exact)[None, :],  # sentence b states the exact count, else only one / several
        count[:, None] == count[None, :],
        (count[:, None] > 1) == (count[None, :] > 1),
    )
    fits = ((combo[:, None] == combo[None, :]) & same_count).float()  # (b, b)
    return fits / fits.sum(-1, keepdim=True)


class CachedTokenizer:
    """open_clip's tokenizer with each sentence's token row kept: the training batches repeat sentences, and
    tokenizing (text cleaning and byte-pair merges in Python) cost about a tenth of a CLIP step."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.rows: dict[str, torch.Tensor] = {}

    def __call__(self, sentences: list[str]) -> torch.Tensor:
        """(n, context_length) token ids, the same as ``tokenizer(sentences)``."""
        missing = [s for s in dict.fromkeys(sentences) if s not in self.rows]
        if missing:
            self.rows.update(zip(missing, self.tokenizer(missing)))
        return torch.stack([self.rows[s] for s in sentences])


def create_clip(seed: int) -> tuple[Any, Any, Any]:
    """A fresh (random) open_clip model of :data:`CLIP_CONFIG`, its preprocessing and tokenizer."""
    import open_clip

    from flamingo.model.vision import _register_open_clip_config, quiet_random_init_warning

    _register_open_clip_config(CLIP_NAME, CLIP_CONFIG)
    torch.manual_seed(seed)
    with quiet_random_init_warning(CLIP_NAME):  # random on purpose: the CLIP stage trains it next
        model, _, preprocess = open_clip.create_model_and_transforms(CLIP_NAME, pretrained=None)
    return model, preprocess, open_clip.get_tokenizer(CLIP_NAME)


def _pool(seed: int, size: int) -> list[tuple[world.Scene, Any]]:
    rng = random.Random(f"clip-pool-{seed}")
    return [(s := world.random_scene(rng), world.draw_scene(s, rng)) for _ in range(size)]


def train_clip(
    out_dir: Path,
    names: list[str],
    steps: int = 400,
    batch: int = 128,
    seed: int = 0,
    attribute_weight: float = 1.0,
    log: Any = print,
    qa_style: str = "marked",
    pet_quiz: bool = False,
) -> ClipResult:
    """Train the tiny CLIP on pictures of training classes and their sentences; save and evaluate it.

    Besides the contrastive loss, linear heads predict the picture's shape, colour and count from the mean of
    the last block's patch tokens, the very tokens the Flamingo Perceiver reads (weight ``attribute_weight``; 0
    gives plain contrastive training). The contrastive signal alone teaches colour quickly but shape slowly, and
    only through the class token, which Flamingo never sees; the heads are dropped after training.
    """
    started = time.perf_counter()
    model, preprocess, tokenizer = create_clip(seed)
    cached_tokenizer = CachedTokenizer(tokenizer)
    dim = CLIP_CONFIG["vision_cfg"]["width"]
    heads = torch.nn.ModuleDict(
        {
            "shape": torch.nn.Linear(dim, len(world.SHAPES)),
            "colour": torch.nn.Linear(dim, len(world.COLOUR_NAMES)),
            "count": torch.nn.Linear(dim, 3),
        }
    )
    # The token embedding (49408 x 64) stays at its random initialisation: random vectors already tell
    # words apart, and updating it would be most of each step's cost on this CPU.
    model.token_embedding.weight.requires_grad_(False)
    pool = _pool(seed, max(2048, batch * steps // 6))  # each picture seen ~6 times: little overfitting
    pixels = torch.stack([preprocess(im) for _, im in pool])  # (N, 3, 32, 32), preprocessed once
    rng = random.Random(f"clip-train-{seed}")
    attributes = {
        "shape": torch.tensor([world.SHAPES.index(s.shape) for s, _ in pool]),
        "colour": torch.tensor([world.COLOUR_NAMES.index(s.colour) for s, _ in pool]),
        "count": torch.tensor([s.count - 1 for s, _ in pool]),
    }
    trainable = [p for p in model.parameters() if p.requires_grad] + list(heads.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=3e-3, weight_decay=0.05)
    losses = []
    model.train()
    for step in range(steps):
        lr = 3e-3 * min(1.0, (step + 1) / 30) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = rng.sample(range(len(pool)), batch)
        sentences, exact = zip(*(world_sentence(pool[i][0], rng, names, qa_style, pet_quiz) for i in index))
        target = _positives([pool[i][0] for i in index], list(exact))  # (b, b)
        out = model.visual.forward_intermediates(
            pixels[index],
            indices=1,
            intermediates_only=False,
            output_fmt="NLC",
            normalize_intermediates=False,
        )
        image_emb = F.normalize(out["image_features"], dim=-1)  # (b, d) what encode_image gives
        # What Flamingo reads (the last block's patch tokens, legacy semantics), pooled: (b, width)
        patches = out["image_intermediates"][-1].mean(1)
        text_emb = F.normalize(model.encode_text(cached_tokenizer(list(sentences))), dim=-1)  # (b, d)
        logits = model.logit_scale.exp().clamp(max=100) * image_emb @ text_emb.T  # (b, b)
        by_text = target.T / target.T.sum(-1, keepdim=True)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, by_text)) / 2
        if attribute_weight:
            chosen = torch.tensor(index)
            loss = loss + attribute_weight * sum(
                F.cross_entropy(head(patches), attributes[name][chosen]) for name, head in heads.items()
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % max(1, steps // 5) == 0:
            log(f"    CLIP step {step + 1}/{steps}: loss {loss.item():.3f}")
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    full, visual = save_clip(model, out_dir)
    metrics = evaluate_clip(model, preprocess, tokenizer, names, seed, qa_style, pet_quiz)
    return ClipResult(full, visual, metrics, losses, time.perf_counter() - started)


def save_clip(model: Any, out_dir: Path) -> tuple[Path, Path]:
    """Write the whole model and its vision tower alone (keys ``visual.*``) as safetensors."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    full, visual = out_dir / "clip.safetensors", out_dir / "clip_visual.safetensors"
    save_file(state, str(full))
    save_file({k: v for k, v in state.items() if k.startswith("visual.")}, str(visual))
    return full, visual


@torch.no_grad()
def evaluate_clip(
    model: Any,
    preprocess: Any,
    tokenizer: Any,
    names: list[str],
    seed: int,
    qa_style: str = "marked",
    pet_quiz: bool = False,
) -> dict[str, float]:
    """Zero-shot caption accuracy (over all 192 captions) on fresh pictures of training and held-out
    classes, and image-to-sentence retrieval among 6 page sentences (what the builder's assignment needs)."""
    rng = random.Random(f"clip-eval-{seed}")
    scenes = [world.Scene(s, c, n) for s in world.SHAPES for c in world.COLOUR_NAMES for n in (1, 2, 3)]
    captions = F.normalize(model.encode_text(tokenizer([s.caption() for s in scenes])), dim=-1)
    metrics: dict[str, float] = {}
    for split, heldout in (("train_classes", False), ("heldout_classes", True)):
        test = [world.random_scene(rng, heldout=heldout) for _ in range(256)]
        emb = F.normalize(
            model.encode_image(torch.stack([preprocess(world.draw_scene(s, rng)) for s in test])), dim=-1
        )
        best = (emb @ captions.T).argmax(-1).tolist()
        metrics[f"caption_top1_{split}"] = sum(scenes[b] == s for b, s in zip(best, test)) / len(test)
        for attribute in ("shape", "colour", "count"):
            right = sum(getattr(scenes[b], attribute) == getattr(s, attribute) for b, s in zip(best, test))
            metrics[f"{attribute}_top1_{split}"] = right / len(test)
    hits = 0
    for _ in range(100):
        page = [world.random_scene(rng) for _ in range(6)]
        emb = F.normalize(
            model.encode_image(torch.stack([preprocess(world.draw_scene(s, rng)) for s in page])), dim=-1
        )
        sentences = F.normalize(
            model.encode_text(
                tokenizer([world_sentence(s, rng, names, qa_style, pet_quiz)[0] for s in page])
            ),
            dim=-1,
        )
        hits += int((emb @ sentences.T).argmax(-1).eq(torch.arange(6)).sum())
    metrics["page_retrieval_top1"] = hits / 600
    return metrics
