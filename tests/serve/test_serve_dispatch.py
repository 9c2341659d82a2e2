"""device_map="auto": a model split over devices (here CPU and disk offload) computes what the plain model does."""

from __future__ import annotations

import logging

import pytest
import torch
from tiny_outputs import assert_same_outputs, tiny_inputs, tiny_outputs

from flamingo.model.cross_attention import plan_routing
from flamingo.model.dispatch import complete_device_map, dispatch, infer_device_map, move_to
from flamingo.model.tiny import build_tiny_flamingo
from flamingo.pipeline import FlamingoPipeline

pytest.importorskip("accelerate")
LAYERS = "lm.model.layers"


def _bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@pytest.fixture
def quiet_accelerate():
    """accelerate logs a warning per offloaded model and per absent GPU named in max_memory."""
    logger = logging.getLogger("accelerate")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # untied and tied output head
def test_offloaded_model_equals_the_plain_model(family, tmp_path, quiet_accelerate):
    plain = build_tiny_flamingo(family, gate_init=0.5, seed=0).eval()
    split = build_tiny_flamingo(family, gate_init=0.5, seed=0).eval()
    inputs = tiny_inputs(plain)
    want = tiny_outputs(plain, *inputs)
    budget = {"cpu": int(_bytes(split) * 0.7), "disk": 10**10}  # the CPU holds the first part only
    device_map = dispatch(split, "auto", max_memory=budget, offload_folder=tmp_path)
    on_disk = [k for k, v in device_map.items() if v == "disk"]
    assert any(k.startswith("cross_attn.") for k in on_disk) and any(k.startswith("lm.") for k in on_disk)
    assert device_map["vision"] == device_map["perceiver"] == "cpu"
    assert all(p.device.type == "meta" for p in split.cross_attn[on_disk[-1].split(".")[1]].parameters())
    got = tiny_outputs(split, *inputs)
    assert_same_outputs(got, want)


def test_a_given_device_map_is_completed_and_checked(tmp_path, quiet_accelerate):
    plain = build_tiny_flamingo(gate_init=0.5, seed=0).eval()
    split = build_tiny_flamingo(gate_init=0.5, seed=0).eval()
    given = {"lm.model.embed_tokens": "cpu", "lm.model.rotary_emb": "cpu", f"{LAYERS}.0": "cpu"}
    given |= {f"{LAYERS}.{i}": "disk" for i in (1, 2, 3)} | {"lm.model.norm": "disk", "lm.lm_head": "cpu"}
    full = complete_device_map(split, given)
    assert [full[f"cross_attn.{i}"] for i in range(4)] == ["cpu", "disk", "disk", "disk"]
    assert full["vision"] == full["perceiver"] == "cpu"
    with pytest.raises(ValueError, match="must live on the same device"):
        complete_device_map(split, {**given, "cross_attn.2": "cpu"})
    with pytest.raises(ValueError, match="not modules of this Flamingo"):
        complete_device_map(split, {**given, "lm.model.layer.9": "cpu"})
    with pytest.raises(ValueError, match="no device for"):
        complete_device_map(split, {k: v for k, v in given.items() if k != "lm.lm_head"})
    with pytest.raises(ValueError, match="offload_folder"):
        dispatch(split, given)
    inputs = tiny_inputs(plain)
    dispatch(split, given, offload_folder=tmp_path)
    got, want = tiny_outputs(split, *inputs), tiny_outputs(plain, *inputs)
    assert_same_outputs(got, want)


def test_auto_map_balances_layers_over_gpus_with_their_blocks(quiet_accelerate):
    """Planning only (no GPU needed): GPU ids in max_memory are accounted, not touched."""
    model = build_tiny_flamingo(gate_init=0.5, seed=0, layers=6)
    total = _bytes(model)
    device_map = infer_device_map(model, {0: total, 1: total, "cpu": 10**10})
    layer_devices = [device_map[f"{LAYERS}.{i}"] for i in range(6)]
    assert layer_devices == sorted(layer_devices) and set(layer_devices) == {0, 1}  # contiguous, both used
    assert abs(layer_devices.count(0) - layer_devices.count(1)) <= 2  # balanced, vision on 0 counted
    assert all(device_map[f"cross_attn.{i}"] == layer_devices[i] for i in range(6))
    assert device_map["vision"] == device_map["perceiver"] == device_map["lm.model.embed_tokens"] == 0
    assert infer_device_map(model, {0: total, 1: total}, "sequential") == {"": 0}
    with pytest.raises(ValueError, match="use one of auto"):
        infer_device_map(model, None, "everywhere")


def test_move_to_reaches_tensors_inside_the_routing_plan():
    positions = torch.tensor([[0, 1, 1, 2, 2, 2]])
    routing = plan_routing(positions, num_slots=2, num_latents=3, policy="previous", segmented=True)
    moved = move_to(((routing, [positions]), {"kv": (positions, positions)}), torch.device("meta"))
    (plan, [pos]), kv = moved
    assert plan.segments is not None and plan.segments.index.device.type == "meta"
    assert plan.positions.device.type == pos.device.type == kv["kv"][1].device.type == "meta"
    assert plan.segments.latents == 3


def test_pipeline_device_map_auto_matches_the_plain_pipeline(
    model_dir, pipe, images, tmp_path, quiet_accelerate
):
    budget = {"cpu": int(_bytes(pipe.model) * 0.7), "disk": 10**10}
    split = FlamingoPipeline.from_pretrained(
        model_dir, device_map="auto", max_memory=budget, offload_folder=tmp_path
    )
    assert split.device_map["vision"] == "cpu" and "disk" in split.device_map.values()
    row = [images[0], "Output:a red circle<|endofchunk|>\n", images[1], "Output:"]
    assert split(row, max_new_tokens=10) == pipe(row, max_new_tokens=10)
    assert split(row, max_new_tokens=6, num_beams=3) == pipe(row, max_new_tokens=6, num_beams=3)
    names = ["a red circle", "a blue square"]
    assert split.class_scores(images[1], names) == pytest.approx(
        pipe.class_scores(images[1], names), abs=1e-5
    )
    single = FlamingoPipeline.from_pretrained(model_dir, device_map="cpu")
    assert single.device_map is None and single.device == torch.device("cpu")
    assert single(row, max_new_tokens=4) == pipe(row, max_new_tokens=4)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_give_what_one_gives(quiet_accelerate):
    plain = build_tiny_flamingo(gate_init=0.5, seed=0, layers=6).eval().to("cuda:0")
    split = build_tiny_flamingo(gate_init=0.5, seed=0, layers=6).eval()
    total = _bytes(split)
    device_map = dispatch(split, "auto", max_memory={0: total, 1: total})
    assert {device_map[f"{LAYERS}.{i}"] for i in range(6)} == {0, 1}
    assert all(p.device == torch.device("cuda", 1) for p in split.cross_attn["5"].parameters())
    inputs = [t.to("cuda:0") for t in tiny_inputs(plain)]
    got, want = tiny_outputs(split, *inputs), tiny_outputs(plain, *inputs)
    assert_same_outputs(got, want)
