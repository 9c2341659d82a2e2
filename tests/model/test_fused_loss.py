"""The training loss from hidden states (no logits) equals the plain cross-entropy, value and gradients."""

import pytest
import torch
import torch.nn.functional as F
from model_support import make_images

import flamingo.model.loss as loss_module
from flamingo.model.loss import linear_cross_entropy
from flamingo.model.tiny import build_tiny_flamingo
from flamingo.processing import FlamingoProcessor

PROMPTS = [
    "<image>Output: a red circle.<|endofchunk|><image>Output: two",
    "the start<image>Question: what is it? Short answer: blue",
]
COUNTS = [2, 1]


def reference_loss(hidden, labels, weight, bias, rows, start, reduction):
    logits = hidden[:, :-1] @ weight.T
    logits = torch.cat(
        [logits[..., :start], hidden[:, :-1] @ rows.T, logits[..., start + rows.shape[0] :]], dim=-1
    )
    if bias is not None:
        logits = logits + bias
    return F.cross_entropy(
        logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction=reduction
    )


@pytest.fixture(params=["cpu-path", "sync-free-path"])
def loss_path(request, monkeypatch):
    """Both ways of taking the loss: the CPU's (-log p, exact fallback after a check) and the accelerators'
    (always the log-sum-exp, no value read back), the latter forced onto the CPU here."""
    if request.param == "sync-free-path":
        monkeypatch.setattr(loss_module, "SYNC_FREE_DEVICES", ("cpu",))
    return request.param


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matches_cross_entropy_in_value_and_gradients(monkeypatch, loss_path, with_bias, reduction):
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 7 * 50)  # chunks of 7 positions: several chunks
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS_CUDA", 7 * 50)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 11, 16, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, requires_grad=True)
    bias = torch.randn(50, generator=g, requires_grad=True) if with_bias else None
    rows = torch.randn(3, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 50, (3, 11), generator=g)
    labels[0, :4] = -100
    labels[2, 6:] = -100
    params = [t for t in (hidden, weight, bias, rows) if t is not None]
    ours = linear_cross_entropy(hidden, labels, weight, bias, rows, 20, reduction)
    ours_grads = torch.autograd.grad(ours * 1.7, params)
    ref = reference_loss(hidden, labels, weight, bias, rows, 20, reduction)
    ref_grads = torch.autograd.grad(ref * 1.7, params)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(ours_grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_no_supervised_token_gives_zero_loss_and_zero_gradient():
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    weight = torch.randn(30, 8)
    labels = torch.full((2, 5), -100)
    loss = linear_cross_entropy(hidden, labels, weight)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(hidden.grad, torch.zeros_like(hidden))
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(hidden, labels, weight, reduction="none")


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "mpt", "gpt_neox", "qwen2"])
def test_flamingo_fused_loss_equals_loss_from_logits(family):
    model = build_tiny_flamingo(family, gate_init=0.7)
    assert model.fused_loss_supported()
    processor = FlamingoProcessor(model.tokenizer, lambda ims: torch.stack(ims), padding_side="right")
    pictures = [list(make_images(1, n, seed=i)[0, :, 0]) for i, n in enumerate(COUNTS)]
    batch = processor(list(zip(PROMPTS, pictures)))
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    labels[:, :3] = -100
    results = []
    for return_logits in (True, False):
        model.zero_grad(set_to_none=True)
        out = model(
            batch["images"], batch["input_ids"], batch["attention_mask"], labels,
            image_mask=batch["image_mask"], return_logits=return_logits, loss_reduction="sum",
        )  # fmt: skip
        assert (out.logits is None) == (not return_logits)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.loss.item(), grads))
    (plain, plain_grads), (fused, fused_grads) = results
    assert abs(plain - fused) <= 1e-5 * abs(plain)
    assert plain_grads.keys() == fused_grads.keys()
    assert any(name.startswith("new_token_") for name in fused_grads)
    for name, grad in plain_grads.items():
        assert torch.allclose(grad, fused_grads[name], atol=1e-5, rtol=1e-4), name


def test_forward_without_labels_still_returns_logits():
    model = build_tiny_flamingo("llama", gate_init=0.7)
    ids = model.tokenizer(PROMPTS[:1], return_tensors="pt").input_ids
    out = model(make_images(1, 2), ids)
    assert out.loss is None and out.logits.shape[:2] == ids.shape


def test_labels_give_the_loss_and_the_logits_unless_the_loss_alone_is_asked_for():
    """As in Hugging Face models, ``labels`` add the loss to the logits; ``return_logits=False`` (the trainer's
    call) gives the same loss without them."""
    model = build_tiny_flamingo("llama", gate_init=0.7)
    ids = model.tokenizer(PROMPTS[:1], return_tensors="pt").input_ids
    images = make_images(1, 2)
    with torch.no_grad():
        both = model(images, ids, labels=ids)
        alone = model(images, ids, labels=ids, return_logits=False)
        plain = model(images, ids).logits
    assert both.logits.shape[:2] == ids.shape and torch.equal(both.logits, plain)
    assert alone.logits is None and abs(both.loss.item() - alone.loss.item()) <= 1e-5 * both.loss.item()
    with pytest.raises(ValueError, match="give labels"):
        model(images, ids, return_logits=False)


def test_huge_losses_stay_exact_when_the_target_probability_underflows(loss_path):
    hidden = torch.zeros(1, 3, 4, requires_grad=True)
    weight = torch.zeros(10, 4)
    bias = torch.zeros(10)
    bias[0] = 200.0  # p(target != 0) = exp(-200): 0 in fp32
    labels = torch.tensor([[-100, 3, 0]])
    loss = linear_cross_entropy(hidden, labels, weight, bias, reduction="sum")
    expected = F.cross_entropy(bias.expand(2, -1), torch.tensor([3, 0]), reduction="sum")
    assert torch.isfinite(loss) and abs(loss.item() - expected.item()) < 1e-3


def test_no_gradient_work_under_no_grad():
    from torch.utils.flop_counter import FlopCounterMode

    hidden = torch.randn(2, 9, 16, requires_grad=True)
    weight = torch.randn(40, 16)
    labels = torch.randint(0, 40, (2, 9))

    def flops(grad: bool) -> int:
        with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(grad):
            linear_cross_entropy(hidden, labels, weight)
        return counter.get_total_flops()

    assert flops(False) * 2 == flops(True)  # the logits matmul only; with grad also the hidden-state gradient
