"""One optimizer step: frozen weights, weight decay groups, gradient accumulation, clipping, non-finite steps."""

from __future__ import annotations

import pytest
import torch
from train_support import interleaved_source, make_loader, split_batch, tiny_config

from flamingo.data.loader import SourceBatches, SourceConfig
from flamingo.train import trainer as trainer_module
from flamingo.train.trainer import Trainer, TrainingError


def _trainer(tmp_path, *overrides: str) -> Trainer:
    return Trainer(tiny_config(tmp_path, "train.warmup_steps=0", *overrides))


def _batches(trainer: Trainer, shards, n: int = 2, batch_size: int = 4):
    source = interleaved_source(shards["interleaved"], batch_size=batch_size, single_image_drop_prob=0.0)
    loader = make_loader(trainer.model, source)
    return [loader.next_batch() for _ in range(n)]


def _pairs(trainer: Trainer, shards, batch_size: int = 4):
    source = SourceConfig(name="pairs", kind="pairs", shards=shards["pairs"], batch_size=batch_size)
    return make_loader(trainer.model, source).next_batch()


def test_frozen_weights_get_no_grad_no_optimizer_state_and_stay_in_eval_mode(tmp_path, shards):
    trainer = _trainer(tmp_path)
    batch = _batches(trainer, shards, n=1)[0]
    frozen_before = {n: p.clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    trainer.train_step([SourceBatches("interleaved", 1.0, [batch])])
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in trainer.model.adapter_parameters()}
    assert frozen_before and all(trainer.model.get_parameter(n).grad is None for n in frozen_before)
    assert all(torch.equal(trainer.model.get_parameter(n), p) for n, p in frozen_before.items())
    with_state = {id(p) for p in trainer.optimizer.state}
    named = dict(trainer.model.named_parameters())
    assert with_state == {id(named[n]) for n in trainable}
    assert not trainer.model.lm.training and not trainer.model.vision.training
    assert trainer.model.perceiver.training and trainer.model.cross_attn.training


def test_weight_decay_applies_to_cross_attention_only(tmp_path):
    trainer = _trainer(tmp_path)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    decayed = {
        names[id(p)] for g in trainer.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]
    }
    assert decayed and all(n.startswith("cross_attn.") for n in decayed)
    assert {
        n for n, p in trainer.model.named_parameters() if p.requires_grad and n.startswith("cross_attn.")
    } == decayed


def test_two_micro_batches_of_two_equal_one_batch_of_four_with_clipping_once(tmp_path, shards, monkeypatch):
    calls = []
    original = trainer_module.clip_gradients
    monkeypatch.setattr(trainer_module, "clip_gradients", lambda *a: calls.append(1) or original(*a))
    clip = ["train.grad_clip=0.05"]  # small enough to clip every step: per-micro-step clipping would differ
    whole, accumulated = (
        _trainer(tmp_path / "a", *clip),
        _trainer(tmp_path / "b", *clip, "train.grad_accum=2"),
    )
    batches, pairs = _batches(whole, shards, n=2), _pairs(whole, shards)
    for step in range(2):
        batch = batches[step]
        a = whole.train_step([SourceBatches("i", 1.0, [batch]), SourceBatches("p", 0.2, [pairs])])
        halves = [split_batch(batch, 0, 2), split_batch(batch, 2, 4)]
        pair_halves = [split_batch(pairs, 0, 2), split_batch(pairs, 2, 4)]
        b = accumulated.train_step([SourceBatches("i", 1.0, halves), SourceBatches("p", 0.2, pair_halves)])
        assert a.grad_norm > 0.05 and a.grad_norm == pytest.approx(b.grad_norm, rel=1e-5)
        assert a.loss == pytest.approx(b.loss, rel=1e-6)
    assert len(calls) == 4  # once per optimizer step, never per micro-batch
    for name, p in whole.model.adapter_parameters():
        assert torch.allclose(p, accumulated.model.get_parameter(name), atol=1e-6), name


def test_a_non_finite_step_is_skipped_and_too_many_in_a_row_stop(tmp_path, shards):
    trainer = _trainer(tmp_path, "train.max_nonfinite_steps=2")
    good = _batches(trainer, shards, n=1)[0]
    bad = split_batch(good, 0, 4)
    bad.images = torch.full_like(good.images, float("nan"))
    before = {n: p.clone() for n, p in trainer.model.adapter_parameters()}
    stats = trainer.train_step([SourceBatches("i", 1.0, [bad])])
    assert stats.skipped and trainer.skipped_steps == 1 and not trainer.optimizer.state
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.adapter_parameters())
    assert all(p.grad is None for _, p in trainer.model.adapter_parameters())
    stats = trainer.train_step([SourceBatches("i", 1.0, [good])])
    assert not stats.skipped and trainer.skipped_in_row == 0 and trainer.step == 2
    trainer.train_step([SourceBatches("i", 1.0, [bad])])
    with pytest.raises(TrainingError, match="2 optimizer steps in a row"):
        trainer.train_step([SourceBatches("i", 1.0, [bad])])


def test_the_first_step_is_counted_once_and_counting_changes_no_number(tmp_path, shards):
    """MFU's FLOPs come from a count of the first step's forward and backward, run beside the real step: the
    steps of a counted trainer equal those of a trainer that counts nothing, bit for bit (counting inside the
    real step would not: the counter's module hooks change the order in which gradients are summed)."""
    from flamingo.train.flops import count_flops, default_peak_flops

    counted, plain, probe = _trainer(tmp_path / "a"), _trainer(tmp_path / "b"), _trainer(tmp_path / "c")
    batches = _batches(counted, shards, n=2)
    first = counted._counted_step([SourceBatches("i", 1.0, [batches[0]])])
    flops, positions = counted.step_flops
    expected = count_flops(lambda: probe.train_step([SourceBatches("i", 1.0, [batches[0]])]))
    assert flops == expected > 0 and positions == first.positions
    second = counted._counted_step([SourceBatches("i", 1.0, [batches[1]])])
    assert counted.step_flops == (flops, positions)  # counted once
    once = plain.train_step([SourceBatches("i", 1.0, [batches[0]])])
    again = plain.train_step([SourceBatches("i", 1.0, [batches[1]])])
    assert (first.loss, first.grad_norm) == (once.loss, once.grad_norm)
    assert (second.loss, second.grad_norm) == (again.loss, again.grad_norm)
    record = counted._record(second, 0.5, type("M", (), {"counts": lambda self: {}})())
    peak = counted.config.logging.peak_flops or default_peak_flops(counted.info.device)
    assert record["mfu"] == pytest.approx(flops * second.positions / positions / 0.5 / peak)
