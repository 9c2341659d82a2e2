"""Sharded checkpoints (torch.distributed.checkpoint): N->M resume with the data position, async save, export."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_support import (
    QUIET,
    TINY_PRESET,
    interleaved_source,
    make_loader,
    read_losses,
    subprocess_env,
    tiny_config,
)

from flamingo.cli import main
from flamingo.data.loader import SourceDataset
from flamingo.errors import UsageError
from flamingo.model.flamingo import Flamingo
from flamingo.model.tiny import build_tiny_flamingo
from flamingo.train.data_streams import StreamLoader, concat_batches, stream_parts
from flamingo.train.trainer import Trainer

FIELDS = ("images", "image_mask", "input_ids", "attention_mask", "labels")


def _stream_loader(model, source, rank: int, world: int, streams: int) -> StreamLoader:
    tokens = model.config.tokens

    def dataset(stream: int) -> SourceDataset:
        args = (model.tokenizer, model.vision.preprocess, tokens.image_id, tokens.eoc_id, 0, stream, streams)
        return SourceDataset(source, *args)

    return StreamLoader(source, dataset, tokens.pad_id, rank, world, streams, prefetch=0)


def _assert_same_batch(got, expected) -> None:
    for name in FIELDS:
        assert torch.equal(getattr(got, name), getattr(expected, name)), name


def test_stream_parts_cover_the_global_micro_batch_once():
    # 2 streams, 3 ranks of 2 rows: 6 rows, 3 per stream; rank 1 straddles both streams.
    assert stream_parts(2, 0, 3, 2) == [(0, 0, 2)]
    assert stream_parts(2, 1, 3, 2) == [(0, 2, 3), (1, 0, 1)]
    assert stream_parts(2, 2, 3, 2) == [(1, 1, 3)]
    assert stream_parts(4, 0, 1, 2) == [(0, 0, 2), (1, 0, 2)]  # one rank reads both streams whole
    with pytest.raises(UsageError, match="multiple of 2"):
        stream_parts(1, 0, 3, 2)


@pytest.mark.parametrize(("ranks", "batch"), [(1, 4), (4, 1), (3, 2)], ids=["2to1", "2to4", "2to3"])
def test_other_rank_counts_continue_the_two_streams_exactly(tiny_model, shards, ranks, batch):
    """After a saved position, M ranks together train on exactly the rows that the 2 ranks would have."""
    rows = ranks * batch // 2  # per stream and micro-batch
    source = interleaved_source(shards["interleaved"], batch_size=rows, single_image_drop_prob=0)
    originals = [make_loader(tiny_model, source, rank, 2) for rank in range(2)]
    for loader in originals:
        loader.next_batch()
    saved = {rank: loader.state_dict() for rank, loader in enumerate(originals)}
    expected = [
        concat_batches([loader.next_batch() for loader in originals], tiny_model.config.tokens.pad_id, False)
        for _ in range(2)
    ]
    resumed_source = interleaved_source(shards["interleaved"], batch_size=batch, single_image_drop_prob=0)
    resumed = [_stream_loader(tiny_model, resumed_source, rank, ranks, 2) for rank in range(ranks)]
    for loader in resumed:
        loader.load_stream_states({s: saved[s] for s, _, _ in loader.parts})
    for step in range(2):
        pieces = [loader.next_batch() for loader in resumed]
        _assert_same_batch(concat_batches(pieces, tiny_model.config.tokens.pad_id, False), expected[step])
    # Every reader of a stream ends where the 2-rank run's rank would: the next checkpoint is the same.
    after = {rank: loader.state_dict()["position"] for rank, loader in enumerate(originals)}
    for loader in resumed:
        for stream, state in loader.stream_states().items():
            assert state["position"] == after[stream]


def _logits(model: Flamingo, seed: int = 3) -> torch.Tensor:
    images = torch.rand(1, 1, 1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))  # tiny: 32x32
    image_id = model.config.tokens.image_id
    ids = torch.tensor([[image_id, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        return model(images, ids, torch.ones_like(ids)).logits


def test_async_sharded_save_resumes_like_the_uninterrupted_run_and_exports(tmp_path):
    """One process: checkpoints written in the background resume bit for bit; export gives the same logits."""
    common = ["data.synthetic_samples=40", "data.sources.0.max_tokens=48", "data.sources.1.batch_size=4"]
    common += ["checkpoint.format=sharded", "checkpoint.async_save=true", "checkpoint.every=2"]
    whole = Trainer(tiny_config(tmp_path / "whole", *common, "train.steps=4"))
    expected = whole.fit().losses
    assert not list((tmp_path / "whole" / "checkpoints").glob(".tmp-*"))
    run = tmp_path / "resumed"
    shutil.copytree(tmp_path / "whole", run)
    shutil.rmtree(run / "checkpoints" / "step-000004")
    resumed = Trainer(tiny_config(run, *common, "train.steps=4", "checkpoint.resume=auto"))
    assert resumed.step == 2
    result = resumed.fit()
    assert result.losses == {3: expected[3], 4: expected[4]}
    assert result.checkpoint == run / "checkpoints" / "step-000004" and result.model_dir is None

    out = tmp_path / "exported"
    assert main(["export", str(result.checkpoint), "--out", str(out)]) == 0
    loaded = Flamingo.from_pretrained(out)
    resumed.model.eval()
    # The same tensors (the trained model's kernels may round the last bit differently, hence the tolerance).
    assert torch.allclose(_logits(loaded), _logits(resumed.model), rtol=0, atol=1e-6)
    assert not torch.equal(_logits(loaded), _logits(build_tiny_flamingo("llama")))  # the trained tensors came


def _torchrun(ranks: int, run: Path, *overrides: str) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    command += ["-m", "flamingo.cli", "train", "--config", str(TINY_PRESET), f"run_dir={run}", *QUIET]
    command += ["parallel.strategy=fsdp", *overrides]
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _resumable_copy(run: Path, name: str) -> Path:
    copy = run.parent / name
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints" / "step-000004")
    (copy / "metrics.jsonl").unlink()
    return copy


def _batches(documents: int, pairs: int) -> list[str]:
    return [f"data.sources.0.batch_size={documents}", f"data.sources.1.batch_size={pairs}"]


# Four shards per source (split by shard over 2 ranks); the global batch stays 4 documents and 8 pairs.
SHARDED = ["train.steps=4", "checkpoint.every=2", "checkpoint.format=sharded", "data.sources.0.max_tokens=64"]


@pytest.mark.slow
def test_two_fsdp_ranks_resume_on_one_and_on_four(tmp_path):
    run = tmp_path / "two"
    _torchrun(2, run, *SHARDED, "checkpoint.async_save=true", *_batches(2, 4))
    expected = read_losses(run)
    assert sorted(expected) == [1, 2, 3, 4]

    # Each rank wrote its own shards: about half of the trained tensors and optimizer state each, no full copy.
    state = run / "checkpoints" / "step-000002" / "state"
    sizes = [(state / f"__{rank}_0.distcp").stat().st_size for rank in range(2)]
    full = sum(sizes)
    assert all(0.35 * full < size < 0.65 * full for size in sizes), sizes
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(str(state)).read_metadata()
    optimizer_bytes = sum(
        item.size.numel() * 4
        for key, item in metadata.state_dict_metadata.items()
        if key.startswith("optim.state.") and hasattr(item, "size") and len(item.size) > 0
    )
    assert optimizer_bytes > 0.5 * full  # the optimizer state is most of it, so each file holds ~1/2 of it

    # One process, the same global batch: the same samples, summed in another order.
    one = _resumable_copy(run, "one")
    config = tiny_config(one, *SHARDED, "checkpoint.resume=auto", *_batches(4, 8))
    trainer = Trainer(config)
    assert trainer.data_streams == 2
    result = trainer.fit()
    assert sorted(result.losses) == [3, 4]
    assert all(abs(result.losses[s] - expected[s]) < 1e-5 for s in (3, 4)), (result.losses, expected)
    exported = tmp_path / "exported"
    assert main(["export", str(result.checkpoint), "--out", str(exported)]) == 0
    trainer.model.eval()
    assert torch.allclose(
        _logits(Flamingo.from_pretrained(exported)), _logits(trainer.model), rtol=0, atol=1e-6
    )

    # Four processes, one document and two pairs each.
    four = _resumable_copy(run, "four")
    _torchrun(4, four, *SHARDED, "checkpoint.resume=auto", *_batches(1, 2))
    got = read_losses(four)
    assert sorted(got) == [3, 4]
    assert all(abs(got[s] - expected[s]) < 1e-5 for s in (3, 4)), (got, expected)


def test_a_sharded_checkpoint_is_synced_before_it_is_published(tmp_path, monkeypatch):
    import os

    from flamingo.distributed import DistInfo
    from flamingo.train import checkpointing as ckpt

    model = build_tiny_flamingo("llama")
    optimizer = torch.optim.AdamW([p for _, p in model.adapter_parameters()], lr=1e-3)
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(
        os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd))
    )
    monkeypatch.setattr(
        os, "rename", lambda src, dst: (events.append(("rename", str(src))), real_rename(src, dst))
    )
    streams = {"streams": {0: {"interleaved": {"position": {"epoch": 0}}}}}
    pending = ckpt.save_sharded_checkpoint(
        tmp_path, 3, model, optimizer, {"skipped_steps": 0}, streams, DistInfo(), 2
    )
    final = pending.path
    tmp = final.with_name(f".tmp-{final.name}")
    published = [i for i, (kind, path) in enumerate(events) if kind == "rename" and path == str(tmp)]
    assert len(published) == 1
    synced = {path for kind, path in events[: published[0]] if kind == "fsync"}
    expected = {str(tmp / p.relative_to(final)) for p in final.rglob("*")}
    assert {str(tmp / "state" / ".metadata"), str(tmp / "state" / "__0_0.distcp")} <= expected <= synced
    assert ckpt.checkpoint_format(final) == "sharded"
    assert ckpt.read_data_streams(final, 1) == {0: streams["streams"][0]}


def test_positions_of_checkpoints_from_before_streams_are_read_as_one_stream_per_rank(tmp_path):
    from flamingo.train import checkpointing as ckpt

    for rank in range(2):
        torch.save({"data": {"pairs": {"rank": rank}}, "rng": {}}, tmp_path / f"rank-{rank:05d}.pt")
    assert ckpt.read_data_streams(tmp_path, 2) == {0: {"pairs": {"rank": 0}}, 1: {"pairs": {"rank": 1}}}
