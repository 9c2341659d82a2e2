import logging
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
logging.getLogger("root").setLevel(
    logging.ERROR
)  # open_clip warns that tiny encoders have no pretrained weights


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def make_images(b: int, t: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Random normalised pixels (b, t, 1, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, 1, 3, size, size, generator=g)
