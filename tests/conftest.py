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
