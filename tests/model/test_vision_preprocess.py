"""Batched image preprocessing gives exactly the pixels of the per-picture transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from flamingo.model.vision import OPENAI_MEAN, OPENAI_STD, _batched_plan, _clip_transform, apply_transform


def _pictures(sizes: list[tuple[int, int]], modes: list[str], seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for (w, h), mode in zip(sizes, modes):
        rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        out.append(rgb.convert(mode))
    return out


def _open_clip_transform(size: int) -> object:
    open_clip = pytest.importorskip("open_clip")
    return open_clip.image_transform(size, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD)


@pytest.mark.parametrize(
    ("sizes", "modes"),
    [
        ([(32, 32)] * 5, ["RGB"] * 5),  # one size, RGB: the batched path
        ([(40, 32), (32, 57), (100, 90), (31, 31)], ["RGB"] * 4),  # resized and cropped first, then batched
        ([(32, 32)] * 4, ["RGB", "L", "RGBA", "P"]),  # converted to RGB by the transform, then batched
        ([(32, 32)], ["RGB"]),
    ],
)
def test_batched_open_clip_preprocessing_is_bit_identical(
    sizes: list, modes: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.transforms.functional as TF

    transform = _open_clip_transform(32)
    assert _batched_plan(transform) is not None  # open_clip's pipeline takes the batched path
    pictures = _pictures(sizes, modes)
    expected = torch.stack([transform(p) for p in pictures])
    calls = []
    to_tensor = TF.to_tensor
    monkeypatch.setattr(TF, "to_tensor", lambda pic: calls.append(pic) or to_tensor(pic))
    got = apply_transform(transform, pictures)
    assert calls == []  # converted as one batch, not picture by picture
    assert got.shape == expected.shape == (len(pictures), 3, 32, 32)
    assert got.dtype == expected.dtype and torch.equal(got, expected)


def test_pictures_of_different_sizes_after_the_picture_steps_fall_back_per_picture() -> None:
    from torchvision import transforms as T

    transform = T.Compose([T.ToTensor(), T.Normalize(OPENAI_MEAN, OPENAI_STD)])  # no resize: sizes stay apart
    pictures = _pictures([(8, 8), (8, 8)], ["RGB", "RGB"]) + _pictures([(9, 8)], ["RGB"])
    with pytest.raises(RuntimeError):  # what stacking the per-picture outputs does too
        apply_transform(transform, pictures)
    same = pictures[:2]
    assert torch.equal(apply_transform(transform, same), torch.stack([transform(p) for p in same]))


def test_other_transforms_run_per_picture() -> None:
    from torchvision import transforms as T

    class Scaled(T.ToTensor):  # a subclass of ToTensor may do anything: not batched
        def __call__(self, pic: Image.Image) -> torch.Tensor:
            return super().__call__(pic) * 2

    assert _batched_plan(T.Compose([Scaled(), T.Normalize(OPENAI_MEAN, OPENAI_STD)])) is None
    transform = _clip_transform(16, OPENAI_MEAN, OPENAI_STD)  # torchvision v2: not batched
    assert _batched_plan(transform) is None
    pictures = _pictures([(20, 16), (16, 16)], ["RGB", "L"])
    assert torch.equal(apply_transform(transform, pictures), torch.stack([transform(p) for p in pictures]))
