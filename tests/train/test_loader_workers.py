"""Several data workers per source: the split, exact resumption for 1, 2 and 4 workers, counts, pinning."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from train_support import (
    all_masked_document,
    hostile_interleaved_shards,
    interleaved_source,
    make_loader,
)

from flamingo.data.loader import SourceLoader, pin_memory_for
from flamingo.data.synthetic import write_synthetic_interleaved


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory) -> list[str]:
    """3 shards of 6 documents: short epochs, so that every worker crosses one within a few batches."""
    root = tmp_path_factory.mktemp("small")
    return [str(p) for p in write_synthetic_interleaved(root, 18, seed=2, max_samples_per_shard=6)]


def _rows(batches) -> list[tuple[int, ...]]:
    return [tuple(row.tolist()) for batch in batches for row in batch.input_ids]


def _same_batches(got, expected) -> bool:
    return len(got) == len(expected) and all(
        all(torch.equal(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
        for a, b in zip(got, expected)
    )


@pytest.mark.parametrize(
    ("workers", "kind"), [(1, "thread"), (2, "thread"), (4, "thread"), (2, "process"), (4, "process")]
)
def test_a_resumed_loader_continues_the_uninterrupted_stream(small_shards, tiny_model, workers, kind):
    source = interleaved_source(small_shards, shuffle_block=3, batch_size=2, num_workers=workers)
    loader = make_loader(tiny_model, source, prefetch=2, worker=kind)
    for _ in range(5):
        loader.next_batch()
    state = copy.deepcopy(loader.state_dict())  # what a checkpoint holds
    expected = [loader.next_batch() for _ in range(10)]
    expected_states = [copy.deepcopy(loader.state_dict())]
    expected_counts = loader.counts()
    loader.close()
    final = expected_states[-1]
    positions = [w["position"] for w in final["workers"]] if workers > 1 else [final["position"]]
    assert len(positions) == workers and all(p["epoch"] >= 1 for p in positions)  # every worker wrapped

    resumed = make_loader(tiny_model, source, prefetch=2, worker=kind)
    resumed.load_state_dict(state)
    got = [resumed.next_batch() for _ in range(10)]
    resumed.close()
    assert _same_batches(got, expected)
    assert resumed.state_dict() == final and resumed.counts() == expected_counts


def test_thread_process_and_in_loop_workers_give_the_same_batches(small_shards, tiny_model):
    source = interleaved_source(small_shards, shuffle_block=3, batch_size=2, num_workers=3)
    runs = []
    for kind, prefetch in (("process", 2), ("thread", 1), ("thread", 0)):
        loader = make_loader(tiny_model, source, prefetch=prefetch, worker=kind)
        runs.append(([loader.next_batch() for _ in range(7)], loader.state_dict()))
        loader.close()
    assert all(_same_batches(batches, runs[0][0]) and state == runs[0][1] for batches, state in runs[1:])
    assert runs[0][1]["next_worker"] == 7 % 3


def test_workers_split_each_epoch_without_overlap_and_their_counts_add_up(tmp_path, shards, tiny_model):
    """Over one epoch the workers' samples are exactly the single stream's, and so are the summed skip counts
    (file-level problems, here a truncated tar, are counted once)."""
    masked = all_masked_document(tiny_model.tokenizer, 96)
    paths = hostile_interleaved_shards(tmp_path, shards["interleaved"], masked)
    source = interleaved_source(paths, shuffle_block=4, batch_size=2)
    single = make_loader(tiny_model, source).dataset
    expected = Counter(tuple(s.input_ids.tolist()) for s, _ in single.epoch_samples())
    expected_counts = single.counts()
    assert expected_counts["read_truncated_tar"] == 1 and expected_counts["no_supervised_tokens"] >= 1
    for workers in (2, 4):
        views = [single.for_worker(w, workers) for w in range(workers)]
        parts = [Counter(tuple(s.input_ids.tolist()) for s, _ in view.epoch_samples()) for view in views]
        assert all(parts) and sum(parts, Counter()) == expected
        total: Counter[str] = Counter()
        for view in views:
            total.update(view.counts())
        assert dict(total) == expected_counts
        files = sum(view.read_stats.files for view in views)
        assert files == single.read_stats.files == len(paths)


def test_a_saved_position_resumes_only_with_its_number_of_workers(small_shards, tiny_model):
    two = make_loader(tiny_model, interleaved_source(small_shards, num_workers=2))
    two.next_batch()
    state = two.state_dict()
    one = make_loader(tiny_model, interleaved_source(small_shards))
    with pytest.raises(ValueError, match=r"saved position is for num_workers=2.*num_workers: 2"):
        one.load_state_dict(state)
    four = make_loader(tiny_model, interleaved_source(small_shards, num_workers=4))
    with pytest.raises(ValueError, match=r"num_workers=1, the config has 4"):
        four.load_state_dict(one.state_dict())


def test_a_worker_left_without_usable_samples_says_so(small_shards, tiny_model):
    # 18 documents over 32 workers: worker 20 gets no raw sample at all.
    source = interleaved_source(small_shards, num_workers=32, batch_size=1)
    view = make_loader(tiny_model, source).datasets[20]
    with pytest.raises(ValueError, match=r"\(data worker 20 of 32\) no usable sample.*lower num_workers"):
        next(iter(view))


def test_batches_are_pinned_only_for_cuda_on_a_machine_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not pin_memory_for("cuda") and not pin_memory_for("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pin_memory_for("cuda") and pin_memory_for(torch.device("cuda", 1)) and not pin_memory_for("cpu")


def test_the_trainer_pins_batches_for_its_device(tmp_path, monkeypatch):
    from train_support import tiny_config

    from flamingo.train.parallel import init_distributed
    from flamingo.train.trainer import build_mixture, build_model

    config = tiny_config(tmp_path, "data.synthetic_samples=20", "data.sources.0.num_workers=2")
    model = build_model(config.model)
    info = init_distributed(config.parallel, "cpu")
    mixture = build_mixture(config, model, info)
    assert [loader.pin_memory for loader in mixture.loaders] == [False, False]
    assert [loader.num_workers for loader in mixture.loaders] == [2, 1]
    monkeypatch.setattr("flamingo.train.trainer.pin_memory_for", lambda device: True)
    assert all(loader.pin_memory for loader in build_mixture(config, model, info).loaders)
    # A run resumed on another number of ranks reads V streams through StreamLoaders: pinned too.
    streamed = build_mixture(config, model, info, streams=2).loaders
    assert [type(loader).__name__ for loader in streamed] == ["StreamLoader", "StreamLoader"]
    assert all(loader.pin_memory for loader in streamed)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory needs CUDA")
@pytest.mark.parametrize("kind", ["thread", "process"])
def test_pinned_batches_are_page_locked_and_unchanged(small_shards, tiny_model, kind):
    source = interleaved_source(small_shards, batch_size=2, num_workers=2)
    plain = make_loader(tiny_model, source, prefetch=2, worker=kind)
    expected = [plain.next_batch() for _ in range(4)]
    plain.close()
    tokens = tiny_model.config.tokens
    pinned = SourceLoader(plain.dataset, tokens.pad_id, 2, kind, pin_memory=True)
    got = [pinned.next_batch() for _ in range(4)]
    pinned.close()
    assert all(b.images.is_pinned() and b.input_ids.is_pinned() for b in got)
    assert _same_batches(got, expected)


def test_a_run_with_two_workers_resumes_exactly_and_logs_the_loaders_share(tmp_path, caplog):
    import logging
    import shutil

    from train_support import read_losses, tiny_config

    from flamingo.train.metrics import read_metrics
    from flamingo.train.trainer import Trainer

    settings = [
        "data.synthetic_samples=24",
        "data.sources.0.num_workers=2",
        "data.sources.1.num_workers=2",
        "train.steps=4",
        "checkpoint.every=2",
        "logging.loader_warn_share=0",  # every step counts as starved: the warning's once-then-rarely rule
    ]
    with caplog.at_level(logging.WARNING, logger="flamingo.train.trainer"):
        Trainer(tiny_config(tmp_path / "a", *settings)).fit()
    warned = [r.getMessage() for r in caplog.records if "for data" in r.getMessage()]
    assert len(warned) == 1 and "num_workers (now {'interleaved': 2, 'pairs': 2})" in warned[0]
    records = read_metrics(tmp_path / "a")
    assert sorted(records) == list(range(1, 5))
    for record in records.values():
        assert 0 <= record["loader_wait_share"] <= 1 and record["loader_wait_s"] >= 0
        assert record["loader_wait_s"] <= record["step_seconds"]
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-000004")
    Trainer(tiny_config(tmp_path / "b", *settings, "checkpoint.resume=auto")).fit()
    assert read_losses(tmp_path / "b") == read_losses(tmp_path / "a")  # steps 3-4 rerun bit for bit
