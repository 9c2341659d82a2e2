"""Low-bit frozen backbones: what is quantized, how close a trained model stays, what is saved and refused."""

from __future__ import annotations

import sys

import pytest
import torch
from model_support import make_images
from torch import nn

from flamingo.configs import ConfigError
from flamingo.model import lora as lora_lib
from flamingo.model.flamingo import Flamingo
from flamingo.model.quantize import (
    QuantizationConfig,
    QuantizationError,
    import_torchao,
    is_quantized,
    is_quantized_tensor,
    parse_quantization,
    quantize_backbones,
    quantized_modules,
    stored_bytes,
)
from flamingo.model.tiny import _CORPUS, build_tiny_flamingo

MODES = ("int8", "int4")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Flamingo whose LM learned the tiny corpus (100 full-model steps, about 5 s): its next-token
    distributions are peaked, unlike a random model's flat ones, where any perturbation flips the argmax.
    Saved with its backbones; returns (directory, eval prompts as token id lists)."""
    torch.manual_seed(0)
    model = build_tiny_flamingo("llama", layers=2, gate_init=0.5)
    tokens = model.config.tokens
    rows = [[*model.tokenizer(s).input_ids, tokens.eoc_id] for s in sorted(set(_CORPUS))]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokens.pad_id)
    labels = torch.full_like(ids, -100)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = labels[i, : len(row)] = torch.tensor(row)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(100):
        loss = model(input_ids=ids, labels=labels, attention_mask=(labels != -100).long()).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1
    model.eval()
    directory = tmp_path_factory.mktemp("trained") / "model"
    model.save_pretrained(str(directory), save_backbones=True)
    prompts = [row[:k] for row in rows for k in (1, 3, 5)]  # 15 prompts
    return directory, prompts


def _greedy(model: Flamingo, prompts: list[list[int]], new: int = 8) -> list[list[int]]:
    out = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        generated = model.generate(input_ids=ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        out.append(generated[0, len(prompt) :].tolist())
    return out


def test_configs_from_strings_mappings_and_training_yaml():
    assert parse_quantization("int8") == QuantizationConfig(mode="int8")
    assert parse_quantization({"mode": "int4", "group_size": 64}).group_size == 64
    assert parse_quantization(None) is None
    with pytest.raises(ConfigError, match=r"quantization='int3': use one of \('int8', 'int4'\)"):
        parse_quantization("int3")
    with pytest.raises(ConfigError, match="group_size"):
        parse_quantization({"mode": "int4", "group_size": 48})
    with pytest.raises(ConfigError, match="did you mean 'mode'"):
        parse_quantization({"mdoe": "int4"}, "run.yaml: model.quantization")
    from flamingo.train.config import load_config

    config = load_config(None, ["model.quantization.mode=int4", "model.quantization.include_vision=true"])
    assert config.model.quantization == QuantizationConfig(mode="int4", include_vision=True)
    assert load_config(None, []).model.quantization is None
    with pytest.raises(ConfigError, match=r"model\.quantization\.mode"):
        load_config(None, ["model.quantization.mode=fp8"])


@pytest.mark.parametrize("mode", MODES)
def test_only_the_lm_linear_layers_below_the_head_are_quantized(trained, mode):
    directory, _ = trained
    reference = Flamingo.from_pretrained(str(directory))
    model = Flamingo.from_pretrained(str(directory), quantization=mode)
    lm_linear = {
        f"lm.{n}" for n, m in model.lm.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"
    }
    assert set(quantized_modules(model)) == lm_linear and len(lm_linear) == 14  # 2 layers x 7 projections
    for name, tensor in model.state_dict(keep_vars=True).items():
        plain = name.startswith(("perceiver.", "cross_attn.", "new_token_", "vision.")) or "embed" in name
        if plain or name.startswith("lm.lm_head") or "norm" in name:
            assert not is_quantized_tensor(tensor), name
    # The full-precision parts are exactly what was saved; the quantized layers hold fewer bytes.
    for name, tensor in reference.adapter_state_dict().items():
        assert torch.equal(model.adapter_state_dict()[name], tensor)
    linear_bytes = sum(stored_bytes(model.get_submodule(n)) for n in lm_linear)
    fp32_bytes = sum(stored_bytes(reference.get_submodule(n)) for n in lm_linear)
    # int8: one byte a weight + a scale per row; int4 on the CPU: also a byte a value, + scales per 32 columns
    assert linear_bytes < (0.32 if mode == "int8" else 0.40) * fp32_bytes
    assert stored_bytes(model) < stored_bytes(reference)
    # Not a no-op: the logits moved, a little.
    ids = torch.tensor([[3, 17, 40, 9, 12]])
    with torch.no_grad():
        low, full = model(input_ids=ids).logits, reference(input_ids=ids).logits
    assert 0 < (low - full).abs().max() < 0.1 * full.abs().max()


def test_greedy_tokens_of_int8_and_int4_agree_with_fp32_on_a_trained_model(trained):
    directory, prompts = trained
    reference = _greedy(Flamingo.from_pretrained(str(directory)), prompts)
    total = sum(map(len, reference))
    for mode, target in (("int8", 0.9), ("int4", 0.8)):
        got = _greedy(Flamingo.from_pretrained(str(directory), quantization=mode), prompts)
        agree = sum(a == b for ref, new in zip(reference, got) for a, b in zip(ref, new))
        assert agree / total >= target, (mode, agree, total)


@pytest.mark.parametrize("mode", MODES)
def test_generate_with_images_and_the_vision_tower_quantized_too(trained, mode):
    directory, prompts = trained
    model = Flamingo.from_pretrained(
        str(directory), quantization=QuantizationConfig(mode=mode, include_vision=True)
    )
    vision = [n for n in quantized_modules(model) if n.startswith("vision.")]
    assert vision and all(not n.startswith(("perceiver", "cross_attn")) for n in quantized_modules(model))
    image_id = model.config.tokens.image_id
    ids = torch.tensor([[image_id, *prompts[0]]])
    out = model.generate(make_images(1, 1), ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 4)


def test_a_quantized_model_saves_adapters_only_and_they_load_on_the_original_backbones(trained, tmp_path):
    directory, _ = trained
    model = Flamingo.from_pretrained(str(directory), quantization="int8")
    with pytest.raises(QuantizationError, match="save_backbones=True on a quantized model"):
        model.save_pretrained(str(tmp_path / "refused"), save_backbones=True)
    assert not (tmp_path / "refused").exists()
    model.save_pretrained(str(tmp_path / "adapters"))
    assert not (tmp_path / "adapters" / "lm").exists() and not (tmp_path / "adapters" / "vision").exists()
    loaded = Flamingo.from_pretrained(str(tmp_path / "adapters"))  # full precision, backbones found by path
    original = Flamingo.from_pretrained(str(directory))
    assert not is_quantized(loaded) and not loaded.config.backbones_included
    assert loaded.config.lm.name_or_path == str((directory / "lm").resolve())
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(loaded(make_images(1, 1), ids).logits, original(make_images(1, 1), ids).logits)


def test_lora_wraps_the_quantized_layers_and_gradients_reach_it(trained):
    directory, _ = trained
    model = Flamingo.from_pretrained(str(directory), quantization="int4")
    names = lora_lib.add_lora(model, r=4, alpha=8)
    layer = lora_lib.lora_modules(model.lm)[names[0]]
    assert is_quantized_tensor(layer.get_base_layer().weight)
    for param in lora_lib.lora_state_dict(model).values():
        param.data.normal_()  # B = 0 would give A no gradient
    ids = torch.tensor([[model.config.tokens.image_id, 5, 6, 7, 8]])
    model(make_images(1, 1), ids, labels=ids).loss.backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in lora_lib.lora_state_dict(model).values()
    )
    assert all(p.grad is not None for _, p in model.adapter_parameters())
    with pytest.raises(QuantizationError, match="cannot fold LoRA into a quantized layer"):
        lora_lib.merge_lora(model)
    plain = Flamingo.from_pretrained(str(directory))
    lora_lib.add_lora(plain, r=4, alpha=8)
    with pytest.raises(QuantizationError, match="before adding or loading LoRA"):
        quantize_backbones(plain, "int8")


def test_refusals_name_the_problem():
    model = build_tiny_flamingo("gpt2")  # Conv1D projections only
    with pytest.raises(QuantizationError, match=r"no nn\.Linear layers"):
        quantize_backbones(model, "int8")
    model = build_tiny_flamingo("llama", layers=1)
    quantize_backbones(model, "int8")
    with pytest.raises(QuantizationError, match="already quantized"):
        quantize_backbones(model, "int4")


def test_int4_keeps_layers_whose_width_does_not_tile_into_groups():
    model = build_tiny_flamingo("llama", layers=1, width=48)  # 48 input columns: not a multiple of 32
    report = quantize_backbones(model, "int4")
    assert report.quantized == ("lm.model.layers.0.mlp.down_proj",)  # 96 input columns
    assert "lm.model.layers.0.self_attn.q_proj" in report.kept and "lm.lm_head" in report.kept


def test_missing_torchao_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # makes the import fail
    with pytest.raises(QuantizationError, match=r"flamingo-vlm\[quantize\]"):
        import_torchao()


def test_generate_command_takes_quantize(trained, capsys):
    from flamingo.cli import main

    directory, _ = trained
    assert main(["generate", "--model", str(directory), "--prompt", "a photo", "--quantize", "int4"]) == 0
    assert capsys.readouterr().out.strip()


def test_the_pipeline_and_the_server_load_quantized_on_one_device(trained):
    from flamingo.cli import build_parser
    from flamingo.pipeline import FlamingoPipeline
    from flamingo.serve.server import load_server_pipeline

    directory, _ = trained
    pipe = load_server_pipeline(str(directory), quantization="int8")
    assert is_quantized(pipe.model) and isinstance(pipe(["a photo"], max_new_tokens=3), str)
    with pytest.raises(ValueError, match="runs on one device"):
        FlamingoPipeline.from_pretrained(str(directory), device_map={"": "cpu"}, quantization="int4")
    parser = build_parser()
    for command in (
        ["serve", "--model", "m"],
        ["eval"],
        ["train"],
        ["generate", "--model", "m", "--prompt", "p"],
    ):
        assert parser.parse_args([*command, "--quantize", "int4"]).quantize == "int4"
