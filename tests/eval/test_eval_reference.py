"""Our fast scoring against the reference package's evaluation code path, on the same weights."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

pytest.importorskip("open_flamingo")

from transformers import AutoModelForCausalLM

from flamingo.eval.models import FlamingoEvalModel, GenerateRequest, RankRequest
from flamingo.eval.reference import OpenFlamingoEvalModel
from flamingo.model.config import CrossAttnConfig, FlamingoConfig, LMConfig, PerceiverConfig, VisionConfig
from flamingo.model.convert import import_openflamingo_state
from flamingo.model.flamingo import Flamingo
from flamingo.model.tiny import TINY_OPEN_CLIP, tiny_lm_config, train_tiny_tokenizer
from flamingo.model.vision import _register_open_clip_config
from flamingo.processing import FlamingoProcessor

VISION = "flamingo-tiny-vit"
PROMPT = "<image>Output: a red circle.<|endofchunk|><image>Output:"
NAMES = ["red", "a blue square", "two green triangles", "cat", "the dog slept"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The reference wrapper and ours over identical weights and identical image preprocessing."""
    from open_flamingo import create_model_and_transforms

    lm_dir = str(tmp_path_factory.mktemp("lm"))
    tokenizer = train_tiny_tokenizer()
    AutoModelForCausalLM.from_config(tiny_lm_config("llama", len(tokenizer))).save_pretrained(lm_dir)
    tokenizer.save_pretrained(lm_dir)
    _register_open_clip_config(VISION, TINY_OPEN_CLIP)
    torch.manual_seed(0)
    ref, transform, ref_tok = create_model_and_transforms(VISION, None, lm_dir, lm_dir, 1, True)
    with torch.no_grad():  # open the gates so that images matter
        for layer in ref.lang_encoder.gated_cross_attn_layers:
            layer.attn_gate.fill_(0.5)
            layer.ff_gate.fill_(0.5)
    config = FlamingoConfig(
        lm=LMConfig(name_or_path=lm_dir),
        vision=VisionConfig(
            kind="open_clip", name=VISION, pretrained=None, model_cfg=TINY_OPEN_CLIP, legacy_tokens=False
        ),
        perceiver=PerceiverConfig(),
        cross_attn=CrossAttnConfig(every_n=1),
    )
    ours = Flamingo.from_config(config)
    import_openflamingo_state(ours, ref.state_dict(), include_backbones=True)
    processor = FlamingoProcessor(ours.tokenizer, lambda ims: torch.stack([transform(im) for im in ims]))
    return OpenFlamingoEvalModel(ref, transform, ref_tok), FlamingoEvalModel(ours.eval(), processor)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ref_images")
    paths = []
    for i, colour in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
        Image.new("RGB", (8, 8), colour).save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    return paths


def test_rank_classification_matches_the_reference_loop(pair, images):
    reference, ours = pair
    requests = [RankRequest(PROMPT, images[:2], NAMES), RankRequest(PROMPT, images[1:], NAMES)]
    # The reference's cached class-name pass ignores left padding, so score its prompts one at a time.
    expected = torch.cat([reference.rank_classification([r]) for r in requests])
    got = ours.rank_classification(requests)
    assert (expected - got).abs().max().item() < 1e-4


def test_greedy_generation_matches_the_reference(pair, images):
    reference, ours = pair
    requests = [
        GenerateRequest(PROMPT, images[:2], num_beams=1, max_new_tokens=6),
        GenerateRequest("<image>Output:", images[2:], num_beams=1, max_new_tokens=6),
    ]
    assert [t.strip() for t in reference.generate(requests)] == ours.generate(requests)
