"""FSDP2 details on one in-process gloo rank: frozen weights stored in the compute dtype, compiled layers."""

import copy
import os

import pytest
import torch
import torch._dynamo
import torch.distributed as dist

import flamingo.train.parallel as parallel
from flamingo.model.tiny import build_tiny_flamingo
from flamingo.train.freeze import freeze_backbones
from flamingo.train.parallel import DistInfo, apply_compile, apply_fsdp, decoder_layers

CPU = DistInfo(0, 1, 0, torch.device("cpu"))


@pytest.fixture(scope="module", autouse=True)
def one_rank():
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29571")
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_tiny_flamingo("llama", gate_init=0.5)
    freeze_backbones(model)
    return model


def _batch(model):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 90, (2, 12), generator=g)
    ids[:, 0] = model.config.tokens.image_id
    ids[1, 6] = model.config.tokens.image_id
    return torch.randn(2, 2, 1, 3, 32, 32, generator=g), ids


def _loss_and_grads(model, images, ids):
    loss = model(images, ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_frozen_weights_are_stored_in_the_compute_dtype_with_the_same_results(monkeypatch):
    base = _model()
    images, ids = _batch(base)
    stored = apply_fsdp(copy.deepcopy(base), CPU, torch.bfloat16, reshard=False)
    for name, param in stored.named_parameters():
        expected = torch.float32 if param.requires_grad else torch.bfloat16
        assert param.to_local().dtype == expected, name
    with monkeypatch.context() as patch:  # FSDP2 casting fp32 frozen weights on every all-gather instead
        patch.setattr(parallel, "store_frozen_in", lambda model, dtype: None)
        cast = apply_fsdp(copy.deepcopy(base), CPU, torch.bfloat16, reshard=False)
    assert any(not p.requires_grad and p.to_local().dtype == torch.float32 for p in cast.parameters())
    loss_a, grads_a = _loss_and_grads(stored, images, ids)
    loss_b, grads_b = _loss_and_grads(cast, images, ids)
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name


def test_compiled_layers_are_traced_under_fsdp2_and_match_eager():
    base = _model()
    images, ids = _batch(base)
    eager = apply_fsdp(copy.deepcopy(base), CPU, None, reshard=False)
    compiled_model = copy.deepcopy(base)
    apply_compile(compiled_model, backend="aot_eager")
    compiled = apply_fsdp(compiled_model, CPU, None, reshard=False)
    assert all(
        isinstance(layer, torch._dynamo.eval_frame.OptimizedModule) for layer in decoder_layers(compiled)
    )
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    loss_c, grads_c = _loss_and_grads(compiled, images, ids)
    frames = torch._dynamo.utils.counters["frames"]
    assert frames["ok"] >= 2 and frames["ok"] == frames["total"]  # decoder layers and blocks really compiled
    loss_e, grads_e = _loss_and_grads(eager, images, ids)
    assert torch.allclose(loss_c, loss_e, atol=1e-6)
    for name in grads_e:
        assert torch.allclose(grads_c[name], grads_e[name], atol=1e-6), name
