"""Inputs for a tiny Flamingo and what it answers to them: the fixed probe that tests of loading and of device
placement compare between two copies of one model (importable from every test folder: ``tests/`` is on the
path through its conftest)."""

from __future__ import annotations

import torch


def tiny_inputs(model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (2, 2, 1, 3, 32, 32), ids (2, 12) with ``<image>`` at positions 0 and 6, and an all-ones mask."""
    torch.manual_seed(1)
    images = torch.randn(2, 2, 1, 3, 32, 32)
    ids = torch.randint(3, 200, (2, 12))
    ids[:, 0] = ids[:, 6] = model.config.tokens.image_id
    return images, ids, torch.ones_like(ids)


def tiny_outputs(model, images, ids, mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits, a greedy continuation and a 3-beam continuation (6 new tokens each)."""
    with torch.no_grad():
        return (
            model(images, ids, mask).logits,
            model.generate(images, ids, mask, max_new_tokens=6, do_sample=False),
            model.generate(images, ids, mask, max_new_tokens=6, num_beams=3, do_sample=False),
        )


def assert_same_outputs(got: tuple, want: tuple, exact: bool = False) -> None:
    """Equal continuations; logits equal (``exact``) or within 1e-5 (a split model sums in another order)."""
    if exact:
        assert torch.equal(got[0], want[0])
    else:
        torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=0)
    assert all(torch.equal(g, w) for g, w in zip(got[1:], want[1:], strict=True))
