"""Pretraining the small smeared-key LM on text until it can copy in context.

The corpus is text only: the world's page sentences (caption, Q&A and bursty pages, and the evaluation
prompt formats) and "copy" sequences ``key name <|endofchunk|> key name <|endofchunk|> ...`` in which each
sequence maps 2-5 random keys to random invented names, mentioned repeatedly. The loss counts only the names
whose key appeared before: a first mention cannot be predicted, and an LM trained to guess a name there falls
back on that guess whenever the match is uncertain. In the quickstart that guess became the answer to about a
fifth of the 4-shot episodes, although the right name ranked first among the episode's names 96% of the time.
Masking first mentions raised 4-shot accuracy from 0.76 to 0.91 (2 threads, three evaluation seeds). Copy
sequences use names of both pools, like any word an LM knows: a name the LM never saw keeps a random embedding
that training pushes away from every prediction, so it could never be copied (measured: 0.000 held-out copy
accuracy after 1500 steps). Held-out names still never appear in any multimodal training data, nor in the
page-like text here. Copy accuracy is measured on fresh sequences of held-out names, counting the mentions
whose key appeared before.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from flamingo.model.loss import IGNORE_INDEX as IGNORE
from flamingo.quickstart import text, world
from flamingo.quickstart.world_lm import SmearLMConfig, SmearLMForCausalLM


@dataclass
class LMResult:
    """The saved LM and what pretraining measured."""

    directory: Path
    steps: int
    copy_accuracy: list[tuple[int, float]] = field(default_factory=list)
    """(step, held-out copy accuracy) at each check."""
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def page_texts(
    rng: random.Random, names: list[str], count: int, qa_style: str = "marked", pet_quiz: bool = False
) -> list[str]:
    """``count`` text-only documents in the style of the world's pages and of the evaluation prompts.

    ``qa_style``: the quiz pages' style (:func:`text.qa_sentence`); with ``plain`` the text never shows the VQA
    prompt's ``Question: ... Short answer: <word>`` either (those documents become plain quiz text), so that
    the answer convention of the VQA benchmark can only come from its demonstrations. ``pet_quiz``: documents
    about three pets that mix bursty sentences with questions for their names, in the quiz pages' format or
    the VQA prompt's (``Question: what is the name of the red triangle? Short answer: zorp``).
    """
    kinds = ("caption", "qa", "bursty", "output", "short") + (("pet_quiz",) if pet_quiz else ())
    docs = []
    for _ in range(count):
        kind = rng.choice(kinds)
        scenes = [world.random_scene(rng) for _ in range(rng.randint(3, 6))]
        if kind == "caption":
            lines = [text.caption_sentence(s, rng) for s in scenes]
        elif kind == "qa" or (kind == "short" and qa_style == "plain"):
            lines = [text.qa_sentence(s, rng.choice(text.QUESTION_KINDS), style=qa_style) for s in scenes]
        elif kind == "output":
            lines = [f"Output: {s.caption()}" for s in scenes]
        elif kind == "short":
            qa = [text.question_answer(s, rng.choice(text.QUESTION_KINDS)) for s in scenes]
            lines = [f"Question: {q} Short answer: {a}" for q, a in qa]
        elif kind == "pet_quiz":
            cast_names = rng.sample(names, 3)
            cast = [(n, world.Scene(*c)) for n, c in zip(cast_names, rng.sample(world.training_combos(), 3))]
            short = rng.random() < 0.5
            lines = []
            for _ in scenes:
                name, scene = rng.choice(cast)
                if rng.random() < 0.5:
                    lines.append(text.bursty_sentence(name, scene, rng))
                elif short:
                    lines.append(f"Question: {text.name_question(scene)} Short answer: {name}")
                else:
                    lines.append(text.name_sentence(name, scene))
        else:
            cast = [(n, world.Scene(*world.random_scene(rng).combo)) for n in rng.sample(names, 3)]
            lines = [text.bursty_sentence(*rng.choice(cast), rng) for _ in scenes]
        docs.append(text.EOC.join(lines) + text.EOC + text.EOS)
    return docs


class CopyData:
    """Batches of copy sequences and of page text, as token ids with labels."""

    def __init__(
        self,
        tokenizer: Any,
        names: list[str],
        length: int,
        seed: int,
        qa_style: str = "marked",
        pet_quiz: bool = False,
    ) -> None:
        self.vocab = tokenizer.get_vocab()
        self.length = length
        self.eoc = self.vocab[text.EOC]
        specials = {text.EOS, text.EOC, text.PAD, text.UNK}
        all_names = set(names)
        # sorted: get_vocab() comes from a hash map whose order changes from one call to the next, and the keys
        # are sampled from this list (unsorted, two runs of the same seed trained different LMs)
        self.keys = sorted(
            i for w, i in self.vocab.items() if w not in specials and w not in all_names and w.isalpha()
        )
        self.rng = random.Random(seed)
        docs = page_texts(self.rng, names, 3000, qa_style, pet_quiz)
        self.text_ids = [i for ids in tokenizer(docs)["input_ids"] for i in ids]

    def copy_sequence(self, names: list[str]) -> tuple[list[int], list[int], list[bool]]:
        """Ids, labels (names only) and whether each name's key was seen before (it is predictable)."""
        count = self.rng.randint(2, 5)
        mapping = dict(zip(self.rng.sample(self.keys, count), self.rng.sample(names, count)))
        ids, labels, repeat = [], [], []
        seen: set[int] = set()
        while len(ids) + 3 <= self.length:
            key = self.rng.choice(list(mapping))
            name = self.vocab[mapping[key]]
            ids += [key, name, self.eoc]
            labels += [IGNORE, name if key in seen else IGNORE, IGNORE]  # only names that can be copied
            repeat += [False, key in seen, False]
            seen.add(key)
        pad = self.length - len(ids)
        return ids + [self.eoc] * pad, labels + [IGNORE] * pad, repeat + [False] * pad

    def text_sequence(self) -> tuple[list[int], list[int]]:
        start = self.rng.randrange(0, len(self.text_ids) - self.length)
        ids = self.text_ids[start : start + self.length]
        return ids, list(ids)

    def batch(self, size: int, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Half copy sequences, half page text: ids (b, s) and labels (b, s)."""
        rows = [self.copy_sequence(names)[:2] for _ in range(size // 2)]
        rows += [self.text_sequence() for _ in range(size - size // 2)]
        return torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows])


@torch.no_grad()
def copy_accuracy(model: SmearLMForCausalLM, data: CopyData, names: list[str], sequences: int = 32) -> float:
    """Share of repeated names (key seen before) predicted exactly (argmax over the whole vocabulary)."""
    rows = [data.copy_sequence(names) for _ in range(sequences)]
    ids = torch.tensor([r[0] for r in rows])
    labels = torch.tensor([r[1] for r in rows])
    repeat = torch.tensor([r[2] for r in rows])
    predicted = model(ids).logits.argmax(-1)  # (b, s); position i predicts token i + 1
    right = predicted[:, :-1].eq(labels[:, 1:]) & repeat[:, 1:]
    return float(right.sum() / repeat[:, 1:].sum().clamp(min=1))


def pretrain_lm(
    out_dir: Path,
    tokenizer: Any,
    train_names: list[str],
    heldout_names: list[str],
    max_steps: int = 1500,
    threshold: float = 0.98,
    seed: int = 0,
    log: Any = print,
    qa_style: str = "marked",
    pet_quiz: bool = False,
) -> LMResult:
    """Train until held-out copy accuracy reaches ``threshold`` (checked every 100 steps); save the LM.

    ``qa_style``, ``pet_quiz``: the world's quiz style and whether it has pet quizzes, for the page text the
    LM also learns (:func:`page_texts`)."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    config = SmearLMConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = SmearLMForCausalLM(config)
    # 256 positions: few-shot prompts with 8 demonstrations run past 128 tokens, and the frozen LM's
    # position embeddings must have been trained that far.
    data = CopyData(tokenizer, train_names, length=256, seed=seed, qa_style=qa_style, pet_quiz=pet_quiz)
    probe = CopyData(tokenizer, train_names, length=256, seed=seed + 1, qa_style=qa_style, pet_quiz=pet_quiz)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0, betas=(0.9, 0.98))
    result = LMResult(out_dir, 0)
    all_names = train_names + heldout_names
    for step in range(1, max_steps + 1):
        lr = 3e-3 * min(1.0, step / 50) * (0.55 + 0.45 * math.cos(math.pi * step / max_steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        ids, labels = data.batch(16, all_names)
        loss = model(ids, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        result.losses.append(loss.item())
        if step % 100 == 0:
            model.eval()
            accuracy = copy_accuracy(model, probe, heldout_names)
            model.train()
            result.copy_accuracy.append((step, accuracy))
            log(f"    LM step {step}: loss {loss.item():.3f}, held-out copy accuracy {accuracy:.3f}")
            if accuracy >= threshold:
                break
    result.steps = step
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    result.seconds = time.perf_counter() - started
    return result
