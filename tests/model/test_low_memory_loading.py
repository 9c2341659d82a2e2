"""Flamingo.from_pretrained builds the model empty (meta device) and reads each tensor once onto its device in its
dtype; it gives what the eager build-then-copy path gave, on one device or split by a device map."""

from __future__ import annotations

import argparse
import dataclasses
import logging

import pytest
import torch
from tiny_outputs import assert_same_outputs, tiny_inputs, tiny_outputs

import flamingo.model.checkpoint as checkpoint
from flamingo.configs import ConfigError
from flamingo.errors import UsageError
from flamingo.model.config import FlamingoConfig
from flamingo.model.devices import (
    add_device_arguments,
    parse_device_map,
    resolve_device,
    resolve_dtype,
)
from flamingo.model.files import load_safetensors, read_safetensors
from flamingo.model.flamingo import Flamingo
from flamingo.model.tiny import build_tiny_flamingo
from flamingo.model.vision import OpenClipAdapter, build_vision_adapter

LAYERS = "lm.model.layers"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny llama Flamingo with open gates, saved with its backbones; and the model itself."""
    model = build_tiny_flamingo("llama", gate_init=0.5, seed=0).eval()
    directory = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(str(directory), save_backbones=True)
    return directory, model


@pytest.fixture
def quiet_accelerate():
    logger = logging.getLogger("accelerate")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def _eager_load(directory) -> Flamingo:
    """What loading did before: the LM on the CPU, a freshly initialised Flamingo, then the adapters copied in."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = FlamingoConfig.load(directory / "config.json")
    lm = AutoModelForCausalLM.from_pretrained(str(directory / "lm"))
    tokenizer = AutoTokenizer.from_pretrained(str(directory / "tokenizer"))
    vision_cfg = dataclasses.replace(
        config.vision, pretrained=str(directory / "vision" / config.vision.pretrained)
    )
    model = checkpoint.build_flamingo(config, lm, tokenizer, build_vision_adapter(vision_cfg))
    checkpoint.load_adapter_state(model, load_safetensors(directory / "model.safetensors"), "file")
    return model.eval()


def _where(device_map, name):
    """The device of module ``name``: its own key or its closest listed ancestor's."""
    parts = name.split(".")
    return next(
        (
            device_map[".".join(parts[:end])]
            for end in range(len(parts), 0, -1)
            if ".".join(parts[:end]) in device_map
        ),
        device_map.get(""),
    )


def test_weights_are_read_into_an_empty_model_and_match_the_eager_path(saved, monkeypatch):
    directory, _ = saved
    seen: dict[str, object] = {}
    real_flamingo, real_adapter_init = checkpoint.Flamingo, OpenClipAdapter.__init__

    def flamingo_spy(*args, **kwargs):
        model = real_flamingo(*args, **kwargs)
        seen["adapters"] = {p.device.type for n, p in model.adapter_parameters() if not n.startswith("new_")}
        return model

    def adapter_spy(self, visual, *args, **kwargs):
        seen.setdefault("vision", set()).add(next(visual.parameters()).device.type)
        real_adapter_init(self, visual, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "Flamingo", flamingo_spy)
    monkeypatch.setattr(OpenClipAdapter, "__init__", adapter_spy)
    loaded = checkpoint.from_pretrained(directory)
    assert seen["adapters"] == {"meta"}  # the Perceiver and the blocks were never initialised in memory
    assert seen["vision"] == {"meta"}  # nor was the vision tower
    eager = _eager_load(directory)
    want, got = eager.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert not any(t.is_meta for t in got.values())
    inputs = tiny_inputs(eager)
    assert_same_outputs(tiny_outputs(loaded, *inputs), tiny_outputs(eager, *inputs), exact=True)
    assert not loaded.training and loaded.device_map is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, "float16"])
def test_every_tensor_comes_in_the_dtype_asked_for(saved, dtype):
    directory, model = saved
    loaded = Flamingo.from_pretrained(str(directory), dtype=dtype)
    want = resolve_dtype(dtype)
    floats = {name: t.dtype for name, t in loaded.state_dict().items() if t.is_floating_point()}
    assert set(floats.values()) == {want}, {n: d for n, d in floats.items() if d != want}
    latents = model.perceiver.latents.detach().to(want)
    assert torch.equal(loaded.perceiver.latents, latents)  # the value, cast once from the file


def test_default_dtype_is_float32_on_cpu_and_the_device_resolves_to_cpu(saved):
    directory, _ = saved
    bf16_dir = directory.parent / "bf16"
    Flamingo.from_pretrained(str(directory), dtype="bfloat16").save_pretrained(str(bf16_dir), True)
    loaded = Flamingo.from_pretrained(str(bf16_dir), device="auto")  # no GPU here: the CPU, in float32
    assert {t.dtype for t in loaded.state_dict().values() if t.is_floating_point()} == {torch.float32}
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_dtype(None, "cpu") is torch.float32 and resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype("bf16") is torch.bfloat16
    with pytest.raises(UsageError, match="--dtype 'int3'"):
        resolve_dtype("int3")
    with pytest.raises(UsageError, match="no CUDA device"):
        resolve_device("cuda:0")


def test_a_device_map_dict_with_cpu_and_disk_loads_into_place(saved, tmp_path, quiet_accelerate):
    directory, _ = saved
    eager = _eager_load(directory)
    given = {"lm.model.embed_tokens": "cpu", "lm.model.rotary_emb": "cpu", f"{LAYERS}.0": "cpu"}
    given |= {f"{LAYERS}.{i}": "disk" for i in (1, 2, 3)} | {"lm.model.norm": "disk", "lm.lm_head": "cpu"}
    with pytest.raises(UsageError, match="offload_folder"):
        Flamingo.from_pretrained(str(directory), device_map=given)
    split = Flamingo.from_pretrained(str(directory), device_map=given, offload_folder=tmp_path)
    assert split.device_map["cross_attn.3"] == "disk" and split.device_map["vision"] == "cpu"
    assert all(p.is_meta for p in split.cross_attn["3"].parameters())  # offloaded: read from the folder
    inputs = tiny_inputs(eager)
    got, want = tiny_outputs(split, *inputs), tiny_outputs(eager, *inputs)
    assert_same_outputs(got, want)


@pytest.mark.parametrize("strategy", ["sequential", "auto"])
def test_a_planned_map_offloads_what_does_not_fit(saved, tmp_path, strategy, quiet_accelerate):
    directory, model = saved
    eager = _eager_load(directory)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    budget = {"cpu": int(weights * 0.6), "disk": 10**10}
    split = Flamingo.from_pretrained(
        str(directory), device_map=strategy, max_memory=budget, offload_folder=tmp_path
    )
    placed = split.device_map
    assert _where(placed, "vision") == _where(placed, "perceiver") == "cpu"  # planned first, in order
    assert _where(placed, "cross_attn.3") == _where(placed, f"{LAYERS}.3") == "disk"
    assert all(p.is_meta for p in split.cross_attn["3"].parameters())
    inputs = tiny_inputs(eager)
    got, want = tiny_outputs(split, *inputs), tiny_outputs(eager, *inputs)
    assert_same_outputs(got, want)


def test_one_device_named_as_a_device_map_is_that_device(saved):
    directory, _ = saved
    loaded = Flamingo.from_pretrained(str(directory), device_map="cpu")
    assert loaded.device_map is None
    assert {t.device.type for t in loaded.state_dict().values()} == {"cpu"}


def test_quantization_is_checked_before_reading_and_refused_with_a_split_map(saved):
    directory, _ = saved
    with pytest.raises(ConfigError, match="int3"):
        Flamingo.from_pretrained(str(directory), quantization="int3")
    with pytest.raises(UsageError, match="one device"):
        Flamingo.from_pretrained(str(directory), quantization="int8", device_map="sequential")


def test_the_reader_names_a_cut_file_and_casts_on_read(saved, tmp_path):
    directory, model = saved
    source = directory / "model.safetensors"
    names = ["perceiver.latents", "cross_attn.0.attn_gate"]
    state = read_safetensors(source, names, lambda _: torch.device("cpu"), torch.bfloat16)
    assert state["perceiver.latents"].dtype is torch.bfloat16
    assert torch.equal(state["perceiver.latents"], model.perceiver.latents.detach().to(torch.bfloat16))
    cut = tmp_path / "model.safetensors"
    cut.write_bytes(source.read_bytes()[:-64])
    from flamingo.model.files import ModelFileError

    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        read_safetensors(cut, list(load_safetensors(source))[-1:], lambda _: torch.device("cpu"))


def test_device_flags_parse_the_same_everywhere(tmp_path):
    from flamingo.cli import build_parser

    parser = build_parser()
    for command in (["generate", "--model", "m", "--prompt", "p"], ["eval"], ["serve", "--model", "m"]):
        args = parser.parse_args(command)
        assert (args.device, args.dtype, args.device_map) == ("auto", "auto", None), command
    args = parser.parse_args(["serve", "--model", "m", "--device-map", '{"vision": "0", "lm": "cpu"}'])
    assert parse_device_map(args.device_map) == {"vision": 0, "lm": "cpu"}
    assert parse_device_map("balanced_low_0") == "balanced_low_0"
    train = parser.parse_args(["train", "--dtype", "bfloat16"])
    assert train.device is None and train.dtype == "bfloat16"
    from flamingo.train.cli import device_overrides

    assert device_overrides("cpu", "bfloat16") == ["train.device=cpu", "train.precision=bf16"]
    with pytest.raises(UsageError, match="float32 or bfloat16"):
        device_overrides(None, "float16")
    with pytest.raises(UsageError, match="not valid JSON"):
        parse_device_map("{vision: 0}")
    fresh = argparse.ArgumentParser()
    add_device_arguments(fresh, device_map=False)
    with pytest.raises(SystemExit):
        fresh.parse_args(["--dtype", "int8"])


def test_pipeline_eval_and_server_load_through_the_empty_model_path(saved, monkeypatch):
    from flamingo.eval.models import FlamingoEvalModel
    from flamingo.pipeline import FlamingoPipeline
    from flamingo.serve.server import load_server_pipeline

    directory, _ = saved
    calls = []
    real = checkpoint.from_pretrained

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "from_pretrained", spy)
    pipe = FlamingoPipeline.from_pretrained(directory, device="auto", dtype="bfloat16")
    assert pipe.device == torch.device("cpu") and pipe.model.perceiver.latents.dtype is torch.bfloat16
    evaluated = FlamingoEvalModel.from_pretrained(str(directory), device="auto")
    assert evaluated.device == torch.device("cpu")
    served = load_server_pipeline(str(directory))
    assert not served.policy.allow_paths
    assert [c["device"] for c in calls] == ["auto", "auto", "auto"]
    assert [c["dtype"] for c in calls] == ["bfloat16", None, None]
