"""The frozen vision encoder's feature cache: same features as the encoder, each image encoded once."""

import pytest
import torch
from model_support import make_images

from flamingo.model.feature_cache import VisionFeatureCache
from flamingo.model.tiny import build_tiny_flamingo


class CountingEncoder:
    def __init__(self, encoder):
        self.encoder, self.rows = encoder, []

    def __call__(self, pixels):
        self.rows.append(pixels.shape[0])
        return self.encoder(pixels)


def test_cached_features_equal_the_encoder_and_each_image_is_encoded_once():
    model = build_tiny_flamingo("llama").eval()
    pixels = make_images(1, 6)[0, :, 0]  # (6, c, h, w)
    batch = torch.cat([pixels[:4], pixels[1:2]])  # the fifth image repeats the second
    cache, encoder = VisionFeatureCache(2**20), CountingEncoder(model.vision)
    with torch.no_grad():
        expected = model.vision(batch)
        first = cache(encoder, batch)
        second = cache(encoder, pixels)  # four known images, two new
    assert encoder.rows == [4, 2]
    torch.testing.assert_close(first, expected, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(second, model.vision(pixels), rtol=1e-6, atol=1e-6)
    assert cache.stats()["hits"] == 1 + 4 and cache.stats()["misses"] == 4 + 2 and len(cache) == 6
    # Entries own their storage: a view of the encoder's batch output would keep the whole batch alive.
    assert all(v.untyped_storage().nbytes() == v.numel() * v.element_size() for v in cache._items.values())


def test_keys_tell_apart_pixels_dtypes_and_shapes():
    x = torch.zeros(2, 3, 4, 4)
    y = x.clone()
    y[1, 2, 3, 3] = 1e-7
    keys = VisionFeatureCache.keys(torch.cat([x, y]))
    assert keys[0] == keys[1] == keys[2] and keys[3] != keys[0]
    assert VisionFeatureCache.keys(x.double())[0] != keys[0]
    assert VisionFeatureCache.keys(torch.zeros(1, 3, 8, 2))[0] != keys[0]
    assert VisionFeatureCache.keys(x.bfloat16())[0] != keys[0]


def test_the_cache_stops_adding_when_full_and_still_returns_features():
    encoder = CountingEncoder(lambda p: p.flatten(1)[:, :8].unsqueeze(1).repeat(1, 2, 1))  # (N, 2, 8) floats
    cache = VisionFeatureCache(3 * 2 * 8 * 4)  # room for three images
    pixels = torch.randn(5, 3, 4, 4)
    out = cache(encoder, pixels)
    assert len(cache) == 3 and cache.bytes == cache.max_bytes
    assert torch.equal(out, encoder.encoder(pixels))
    assert torch.equal(cache(encoder, pixels), out) and encoder.rows == [5, 2]
    with pytest.raises(ValueError, match="positive size"):
        VisionFeatureCache(0)


def test_the_model_uses_its_cache_for_a_frozen_encoder_in_eval_mode():
    model = build_tiny_flamingo("llama", gate_init=0.7)
    images = make_images(2, 3)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    with torch.no_grad():
        plain = model.encode_media(images, mask)
    model.vision_cache = VisionFeatureCache(2**20)
    model.vision.eval()
    for p in model.vision.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_media(images, mask), plain, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(model.encode_media(images, mask), plain, rtol=1e-6, atol=1e-6)
    assert model.vision_cache.stats()["misses"] == 5 and model.vision_cache.stats()["hits"] == 5
    model.vision.train()  # in train mode (dropout) the encoder runs
    with torch.no_grad():
        model.encode_media(images, mask)
    assert model.vision_cache.stats()["hits"] == 5
    model.vision.eval()
    model.vision.visual.conv1.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="trainable parameters"):
        model.encode_media(images, mask)
