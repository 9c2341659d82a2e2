"""Parity with files the reference wrote under transformers 4.x (tests/fixtures/openflamingo/).

scripts/make_openflamingo_fixtures.py made them with open-flamingo==2.0.1, transformers 4.57 and open_clip 2.20:
tiny base LMs saved by 4.x, OpenFlamingo checkpoint files with 4.x key names (GPT-NeoX's untied head is
``lang_encoder.embed_out.weight``), and the reference's logits and greedy tokens on fixed inputs. These tests
need neither the reference nor transformers 4.x.
"""

import json
from pathlib import Path

import pytest
import torch

from flamingo.model.checkpoint import CheckpointError
from flamingo.model.config import CrossAttnConfig, FlamingoConfig, LMConfig, PerceiverConfig, VisionConfig
from flamingo.model.convert import (
    export_openflamingo_state,
    import_openflamingo_state,
    read_openflamingo_checkpoint,
)
from flamingo.model.flamingo import Flamingo

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "openflamingo"
META = json.loads((FIXTURES / "meta.json").read_text())
FAMILIES = sorted(META["families"])


def build_ours(family: str) -> Flamingo:
    spec = META["families"][family]
    vision = META["vision"]
    config = FlamingoConfig(
        lm=LMConfig(name_or_path=str(FIXTURES / family / "lm")),
        vision=VisionConfig(
            kind="open_clip",
            name=vision["name"],
            model_cfg=vision["model_cfg"],
            pretrained=str(FIXTURES / "vision.pt"),
            legacy_tokens=vision["legacy_tokens"],
        ),
        perceiver=PerceiverConfig(**META["perceiver"]),
        cross_attn=CrossAttnConfig(every_n=spec["every_n"], **META["cross_attn"]),
    )
    return Flamingo.from_config(config).eval()


def load_fixture(family: str) -> tuple[Flamingo, dict]:
    model = build_ours(family)
    superset = META["families"][family]["checkpoint"] == "superset"
    path = FIXTURES / family / "checkpoint.pt"
    import_openflamingo_state(
        model, read_openflamingo_checkpoint(path), str(path), include_backbones=superset
    )
    return model, read_openflamingo_checkpoint(path)


@pytest.fixture(scope="module")
def inputs():
    return torch.load(FIXTURES / "inputs.pt", weights_only=True)


def test_fixtures_hold_transformers_4_names():
    neox = read_openflamingo_checkpoint(FIXTURES / "gpt_neox" / "checkpoint.pt")
    assert "lang_encoder.embed_out.weight" in neox and "lang_encoder.lm_head.weight" not in neox
    assert META["made_with"]["transformers"].startswith("4.")


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_logits_on_every_column_and_greedy_tokens(family, inputs):
    model, _ = load_fixture(family)
    expected = torch.load(FIXTURES / family / "expected.pt", weights_only=True)
    ids, mask, images = inputs["input_ids"], inputs["attention_mask"], inputs["images"]
    with torch.no_grad():
        logits = model(images, ids, mask).logits
    valid = mask.bool()
    assert logits.shape == expected["logits"].shape  # every column, the added tokens' included
    assert (logits[valid] - expected["logits"][valid]).abs().max().item() < 1e-4
    image_id = model.tokenizer.convert_tokens_to_ids("<image>")
    greedy = model.generate(
        images, ids, mask, max_new_tokens=6, num_beams=1, do_sample=False, suppress_tokens=[image_id]
    )
    assert torch.equal(greedy, expected["greedy"])


@pytest.mark.parametrize("family", FAMILIES)
def test_export_gives_back_the_file_with_transformers_4_names(family):
    model, original = load_fixture(family)
    exported = export_openflamingo_state(model)
    if META["families"][family]["checkpoint"] == "release":  # the exported file is the release file again
        assert set(exported) == set(original)
    else:  # from a superset: the adapters, the embedding and the untied head, under their 4.x names
        adapters = {k for k in original if k.startswith("perceiver.") or ".gated_cross_attn_layer." in k}
        heads = {"lang_encoder.model.embed_tokens.weight", "lang_encoder.lm_head.weight"}
        assert set(exported) == adapters | heads
    for key in exported:
        assert torch.equal(exported[key], original[key]), key


def test_export_in_transformers_5_names_renames_only_the_gpt_neox_head():
    model, original = load_fixture("gpt_neox")
    exported = export_openflamingo_state(model, key_names="5.x")
    assert torch.equal(exported["lang_encoder.lm_head.weight"], original["lang_encoder.embed_out.weight"])
    assert "lang_encoder.embed_out.weight" not in exported
    with pytest.raises(ValueError, match=r"key_names='6\.x'"):
        export_openflamingo_state(model, key_names="6.x")


def test_a_head_under_an_unknown_name_is_refused_with_its_key(tmp_path):
    state = read_openflamingo_checkpoint(FIXTURES / "gpt_neox" / "checkpoint.pt")
    state["lang_encoder.output_embed.weight"] = state.pop("lang_encoder.embed_out.weight")
    model = build_ours("gpt_neox")
    with pytest.raises(
        CheckpointError, match=r"no place in this model: \['lang_encoder\.output_embed\.weight'\]"
    ):
        import_openflamingo_state(model, state, "renamed.pt")


def test_both_generations_names_at_once_is_an_error():
    state = read_openflamingo_checkpoint(FIXTURES / "gpt_neox" / "checkpoint.pt")
    state["lang_encoder.lm_head.weight"] = state["lang_encoder.embed_out.weight"].clone()
    with pytest.raises(CheckpointError, match="both transformers generations"):
        import_openflamingo_state(build_ours("gpt_neox"), state, "both.pt")
