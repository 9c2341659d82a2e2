"""Shared pieces of the training tests: the tiny preset, synthetic shards, hostile shards, CLI runs."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import torch

from flamingo.data.loader import Batch, SourceConfig, SourceDataset, SourceLoader
from flamingo.data.synthetic import write_synthetic_interleaved, write_synthetic_pairs
from flamingo.model.tiny import build_tiny_flamingo
from flamingo.train.config import RunConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
TINY_PRESET = ROOT / "configs" / "train" / "tiny-cpu.yaml"
QUIET = ["logging.progress=false"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Subprocess runs use OMP_NUM_THREADS=1; in-process runs match them (bit-identical comparisons)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(run_dir: Path, *overrides: str) -> RunConfig:
    return load_config(TINY_PRESET, [f"run_dir={run_dir}", *QUIET, *overrides])


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def read_losses(run_dir: Path) -> dict[int, float]:
    from flamingo.train.metrics import read_metrics

    return {step: record["loss"] for step, record in read_metrics(run_dir).items()}


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny model for its tokenizer and image transform (tests that train build their own)."""
    return build_tiny_flamingo("llama")


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> dict[str, list[str]]:
    """Synthetic interleaved documents (3 shards of 20) and pairs (2 shards of 40)."""
    root = tmp_path_factory.mktemp("shards")
    docs = write_synthetic_interleaved(root / "interleaved", 60, seed=1, max_samples_per_shard=20)
    pairs = write_synthetic_pairs(root / "pairs", 80, seed=1, max_samples_per_shard=40)
    return {"interleaved": [str(p) for p in docs], "pairs": [str(p) for p in pairs]}


def make_loader(
    model, source: SourceConfig, rank: int = 0, world: int = 1, prefetch: int = 0, worker: str = "thread"
) -> SourceLoader:
    tokens = model.config.tokens
    dataset = SourceDataset(
        source, model.tokenizer, model.vision.preprocess, tokens.image_id, tokens.eoc_id, 0, rank, world
    )
    return SourceLoader(dataset, tokens.pad_id, prefetch, worker)


def interleaved_source(shards: list[str], **fields) -> SourceConfig:
    defaults = {"max_tokens": 96, "max_images": 3, "min_image_bytes": 0, "shuffle_block": 8, "batch_size": 4}
    return SourceConfig(name="interleaved", kind="interleaved", shards=shards, **{**defaults, **fields})


def split_batch(batch: Batch, start: int, stop: int) -> Batch:
    return Batch(*(getattr(batch, f)[start:stop] for f in batch.__dataclass_fields__))


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def tar_members(path: str | Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]


def all_masked_document(tokenizer, max_tokens: int):
    """A one-image document whose <image> lands on the last of ``max_tokens`` tokens: nothing to supervise."""
    import random

    from flamingo.data.synthetic import synthetic_document

    document = synthetic_document(random.Random(5), "masked0", num_sentences=2, num_images=1)
    document.image_info[0].matched_text_index = 1
    for words in range(1, 400):
        filler = " ".join(["weather"] * words)
        if len(tokenizer(filler).input_ids) == max_tokens - 1:
            document.text_list = [filler, "A red circle is shown here."]
            return document
    raise AssertionError("could not place <image> at the last token")


def _without_hashes(raw: bytes) -> bytes:
    """A document JSON without image hashes, so a corrupt image is caught by decoding, not by its hash."""
    data = json.loads(raw)
    for info in data["image_info"]:
        info.pop("sha256", None)
    return json.dumps(data).encode()


def hostile_interleaved_shards(folder: Path, good: list[str], masked_document) -> list[str]:
    """Shards with a corrupt image, bad JSON, a truncated tar and an all-masked document, plus a good one."""
    from flamingo.data.shards import InterleavedShardWriter

    folder.mkdir(parents=True, exist_ok=True)
    members = tar_members(good[0])
    corrupt = [
        (n, b"not a png" if n.startswith("doc000000.") and n.endswith(".png") else d) for n, d in members
    ]
    corrupt = [(n, _without_hashes(d) if n == "doc000000.json" else d) for n, d in corrupt]
    broken = [(n, b"{oops" if n == "doc000001.json" else d) for n, d in corrupt]
    hostile = write_tar(folder / "hostile-000000.tar", broken)
    data = Path(good[1]).read_bytes()
    truncated = folder / "truncated-000001.tar"
    truncated.write_bytes(data[: len(data) // 2 + 100])  # cut inside a member
    with InterleavedShardWriter(folder, "masked") as writer:
        writer.write(masked_document)
    return [str(hostile), str(truncated), *map(str, writer.shard_paths), *good[2:]]
