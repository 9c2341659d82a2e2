"""Helpers shared by the model tests."""

import torch


def make_images(b: int, t: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Random normalised pixels (b, t, 1, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, 1, 3, size, size, generator=g)
