"""Choosing in-context demonstrations and building prompts, independent of any model.

Protocol (see docs/openflamingo-compat.md, "Evaluation protocol"): per seed, a query set of N training
examples is drawn once; each test example then gets k random demonstrations from it, drawn with an RNG
seeded by (seed, example id) so that results do not depend on batching or sharding. 0-shot uses a few
text-only demonstrations. RICES picks the k training items whose image embeddings are most similar to
the test image, the most similar placed last (nearest the query).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from flamingo.eval.datasets import EvalExample
from flamingo.model.config import TokenConfig
from flamingo.prompts import PromptTemplate, check_prompt

if TYPE_CHECKING:
    from flamingo.eval.tasks import TaskSpec


@dataclass
class Prompt:
    """An interleaved prompt: text with one image marker per entry of ``image_paths``, in order."""

    text: str
    image_paths: list[str]
    demo_ids: list[str]


def example_rng(seed: int, example_id: str) -> random.Random:
    """An RNG that depends only on (seed, example id): stable across runs, batches and processes."""
    digest = hashlib.sha256(f"{seed}\x00{example_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def build_query_set(train: Sequence[EvalExample], size: int, seed: int) -> list[EvalExample]:
    """The ``size`` training examples (all if fewer) that demonstrations are drawn from for ``seed``."""
    rng = random.Random(seed)
    indices = rng.sample(range(len(train)), min(size, len(train)))
    return [train[i] for i in indices]


def _is_same_item(a: EvalExample, b: EvalExample) -> bool:
    return a.id == b.id or a.image_path == b.image_path


def sample_random_demos(
    query_set: Sequence[EvalExample], example: EvalExample, k: int, seed: int
) -> list[EvalExample]:
    """k distinct demonstrations for ``example`` from ``query_set``, never the example itself (same id
    or same image); the same (seed, example id) always gives the same demonstrations."""
    candidates = [d for d in query_set if not _is_same_item(d, example)]
    if k > len(candidates):
        raise ValueError(
            f"cannot draw {k} demonstrations for example {example.id}: the query set has only "
            f"{len(candidates)} other items; raise query_set_size or lower the shot count."
        )
    return example_rng(seed, example.id).sample(candidates, k)


def select_demos(
    task: TaskSpec, query_set: Sequence[EvalExample], example: EvalExample, shots: int, seed: int
) -> tuple[list[EvalExample], bool]:
    """Random demonstrations for ``shots`` and whether they are text-only.

    0 shots gives ``task.zero_shot_text_demos`` demonstrations whose images are removed.
    """
    if shots == 0:
        return sample_random_demos(query_set, example, task.zero_shot_text_demos, seed), True
    return sample_random_demos(query_set, example, shots, seed), False


# --------------------------------------------------------------------------------------------------
# RICES: retrieval-based in-context example selection on precomputed image embeddings
# --------------------------------------------------------------------------------------------------


class Rices:
    """Nearest training items by cosine similarity of image embeddings."""

    def __init__(self, train: Sequence[EvalExample], embeddings: torch.Tensor) -> None:
        if embeddings.ndim != 2 or embeddings.shape[0] != len(train):
            raise ValueError(
                f"RICES: embeddings of shape {tuple(embeddings.shape)} do not match {len(train)} "
                "training examples; expected (num_train, dim)."
            )
        self.train = list(train)
        self.embeddings = torch.nn.functional.normalize(embeddings.float(), dim=-1)  # (n, d)
        # Positions of each id and each image (several VQA questions share an image), to exclude queries.
        self._positions: dict[tuple[str, str], list[int]] = {}
        for i, item in enumerate(self.train):
            self._positions.setdefault(("id", item.id), []).append(i)
            self._positions.setdefault(("image", item.image_path), []).append(i)

    def _positions_of(self, query: EvalExample) -> list[int]:
        return self._positions.get(("id", query.id), []) + self._positions.get(
            ("image", query.image_path), []
        )

    def find(
        self,
        query_embeddings: torch.Tensor,
        k: int,
        queries: Sequence[EvalExample] | None = None,
    ) -> list[list[EvalExample]]:
        """For each query embedding (b, d), its k most similar training items, the MOST similar LAST.

        When ``queries`` are given, a training item that is the query itself (same id or image) is
        never returned.
        """
        if k > len(self.train):
            raise ValueError(f"RICES: k={k} exceeds the {len(self.train)} training items.")
        q = torch.nn.functional.normalize(query_embeddings.float(), dim=-1)  # (b, d)
        similarity = q @ self.embeddings.T  # (b, n)
        if queries is not None:
            for row, query in enumerate(queries):
                similarity[row, self._positions_of(query)] = float("-inf")
        ranked = torch.sort(similarity, dim=-1, descending=True, stable=True)
        if torch.isneginf(ranked.values[:, :k]).any():
            raise ValueError(f"RICES: fewer than k={k} training items remain once the queries are excluded.")
        order = ranked.indices[:, :k]  # (b, k)
        # Most similar last: the demonstration nearest the query in the prompt is the best match.
        return [[self.train[i] for i in reversed(row.tolist())] for row in order]


def embedding_cache_key(paths: Sequence[str], encoder_name: str) -> str:
    """A hash of the ordered image file list and the encoder name."""
    h = hashlib.sha256(encoder_name.encode())
    for path in paths:
        h.update(b"\x00" + str(path).encode())
    return h.hexdigest()


def cached_embeddings(
    paths: Sequence[str],
    encoder_name: str,
    compute: Callable[[Sequence[str]], torch.Tensor],
    cache_dir: str | Path,
) -> torch.Tensor:
    """Embeddings (len(paths), d) of ``paths``, read from ``cache_dir`` or computed and written there
    (safetensors, keyed by ``embedding_cache_key``)."""
    from safetensors.torch import load_file, save_file

    key = embedding_cache_key(paths, encoder_name)
    file = Path(cache_dir) / f"rices-{key[:32]}.safetensors"
    if file.is_file():
        return load_file(str(file))["embeddings"]
    embeddings = compute(paths)
    if embeddings.shape[0] != len(paths):
        raise ValueError(f"the encoder returned {embeddings.shape[0]} embeddings for {len(paths)} images.")
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp")
    meta = {"encoder": encoder_name, "count": str(len(paths)), "key": key}
    save_file({"embeddings": embeddings.detach().cpu().contiguous()}, str(tmp), metadata=meta)
    tmp.replace(file)  # atomic: a crashed run never leaves half a cache file
    return embeddings


# --------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------


def template_fields(example: EvalExample) -> dict[str, str]:
    """Values of the template placeholders for ``example``.

    As in OpenFlamingo, a demonstration shows the first reference: the first caption (stripped) or
    the first annotator's answer.
    """
    first = example.references[0] if example.references else ""
    return {
        "caption": first.strip(),
        "answer": first,
        "label": example.label or "",
        "question": example.question or "",
        "text": str(example.extra.get("text", "")),
    }


def build_prompt(
    task: TaskSpec,
    demos: Sequence[EvalExample],
    query: EvalExample,
    text_only_demos: bool = False,
    image_token: str = TokenConfig.image_token,
    eoc_token: str = TokenConfig.eoc_token,
) -> Prompt:
    """The prompt for ``query`` after ``demos``, with its images in order, in the model's tokens.

    ``text_only_demos`` (0-shot, or the text-only-context ablation) removes the demonstrations'
    images and their image markers; the query keeps its image. ``task.prompt`` must be a template (a task's
    named template is resolved against the model's first, see ``TaskSpec.with_prompts``).
    """
    if not isinstance(task.prompt, PromptTemplate):
        raise ValueError(
            f"task {task.name}: prompt {task.prompt!r} is a name; resolve it with task.with_prompts(model.prompts)"
        )
    fields = [template_fields(d) for d in demos]
    text = task.prompt.render(fields, template_fields(query), image_token, eoc_token, text_only_demos)
    images = [] if text_only_demos else [d.image_path for d in demos]
    images.append(query.image_path)
    check_prompt(text, len(images), image_token, f"the prompt of example {query.id}")
    return Prompt(text, images, [d.id for d in demos])


def demo_orders(demos: Sequence[EvalExample], n: int, seed: int, example_id: str) -> list[list[EvalExample]]:
    """Up to ``n`` distinct orders of ``demos`` (at most k! of them), the given order first."""
    count = min(n, math.factorial(len(demos)))
    if count <= 0:
        return []
    if math.factorial(len(demos)) <= 720:  # small k: choose among all permutations
        perms = [list(p) for p in itertools.permutations(range(len(demos)))]
        rng = example_rng(seed, f"orders:{example_id}")
        chosen = [perms[0], *rng.sample(perms[1:], count - 1)]
    else:
        rng, seen, chosen = example_rng(seed, f"orders:{example_id}"), set(), []
        chosen.append(list(range(len(demos))))
        seen.add(tuple(chosen[0]))
        while len(chosen) < count:
            perm = rng.sample(range(len(demos)), len(demos))
            if tuple(perm) not in seen:
                seen.add(tuple(perm))
                chosen.append(perm)
    return [[demos[i] for i in perm] for perm in chosen]


def ensemble_prompts(
    task: TaskSpec,
    demos: Sequence[EvalExample],
    query: EvalExample,
    seed: int,
    n: int = 6,
    text_only_demos: bool = False,
    image_token: str = TokenConfig.image_token,
    eoc_token: str = TokenConfig.eoc_token,
) -> list[Prompt]:
    """Prompt ensembling: one prompt per demonstration order (OpenFlamingo uses up to 6)."""
    return [
        build_prompt(task, order, query, text_only_demos, image_token, eoc_token)
        for order in demo_orders(demos, n, seed, query.id)
    ]


def ensemble_scores(scores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Average per-class scores (e.g. log-probabilities) over the prompts of an ensemble."""
    return torch.stack(list(scores), dim=0).mean(dim=0)
