"""LoRA on the LM: exact at injection, hooks intact, only LoRA + adapters train, checkpoints round-trip."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from train_support import interleaved_source, make_loader, read_losses, tiny_config

from flamingo.data.loader import SourceBatches
from flamingo.model import lora as lora_lib
from flamingo.model.flamingo import Flamingo
from flamingo.model.tiny import build_tiny_flamingo
from flamingo.train.trainer import Trainer

LORA = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8"]
FAST = ["data.synthetic_samples=40", "checkpoint.every=0", "train.warmup_steps=0"]


def _inputs(model: Flamingo, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images (2, 2, 1, 3, 32, 32) and ids (2, 16) with an <image> token at positions 1 and 9."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.tokens.first_new_id, (2, 16), generator=generator)
    ids[:, [1, 9]] = model.config.tokens.image_id
    return torch.randn(2, 2, 1, 3, 32, 32, generator=generator), ids


def _logits(model: Flamingo, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(images, ids).logits


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_zero_b_gives_the_same_logits_and_the_cross_attention_hooks_still_fire(family):
    model = build_tiny_flamingo(family, gate_init=0.5)  # open gates: the images reach the logits
    images, ids = _inputs(model)
    other = images.clone()
    other[:, 1] = torch.randn_like(other[:, 1])
    before, before_other = _logits(model, images, ids), _logits(model, other, ids)
    layers = list(lora_lib._get_path(model.lm, model.layers_path))
    names = lora_lib.add_lora(model, r=4, alpha=8)
    assert names and all(".layers." in n or ".h." in n for n in names)  # inside the decoder layers only
    assert list(lora_lib._get_path(model.lm, model.layers_path)) == layers  # the hooked objects are kept
    assert torch.equal(_logits(model, images, ids), before)
    assert torch.equal(_logits(model, other, ids), before_other)
    # Image 2 (slot 1) is seen from position 9 on only: the hooks still route each image to its tokens.
    changed = (_logits(model, other, ids) - _logits(model, images, ids)).abs().amax(-1)  # (b, s)
    assert (changed[:, :9] == 0).all() and (changed[:, 9:] > 0).all()


def test_targets_refuse_the_head_and_unknown_names():
    model = build_tiny_flamingo("llama")
    with pytest.raises(ValueError, match="output head and the embeddings"):
        lora_lib.add_lora(model, target_modules=["q_proj", "lm_head"])
    with pytest.raises(ValueError, match="matches no linear layer"):
        lora_lib.add_lora(model, target_modules=["query"])
    assert not lora_lib.has_lora(model)
    names = lora_lib.add_lora(model, target_modules=["q_proj", "v_proj"])
    assert len(names) == 8 and all(n.endswith(("q_proj", "v_proj")) for n in names)


def test_only_lora_and_adapters_train_and_frozen_weights_stay(tmp_path, shards):
    trainer = Trainer(
        tiny_config(tmp_path, *LORA, *FAST, "model.lora.dropout=0.1", "model.lora.weight_decay=0.01")
    )
    model = trainer.model
    lora_names = {f"lm.{n}" for n, p in model.lm.named_parameters() if ".lora_" in n}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert lora_names and trainable == lora_names | {n for n, _ in model.adapter_parameters()}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora_before = {n: model.get_parameter(n).detach().clone() for n in lora_names}
    source = interleaved_source(shards["interleaved"], single_image_drop_prob=0.0)
    batch = make_loader(model, source).next_batch()
    trainer._set_modes()
    dropouts = [m for n, m in model.lm.named_modules() if ".lora_dropout." in n]
    assert dropouts and all(m.training for m in dropouts)
    assert not any(m.training for n, m in model.lm.named_modules() if ".lora_" not in n)
    loss = trainer._token_loss_sum(batch)
    loss.backward()
    assert all(model.get_parameter(n).grad is not None for n in trainable)
    assert all(model.get_parameter(n).grad is None for n in frozen)
    trainer.optimizer.zero_grad(set_to_none=True)
    for _ in range(2):  # B starts at zero, so A's gradient is zero on the first step: two steps move both
        trainer.train_step([SourceBatches("interleaved", 1.0, [batch])])
    assert all(torch.equal(model.get_parameter(n), p) for n, p in frozen.items())
    assert all(not torch.equal(model.get_parameter(n), p) for n, p in lora_before.items())
    assert {id(p) for p in trainer.optimizer.state} == {id(model.get_parameter(n)) for n in trainable}
    decay = {id(p): g["weight_decay"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert {decay[id(model.get_parameter(n))] for n in lora_names} == {0.01}


def test_checkpoint_round_trip_gives_the_same_logits_unmerged_and_merged(tmp_path):
    trainer = Trainer(tiny_config(tmp_path / "run", *LORA, *FAST, "train.steps=3", "train.lr=0.02"))
    result = trainer.fit()
    images, ids = _inputs(trainer.model, seed=1)
    trained = _logits(trainer.model, images, ids)
    model_dir = result.model_dir
    assert (model_dir / "lora" / "adapter_config.json").is_file()
    assert not any(
        "lora" in k or "base_layer" in k for k in load_file(str(model_dir / "lm" / "model.safetensors"))
    )
    loaded = Flamingo.from_pretrained(str(model_dir))  # with its LoRA
    assert lora_lib.has_lora(loaded)
    assert torch.equal(_logits(loaded, images, ids), trained)
    base_dir = tmp_path / "without-lora"
    shutil.copytree(model_dir, base_dir, ignore=shutil.ignore_patterns("lora"))
    plain = Flamingo.from_pretrained(str(base_dir))  # the base LM alone (no LoRA): different logits
    assert not torch.allclose(_logits(plain, images, ids), trained, atol=1e-4)
    # The lora/ folder is a standard PEFT adapter for the bare LM, too.
    from peft import PeftModel

    text = ids.masked_fill(ids == trainer.model.config.tokens.image_id, 5)
    peft_lm = PeftModel.from_pretrained(plain.lm, str(model_dir / "lora")).eval()
    with torch.no_grad():
        expected = loaded.lm(input_ids=text).logits
        assert torch.allclose(peft_lm(input_ids=text).logits, expected, atol=1e-6)

    merged_run = Trainer(
        tiny_config(tmp_path / "merged", *LORA, *FAST, "train.steps=3", "model.lora.merge_on_save=true")
    )
    merged_dir = merged_run.fit().checkpoint
    state = json.loads((merged_dir / "state.json").read_text())
    assert state["lora_trained"] and not (merged_dir / "model" / "lora").exists()
    plain_merged = Flamingo.from_pretrained(str(merged_dir / "model"))
    reference = _logits(merged_run.model, images, ids)
    assert not lora_lib.has_lora(plain_merged)
    assert torch.allclose(_logits(plain_merged, images, ids), reference, atol=1e-5)
    # Resuming reads the unmerged factors kept beside model/.
    resumed = Trainer(
        tiny_config(tmp_path / "merged", *LORA, *FAST, "train.steps=4", "checkpoint.resume=auto")
    )
    assert torch.equal(_logits(resumed.model, images, ids), reference)


def test_a_lora_run_resumed_from_its_middle_checkpoint_repeats_the_same_steps(tmp_path):
    settings = [
        *LORA,
        "data.synthetic_samples=40",
        "train.steps=6",
        "checkpoint.every=3",
        "model.lora.dropout=0.1",
    ]
    Trainer(tiny_config(tmp_path / "a", *settings)).fit()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-000006")
    Trainer(tiny_config(tmp_path / "b", *settings, "checkpoint.resume=auto")).fit()
    assert read_losses(tmp_path / "b") == read_losses(tmp_path / "a")  # steps 4-6 rerun bit for bit
    lora = ("checkpoints", "step-000006", "model", "lora", "adapter_model.safetensors")
    first, second = (load_file(str(tmp_path.joinpath(run, *lora))) for run in "ab")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    with pytest.raises(ValueError, match=r"was trained with LoRA: resume with model\.lora\.enabled=true"):
        Trainer(tiny_config(tmp_path / "b", "data.synthetic_samples=40", "checkpoint.resume=auto"))
