"""The Ray engine's CLIP stage: a pool of actors that load the model once each and match the local engine."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from corpus_fakes import encode, small_config, textured
from counting_clip import CountingClip

from flamingo.corpus import run_pipeline
from flamingo.corpus.ray_engine import clip_actor_options
from flamingo.data.shards import ReadStats, read_interleaved


@pytest.mark.parametrize(
    ("cluster", "workers", "actors", "expected"),
    [
        ({"CPU": 64.0, "GPU": 8.0}, 4, 0, {"concurrency": 8, "num_gpus": 1, "num_cpus": 1}),  # one per GPU
        ({"CPU": 64.0, "GPU": 8.0}, 4, 2, {"concurrency": 2, "num_gpus": 1, "num_cpus": 1}),  # capped
        (
            {"CPU": 64.0, "GPU": 2.0},
            4,
            6,
            {"concurrency": 2, "num_gpus": 1, "num_cpus": 1},
        ),  # no more than GPUs
        (
            {"CPU": 8.0, "GPU": 0.0},
            3,
            0,
            {"concurrency": 3, "num_gpus": 0, "num_cpus": 1},
        ),  # CPU: one per worker
        ({"CPU": 8.0}, 3, 5, {"concurrency": 5, "num_gpus": 0, "num_cpus": 1}),
        ({"CPU": 2.0}, 4, 0, {"concurrency": 1, "num_gpus": 0, "num_cpus": 1}),  # a CPU left for the tasks
        ({"CPU": 1.0}, 4, 0, {"concurrency": 1, "num_gpus": 0, "num_cpus": 0}),  # shares the only CPU
    ],
)
def test_clip_actor_options_follow_the_cluster(cluster, workers, actors, expected) -> None:
    assert clip_actor_options(cluster, workers, actors) == expected


def _inputs(tmp_path: Path) -> tuple[list[Path], str]:
    root = tmp_path / "images"
    root.mkdir()
    colours = ["red", "green", "blue", "yellow"]
    for i, colour in enumerate(colours * 2):
        (root / f"{colour}{i}.png").write_bytes(encode(textured(colour, 40 + i)))
    inputs = []
    for n in range(4):  # four shards, two pages each, two images a page
        path = tmp_path / f"part-{n}.jsonl"
        lines = [
            {
                "id": f"p{n}-{k}",
                "text": f"A {colours[(n + k) % 4]} kite flies. The {colours[(n + k + 1) % 4]} sea is calm.",
                "images": [
                    f"{colours[(n + k) % 4]}{(n + k) % 4}.png",
                    f"{colours[(n + k + 1) % 4]}{4 + (n + k + 1) % 4}.png",
                ],
            }
            for k in range(2)
        ]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        inputs.append(path)
    return inputs, str(root)


def _shards(out: Path) -> list[dict]:
    docs = read_interleaved(sorted((out / "shards").glob("*.tar")), stats=ReadStats())
    return [{**d.to_dict(), "images": [im.data for im in d.images]} for d in docs]


@pytest.mark.slow
def test_ray_clip_actors_load_once_and_match_the_local_engine(tmp_path) -> None:
    ray = pytest.importorskip("ray")
    inputs, root = _inputs(tmp_path)
    config = small_config(dedup_exact=False, dedup_perceptual=False)
    config.fetch.local_root = root
    config.interleave.similarity_threshold = -1.0  # random weights: keep every pair, compare the numbers
    config.interleave.batch_size = 3  # several embedding calls per shard, across its pages
    config.interleave.clip_actors = 2
    local_log, ray_log = tmp_path / "local.log", tmp_path / "ray.log"
    run_pipeline(inputs, tmp_path / "local", config, embedder=CountingClip(local_log))
    here = Path(__file__).resolve().parent
    ray.init(
        num_cpus=3,
        include_dashboard=False,
        object_store_memory=200 * 2**20,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(here.parents[1] / "src"), str(here)])}},
    )
    try:
        run_pipeline(
            inputs, tmp_path / "ray", config, engine="ray", workers=2, embedder=CountingClip(ray_log)
        )
    finally:
        ray.shutdown()
    events = [line.split() for line in ray_log.read_text().splitlines()]
    loads = Counter(pid for what, pid in events if what == "load")
    embedding = {pid for what, pid in events if what == "embed"}
    assert 1 <= len(loads) <= 2 and set(loads.values()) == {1}  # at most two actors, one construction each
    # All embedding happens in the actors (Ray may hand every batch to one of them), none in this process.
    assert embedding and embedding <= set(loads) and str(os.getpid()) not in set(loads) | embedding
    local, remote = _shards(tmp_path / "local"), _shards(tmp_path / "ray")
    assert len(local) == 8 and sum(len(d["images"]) for d in local) == 16
    assert local == remote  # the same placements and similarities (to 6 decimals)
    local_stats, ray_stats = (json.loads((tmp_path / e / "stats.json").read_text()) for e in ("local", "ray"))
    for stats in (local_stats, ray_stats):
        for stage in stats["stages"].values():
            stage.pop("seconds")
    assert local_stats == ray_stats
