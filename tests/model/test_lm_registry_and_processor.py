"""Finding decoder layers in any LM, and the processor's batching rules."""

import pytest
import torch
from PIL import Image
from torch import nn
from transformers import AutoModelForCausalLM

from flamingo.model.lm import DECODER_LAYERS, LayerLookupError, cross_attn_layer_indices, decoder_layers_path
from flamingo.model.tiny import LM_FAMILIES, build_tiny_flamingo, tiny_lm_config
from flamingo.processing import FlamingoProcessor


@pytest.mark.parametrize("family", LM_FAMILIES)
def test_registry_covers_the_required_families(family):
    lm = AutoModelForCausalLM.from_config(tiny_lm_config(family, 100))
    assert lm.config.model_type in DECODER_LAYERS
    path = decoder_layers_path(lm)
    assert path == DECODER_LAYERS[lm.config.model_type]


class _CustomLM(nn.Module):
    """An LM of an unknown type whose layer list sits somewhere unusual."""

    def __init__(self, layers: int = 3):
        super().__init__()
        self.config = type("Cfg", (), {"model_type": "mystery", "num_hidden_layers": layers})()
        self.backbone = nn.Module()
        self.backbone.stack = nn.ModuleList(nn.Linear(4, 4) for _ in range(layers))
        self.heads = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))


def test_fallback_finds_the_unique_layer_list():
    assert decoder_layers_path(_CustomLM()) == "backbone.stack"


def test_ambiguous_model_gets_an_error_naming_the_fix():
    lm = _CustomLM(layers=2)  # now two ModuleLists of length 2: ambiguous
    with pytest.raises(LayerLookupError, match=r"Set lm.decoder_layers_attr .* 'model.layers'"):
        decoder_layers_path(lm)
    assert decoder_layers_path(lm, override="heads") == "heads"
    with pytest.raises(LayerLookupError, match="does not exist"):
        decoder_layers_path(lm, override="model.layers")


def test_cross_attention_placement_rule():
    assert cross_attn_layer_indices(8, 1) == list(range(8))
    assert cross_attn_layer_indices(8, 4) == [3, 7]
    model = build_tiny_flamingo("gpt2", every_n=2, layers=4)
    assert model.xattn_indices == [1, 3] and sorted(model.cross_attn.keys()) == ["1", "3"]


def _image(color):
    return Image.new("RGB", (40, 30), color)


@pytest.mark.parametrize("side", ["left", "right"])
def test_processor_pads_rows_with_different_image_counts(side):
    model = build_tiny_flamingo("llama")
    processor = FlamingoProcessor.from_model(model, padding_side=side)
    rows = [
        [_image("red"), "Output: a red box.", "<|endofchunk|>", _image("blue"), "Output:"],
        ("<image>Output:", [_image("green")]),
    ]
    batch = processor(rows)
    assert batch["images"].shape == (2, 2, 1, 3, 32, 32)
    assert batch["image_mask"].tolist() == [[True, True], [True, False]]
    assert batch["images"][1, 1].abs().max() == 0
    mask = batch["attention_mask"]
    pad_column = 0 if side == "left" else -1
    assert mask[1, pad_column] == 0 and mask[0].all()
    image_id = model.config.tokens.image_id
    assert (batch["input_ids"] == image_id).sum(1).tolist() == [2, 1]
    single = processor([rows[1]])
    real = batch["input_ids"][1][mask[1].bool()]
    assert torch.equal(real, single["input_ids"][0])


def test_processor_rejects_marker_image_mismatch_and_bad_items():
    model = build_tiny_flamingo("llama")
    processor = FlamingoProcessor.from_model(model)
    with pytest.raises(ValueError, match="row 0 has 2 <image> markers but 1 images"):
        processor([("<image>a<image>b", [_image("red")])])
    with pytest.raises(TypeError, match=r"row 0: items must be str or PIL\.Image"):
        processor([["text", 3]])
    with pytest.raises(ValueError, match="exceeds max_length=4"):
        processor([("<image>Output: a long caption here", [_image("red")])], max_length=4)


def test_processor_decode_cuts_at_end_of_chunk():
    model = build_tiny_flamingo("llama")
    processor = FlamingoProcessor.from_model(model)
    tok = model.tokenizer
    ids = tok(["<image>Output: a cat<|endofchunk|> the dog"], return_tensors="pt").input_ids
    prompt_len = len(tok("<image>Output:").input_ids)
    assert processor.decode(ids, prompt_len) == ["a cat"]
