"""Work-saving options of the training step: trimmed padding and the frozen-encoder feature cache.

Both must leave the numbers as they are: trimmed batches give the loss of untrimmed ones, and cached features
give the losses of a run that encodes every image at every step.
"""

from __future__ import annotations

import pytest
import torch
from train_support import interleaved_source, make_loader, read_losses, tiny_config

from flamingo.data.batch import collate
from flamingo.data.loader import IGNORE_INDEX, Sample, SourceBatches, SourceLoader
from flamingo.train.metrics import read_metrics
from flamingo.train.trainer import Trainer, TrainingError, train


def _sample(real: int, length: int, left: bool = False) -> Sample:
    ids = torch.arange(1, real + 1)
    pad = length - real
    mask = torch.ones(real, dtype=torch.long)
    labels = ids.clone()
    labels[0] = IGNORE_INDEX

    def padded(x: torch.Tensor, value: int) -> torch.Tensor:
        fill = torch.full((pad,), value, dtype=x.dtype)
        return torch.cat([fill, x]) if left else torch.cat([x, fill])

    return Sample(padded(ids, 0), padded(mask, 0), padded(labels, IGNORE_INDEX), torch.ones(1, 3, 4, 4))


def test_trimmed_collate_ends_at_the_longest_real_span_and_never_cuts_left_padding():
    right = [_sample(3, 8), _sample(5, 8), _sample(2, 8)]
    full, trimmed = collate(right, pad_id=0), collate(right, pad_id=0, trim_padding=True)
    assert full.input_ids.shape == (3, 8) and trimmed.input_ids.shape == (3, 5)
    for name in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(getattr(full, name)[:, :5], getattr(trimmed, name))
    assert full.attention_mask[:, 5:].sum() == 0  # only padding went
    assert trimmed.num_supervised == full.num_supervised and trimmed.num_tokens == full.num_tokens
    left = [_sample(3, 8, left=True), _sample(5, 8, left=True)]
    assert collate(left, pad_id=0, trim_padding=True).input_ids.shape == (2, 8)


def test_trimmed_batches_give_the_loss_of_full_length_ones(tmp_path, shards):
    trainer = Trainer(tiny_config(tmp_path))
    source = interleaved_source(shards["interleaved"], max_tokens=256, batch_size=4)
    full = make_loader(trainer.model, source).next_batch()
    loader = make_loader(trainer.model, source)
    loader.trim_padding = True
    trimmed = loader.next_batch()
    assert trimmed.input_ids.shape[1] < full.input_ids.shape[1] == 256
    trainer.model.train()
    losses = []
    for batch in (full, trimmed):
        out = trainer.model(
            batch.images, batch.input_ids, batch.attention_mask, batch.labels, image_mask=batch.image_mask,
            loss_reduction="sum",
        )  # fmt: skip
        losses.append(out.loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)


def test_the_trainer_trims_by_default_and_keeps_max_tokens_when_asked(tmp_path):
    from flamingo.train.trainer import build_mixture

    for trim, check in ((True, lambda n: n < 256), (False, lambda n: n == 256)):
        overrides = (f"data.trim_padding={str(trim).lower()}", "data.sources.0.max_tokens=256")
        trainer = Trainer(tiny_config(tmp_path / str(trim), *overrides))
        mixture = build_mixture(trainer.config, trainer.model, trainer.info)
        try:
            batches = [b for s in mixture.next_step(0, 1) for b in s.micro_batches if s.name == "interleaved"]
        finally:
            mixture.close()
        assert isinstance(mixture.loaders[0], SourceLoader) and mixture.loaders[0].trim_padding is trim
        assert check(batches[0].input_ids.shape[1])


def test_cached_features_train_exactly_like_fresh_ones_and_the_hit_rate_is_logged(tmp_path):
    # 12 documents and 12 pairs: epochs of 3 steps (documents) and 1.5 steps (pairs).
    common = ("train.steps=8", "data.synthetic_samples=12", "checkpoint.every=0", "logging.every=1")
    plain = train(tiny_config(tmp_path / "plain", *common))
    cached = train(tiny_config(tmp_path / "cached", *common, "train.vision_cache_mb=16"))
    assert plain.step == cached.step == 8
    losses, cached_losses = read_losses(plain.run_dir), read_losses(cached.run_dir)
    assert list(losses) == list(cached_losses)
    torch.testing.assert_close(
        torch.tensor(list(cached_losses.values())), torch.tensor(list(losses.values())), rtol=1e-6, atol=1e-6
    )
    records = read_metrics(cached.run_dir)
    # Documents keep up to 3 of their pictures, so a later epoch can still bring a picture not seen before.
    assert records[1]["vision_cache_hit_rate"] == 0.0 and records[8]["vision_cache_hit_rate"] > 0.8
    assert "vision_cache_hit_rate" not in read_metrics(plain.run_dir)[8]


def test_the_cache_refuses_a_trained_encoder_and_fsdp(tmp_path, monkeypatch):
    from flamingo.train import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "freeze_backbones", lambda model, *a, **k: None)
    with pytest.raises(TrainingError, match="encoder trains here"):
        Trainer(tiny_config(tmp_path / "a", "train.vision_cache_mb=8"))
    monkeypatch.undo()
    monkeypatch.setattr(trainer_module, "strategy_for", lambda *a: "fsdp")
    monkeypatch.setattr(trainer_module, "parallelize", lambda model, *a: (model, "fsdp"))
    with pytest.raises(TrainingError, match="fsdp"):
        Trainer(tiny_config(tmp_path / "b", "train.vision_cache_mb=8"))


def test_a_cached_step_matches_an_uncached_one(tmp_path, shards):
    source = interleaved_source(shards["interleaved"], batch_size=4)
    steps = []
    for mb in (0, 8):
        trainer = Trainer(
            tiny_config(tmp_path / str(mb), "train.warmup_steps=0", f"train.vision_cache_mb={mb}")
        )
        batch = make_loader(trainer.model, source).next_batch()
        stats = [trainer.train_step([SourceBatches("interleaved", 1.0, [batch])]) for _ in range(3)]
        steps.append(stats)
        if mb:
            assert 0 < stats[0].encoded_images <= stats[0].images
            assert [s.encoded_images for s in stats[1:]] == [0, 0]
            assert trainer.vision_cache.stats()["hits"] == 3 * stats[0].images - stats[0].encoded_images
    for a, b in zip(*steps):
        assert a.images == b.images
        assert a.loss == pytest.approx(b.loss, rel=1e-6) and a.grad_norm == pytest.approx(
            b.grad_norm, rel=1e-5
        )
