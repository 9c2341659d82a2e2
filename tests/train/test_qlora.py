"""QLoRA: LoRA and the adapters train on a quantized frozen LM; what is saved loads on the original backbones."""

from __future__ import annotations

import pytest
import torch
from train_support import interleaved_source, make_loader, tiny_config

from flamingo.model import lora as lora_lib
from flamingo.model.flamingo import Flamingo
from flamingo.model.quantize import is_quantized, is_quantized_tensor
from flamingo.model.tiny import build_tiny_flamingo
from flamingo.train.trainer import Trainer, TrainingError

QLORA = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8"]
FAST = ["data.synthetic_samples=40", "checkpoint.every=0", "train.warmup_steps=0", "train.lr=0.01"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny checkpoint holding its full-precision backbones (what a QLoRA run starts from)."""
    directory = tmp_path_factory.mktemp("qlora") / "base"
    build_tiny_flamingo("llama", layers=2, gate_init=0.5).save_pretrained(str(directory), save_backbones=True)
    return directory


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_qlora_lowers_the_loss_and_saves_what_loads_on_the_original_backbones(tmp_path, base, shards, mode):
    start = ["model.kind=pretrained", f"model.name={base}", f"model.quantization.mode={mode}"]
    trainer = Trainer(tiny_config(tmp_path / "run", *start, *QLORA, *FAST, "train.steps=8"))
    model = trainer.model
    layers = lora_lib.lora_modules(model.lm)
    assert layers and all(is_quantized_tensor(m.get_base_layer().weight) for m in layers.values())
    assert all(not is_quantized_tensor(p) for p in trainer.trainable)
    batch = make_loader(model, interleaved_source(shards["interleaved"])).next_batch()
    model.eval()
    with torch.no_grad():
        before = trainer._token_loss_sum(batch).item()
    result = trainer.fit()
    model.eval()
    with torch.no_grad():
        after = trainer._token_loss_sum(batch).item()
    assert after < 0.98 * before, (before, after)  # 8 steps of LoRA and adapters on a synthetic stream

    saved = result.model_dir
    assert (saved / "lora" / "adapter_model.safetensors").is_file() and (
        saved / "model.safetensors"
    ).is_file()
    assert not (saved / "lm").exists() and not (saved / "vision").exists()
    loaded = Flamingo.from_pretrained(str(saved))  # full precision: the original backbones, by path
    assert not is_quantized(loaded) and lora_lib.has_lora(loaded)
    trained_lora = lora_lib.lora_state_dict(model)
    assert all(torch.equal(p, trained_lora[n]) for n, p in lora_lib.lora_state_dict(loaded).items())
    assert all(torch.equal(t, model.adapter_state_dict()[n]) for n, t in loaded.adapter_state_dict().items())
    # On full-precision backbones the trained model computes nearly what it computed quantized.
    loaded.eval()
    with torch.no_grad():
        out = loaded(
            batch.images,
            batch.input_ids,
            batch.attention_mask,
            batch.labels,
            image_mask=batch.image_mask,
            return_logits=False,
            loss_reduction="sum",
        )
    on_original = out.loss.item()
    assert abs(on_original - after) < 0.05 * after


def test_quantized_backbones_are_never_saved(tmp_path, base):
    start = ["model.kind=pretrained", f"model.name={base}", "model.quantization.mode=int8", *QLORA, *FAST]
    with pytest.raises(TrainingError, match=r"checkpoint\.save_backbones=true with model\.quantization"):
        Trainer(tiny_config(tmp_path / "a", *start, "checkpoint.save_backbones=true"))
    with pytest.raises(TrainingError, match=r"merge_on_save with model\.quantization"):
        Trainer(tiny_config(tmp_path / "b", *start, "model.lora.merge_on_save=true"))
