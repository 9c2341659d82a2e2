"""The training data stream: image order, labels, resumption, rank splits, bad input, collation, mixtures."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from train_support import (
    all_masked_document,
    hostile_interleaved_shards,
    interleaved_source,
    make_loader,
)

from flamingo.data.loader import IGNORE_INDEX, Mixture, Sample, SourceConfig, collate
from flamingo.data.shards import InterleavedShardWriter
from flamingo.data.synthetic import encode_image, synthetic_document


def _rows(batches) -> list[tuple[int, ...]]:
    return [tuple(row.tolist()) for batch in batches for row in batch.input_ids]


def test_images_follow_their_image_tokens_when_the_assignment_is_not_monotone(tmp_path, tiny_model):
    document = synthetic_document(random.Random(0), "doc0", num_sentences=4, num_images=2)
    colours = [(255, 0, 0), (0, 0, 255)]
    document.images = [encode_image(Image.new("RGB", (32, 32), c)) for c in colours]
    document.image_info[0].sha256 = document.image_info[1].sha256 = None
    document.image_info[0].matched_text_index = 3  # image 0 describes the LAST sentence,
    document.image_info[1].matched_text_index = 0  # image 1 the first: token order is image 1, image 0
    with InterleavedShardWriter(tmp_path, "x") as writer:
        writer.write(document)
    source = interleaved_source([str(p) for p in writer.shard_paths], batch_size=1, max_tokens=200)
    batch = make_loader(tiny_model, source).next_batch()
    assert batch.images.shape[:3] == (1, 2, 1) and batch.image_mask.tolist() == [[True, True]]
    red_minus_blue = batch.images[0, :, 0, 0].mean((1, 2)) - batch.images[0, :, 0, 2].mean((1, 2))
    assert red_minus_blue[0] < 0 < red_minus_blue[1]  # first slot blue (image 1), second red (image 0)
    ids, labels = batch.input_ids[0], batch.labels[0]
    image_id = tiny_model.config.tokens.image_id
    assert int((ids == image_id).sum()) == 2
    assert (labels[ids == image_id] == IGNORE_INDEX).all()
    assert (labels[: int((ids == image_id).nonzero()[0])] == IGNORE_INDEX).all()  # nothing before image 1


def test_resuming_from_a_saved_state_continues_exactly(shards, tiny_model):
    source = interleaved_source(shards["interleaved"], shuffle_block=4)
    loader = make_loader(tiny_model, source, prefetch=2)
    for _ in range(3):
        loader.next_batch()
    state = loader.state_dict()
    expected = [loader.next_batch() for _ in range(12)]  # crosses shard and epoch boundaries
    assert loader.state_dict()["position"]["epoch"] >= 1
    loader.close()
    resumed = make_loader(tiny_model, source, prefetch=2)
    resumed.load_state_dict(state)
    got = [resumed.next_batch() for _ in range(12)]
    resumed.close()
    assert _rows(got) == _rows(expected)
    assert all(torch.equal(a.images, b.images) for a, b in zip(got, expected))


def test_a_worker_process_gives_the_same_batches_positions_and_counts_as_the_loop(
    tmp_path, shards, tiny_model
):
    masked = all_masked_document(tiny_model.tokenizer, 96)
    paths = hostile_interleaved_shards(tmp_path, shards["interleaved"], masked)
    source = interleaved_source(paths, shuffle_block=2, batch_size=3)
    runs = {}
    for worker, prefetch in (("process", 2), ("thread", 2), ("thread", 0)):
        loader = make_loader(tiny_model, source, prefetch=prefetch, worker=worker)
        batches, states = [], []
        for _ in range(10):  # crosses shards, epochs and every kind of bad input
            batches.append(loader.next_batch())
            states.append(loader.state_dict())
        if worker == "process":
            assert loader._producers[0].process.is_alive()
        loader.close()
        runs[worker, prefetch] = batches, states, loader.counts()
        if worker == "process":
            assert not loader._producers[0].process.is_alive()
    batches, states, counts = runs["process", 2]
    assert counts["read_corrupt_image"] >= 1 and counts["no_supervised_tokens"] >= 1
    for other, other_states, other_counts in (runs["thread", 2], runs["thread", 0]):
        assert _rows(other) == _rows(batches) and other_states == states and other_counts == counts
        for a, b in zip(other, batches):
            assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
            assert torch.equal(a.attention_mask, b.attention_mask)


def test_a_worker_process_error_reaches_the_training_loop(tmp_path, tiny_model):
    document = synthetic_document(random.Random(0), "doc0", num_sentences=3, num_images=1)
    with InterleavedShardWriter(tmp_path, "x") as writer:
        writer.write(document)
    source = interleaved_source([str(p) for p in writer.shard_paths], min_image_bytes=10**9)
    loader = make_loader(tiny_model, source, prefetch=2, worker="process")
    with pytest.raises(ValueError, match="no usable sample") as raised:
        loader.next_batch()
    assert "in the data worker process" in "".join(raised.value.__notes__)  # the worker's traceback
    loader.close()
    assert not loader._producers[0].process.is_alive()
    with pytest.raises(ValueError, match="worker must be"):
        make_loader(tiny_model, source, worker="fiber")


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie that nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_killed_training_process_leaves_no_data_worker_behind(tmp_path, shards):
    """The worker notices that its parent is gone (here: SIGKILL, no clean-up at all) and exits."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "run.py"
    script.write_text(
        "import sys, time\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from train_support import interleaved_source, make_loader\n"
        "from flamingo.model.tiny import build_tiny_flamingo\n"
        "source = interleaved_source(sys.argv[2:])\n"
        "loader = make_loader(build_tiny_flamingo('llama'), source, prefetch=2, worker='process')\n"
        "loader.next_batch()\n"
        "print(loader._producers[0].process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    here = str(Path(__file__).parent)
    process = subprocess.Popen(
        [sys.executable, str(script), here, *shards["interleaved"]], stdout=subprocess.PIPE, text=True
    )
    worker = int(process.stdout.readline())
    assert _running(worker)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 20
    while _running(worker):
        if time.monotonic() > deadline:
            os.kill(worker, signal.SIGKILL)
            pytest.fail("the data worker outlived its killed parent by 20 s")
        time.sleep(0.2)


def test_epochs_reshuffle_and_the_order_depends_on_the_seed(shards, tiny_model):
    source = interleaved_source(shards["interleaved"], single_image_drop_prob=0.0, batch_size=1)
    loader = make_loader(tiny_model, source)
    order = loader.dataset.epoch_shards
    assert sorted(order(0)) == sorted(order(1)) and [order(e) for e in range(4)] != [order(0)] * 4
    first = [loader.next_batch() for _ in range(5)]
    other = make_loader(tiny_model, source)
    other.dataset.seed = 1
    assert _rows(first) != _rows([other.next_batch() for _ in range(5)])


def test_fewer_shards_than_ranks_split_by_sample_and_cover_the_single_process_stream(shards, tiny_model):
    source = interleaved_source(
        shards["interleaved"][:1], single_image_drop_prob=0.0, max_tokens=200, batch_size=2
    )
    single = make_loader(tiny_model, source)
    ranks = [make_loader(tiny_model, source, rank=r, world=2) for r in range(2)]
    assert ranks[0].dataset.split == "sample"
    expected = _rows([single.next_batch() for _ in range(4)])
    got = [_rows([loader.next_batch() for _ in range(2)]) for loader in ranks]
    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == sorted(expected)
    three = [make_loader(tiny_model, source, rank=r, world=3) for r in range(3)]
    assert all(len(loader.next_batch()) == 2 for loader in three)  # no rank is left without data


def test_enough_shards_split_by_shard(shards, tiny_model):
    source = interleaved_source(shards["interleaved"])
    ranks = [make_loader(tiny_model, source, rank=r, world=2) for r in range(2)]
    assert ranks[0].dataset.split == "shard"
    for epoch in range(3):
        mine = [loader.dataset.epoch_shards(epoch) for loader in ranks]
        assert not set(mine[0]) & set(mine[1]) and sorted(mine[0] + mine[1]) == sorted(shards["interleaved"])


def test_bad_input_and_unsupervised_documents_are_skipped_and_counted(tmp_path, shards, tiny_model):
    masked = all_masked_document(tiny_model.tokenizer, 96)
    paths = hostile_interleaved_shards(tmp_path, shards["interleaved"], masked)
    source = interleaved_source(paths, single_image_drop_prob=0.0, shuffle_block=1, batch_size=5)
    loader = make_loader(tiny_model, source)
    batches = [loader.next_batch() for _ in range(8)]
    counts = loader.counts()
    assert counts["read_corrupt_image"] >= 1 and counts["read_bad_json"] >= 1
    assert counts["read_truncated_tar"] >= 1 and counts["no_supervised_tokens"] >= 1
    assert all(((b.labels[:, 1:] != IGNORE_INDEX).sum(1) > 0).all() for b in batches)
    assert all(torch.isfinite(b.images).all() for b in batches)


def test_collate_pads_image_slots_and_masks_them():
    samples = [
        Sample(
            torch.tensor([5, 6, 7]),
            torch.tensor([1, 1, 1]),
            torch.tensor([-100, 6, 7]),
            torch.ones(2, 3, 4, 4),
        ),
        Sample(torch.tensor([5, 6]), torch.tensor([1, 1]), torch.tensor([-100, 6]), torch.ones(1, 3, 4, 4)),
    ]
    batch = collate(samples, pad_id=0)
    assert batch.images.shape == (2, 2, 1, 3, 4, 4)
    assert batch.image_mask.tolist() == [[True, True], [True, False]]
    assert batch.images[1, 1].abs().sum() == 0
    assert batch.input_ids.tolist() == [[5, 6, 7], [5, 6, 0]] and batch.attention_mask[1].tolist() == [
        1,
        1,
        0,
    ]
    assert batch.labels[1, 2] == IGNORE_INDEX and batch.num_supervised == 3


def test_sampled_mixture_is_a_function_of_the_step(shards, tiny_model):
    sources = [
        interleaved_source(shards["interleaved"], sample_weight=1.0),
        SourceConfig(name="pairs", kind="pairs", shards=shards["pairs"], batch_size=4, sample_weight=3.0),
    ]
    names = []
    for _ in range(2):
        mixture = Mixture([make_loader(tiny_model, s) for s in sources], mixing="sample", seed=0)
        names.append([mixture.next_step(step, 1)[0].name for step in range(12)])
    assert names[0] == names[1] and set(names[0]) == {"interleaved", "pairs"}
    assert names[0].count("pairs") > names[0].count("interleaved")


def test_a_source_with_no_usable_sample_fails_clearly(tmp_path, tiny_model):
    document = synthetic_document(random.Random(0), "doc0", num_sentences=3, num_images=1)
    with InterleavedShardWriter(tmp_path, "x") as writer:
        writer.write(document)
    source = interleaved_source([str(p) for p in writer.shard_paths], min_image_bytes=10**9)
    with pytest.raises(ValueError, match="no usable sample"):
        make_loader(tiny_model, source).next_batch()
