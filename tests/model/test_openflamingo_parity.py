"""Parity with the reference package open-flamingo==2.0.1 through the real checkpoint converters.

The reference runs in this environment's open_clip (>= 2.23), whose tokens pass through ``ln_post``; our
adapter is therefore built with ``legacy_tokens=False`` here. The legacy path is tested on its own below.
"""

import pytest
import torch
from model_support import make_images

pytest.importorskip("open_flamingo")

from transformers import AutoModelForCausalLM

from flamingo.model.config import CrossAttnConfig, FlamingoConfig, LMConfig, PerceiverConfig, VisionConfig
from flamingo.model.convert import (
    export_openflamingo_state,
    import_openflamingo_state,
    read_openflamingo_checkpoint,
)
from flamingo.model.flamingo import Flamingo
from flamingo.model.tiny import TINY_OPEN_CLIP, tiny_lm_config, train_tiny_tokenizer
from flamingo.model.vision import _register_open_clip_config

VISION = "flamingo-tiny-vit"
PROMPT = "<image>Output: a red circle.<|endofchunk|><image>Output: two blue<|endofchunk|><image>Output:"


def save_tiny_lm(directory, family):
    tokenizer = train_tiny_tokenizer()
    lm = AutoModelForCausalLM.from_config(tiny_lm_config(family, len(tokenizer)))
    lm.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def build_reference(lm_dir, every_n, seed=0):
    from open_flamingo import create_model_and_transforms

    _register_open_clip_config(VISION, TINY_OPEN_CLIP)
    torch.manual_seed(seed)
    ref, _, tokenizer = create_model_and_transforms(
        VISION, None, lm_dir, lm_dir, cross_attn_every_n_layers=every_n, use_local_files=True
    )
    with torch.no_grad():  # open gates so that the cross-attention path matters
        for layer in ref.lang_encoder.gated_cross_attn_layers:
            if layer is not None:
                layer.attn_gate.uniform_(0.3, 0.9)
                layer.ff_gate.uniform_(0.3, 0.9)
    return ref.eval(), tokenizer


def build_ours(lm_dir, every_n):
    config = FlamingoConfig(
        lm=LMConfig(name_or_path=lm_dir),
        vision=VisionConfig(
            kind="open_clip", name=VISION, pretrained=None, model_cfg=TINY_OPEN_CLIP, legacy_tokens=False
        ),
        perceiver=PerceiverConfig(),  # OpenFlamingo's: 6 layers, 64 latents, 8 heads of 64
        cross_attn=CrossAttnConfig(every_n=every_n),
    )
    return Flamingo.from_config(config).eval()


def inputs(tokenizer, batch=2):
    enc = tokenizer(
        [PROMPT, "a<image>" + PROMPT][:batch], return_tensors="pt", padding=True, padding_side="left"
    )
    counts = (enc.input_ids == tokenizer.convert_tokens_to_ids("<image>")).sum(1)
    images = make_images(batch, int(counts.max()), seed=3)
    return images, enc.input_ids, enc.attention_mask


@pytest.mark.parametrize(
    ("family", "every_n"), [("llama", 1), ("llama", 2), ("mpt", 1), ("mpt", 2), ("gpt_neox", 2)]
)
def test_import_reference_checkpoint_gives_same_logits_and_generations(tmp_path, family, every_n):
    lm_dir = save_tiny_lm(tmp_path / "lm", family)
    ref, ref_tok = build_reference(lm_dir, every_n)
    torch.save(ref.state_dict(), tmp_path / "checkpoint.pt")  # a superset file, as FSDP runs write
    ours = build_ours(lm_dir, every_n)
    import_openflamingo_state(
        ours, read_openflamingo_checkpoint(tmp_path / "checkpoint.pt"), include_backbones=True
    )
    images, ids, mask = inputs(ref_tok)
    with torch.no_grad():
        expected = ref(images, ids, attention_mask=mask).logits
        got = ours(images, ids, mask).logits
    valid = mask.bool()
    assert (expected[valid] - got[valid]).abs().max().item() < 1e-4
    image_id = ref_tok.convert_tokens_to_ids("<image>")
    kwargs = {"max_new_tokens": 8, "num_beams": 1, "suppress_tokens": [image_id]}
    ref_out = ref.generate(images, ids, attention_mask=mask, **kwargs)
    our_out = ours.generate(images, ids, mask, **kwargs)
    assert torch.equal(ref_out, our_out)


@pytest.mark.parametrize(("family", "every_n"), [("llama", 2), ("mpt", 1), ("gpt_neox", 2)])
def test_export_loads_into_the_reference_with_same_result(tmp_path, family, every_n):
    lm_dir = save_tiny_lm(tmp_path / "lm", family)
    source, tokenizer = build_reference(lm_dir, every_n, seed=1)
    ours = build_ours(lm_dir, every_n)
    import_openflamingo_state(ours, source.state_dict(), include_backbones=True)
    with torch.no_grad():
        for _, p in ours.adapter_parameters():
            p.add_(0.02 * torch.randn_like(p))  # weights the reference has never seen
    # The reference runs under this environment's transformers 5 here: its GPT-NeoX head is lm_head.
    torch.save(export_openflamingo_state(ours, key_names="5.x"), tmp_path / "exported.pt")
    target, _ = build_reference(lm_dir, every_n, seed=2)
    target.vision_encoder.load_state_dict(source.vision_encoder.state_dict())
    result = target.load_state_dict(torch.load(tmp_path / "exported.pt", weights_only=True), strict=False)
    assert not result.unexpected_keys
    images, ids, mask = inputs(tokenizer)
    with torch.no_grad():
        expected = ours(images, ids, mask).logits
        got = target.eval()(images, ids, attention_mask=mask).logits
    assert (expected[mask.bool()] - got[mask.bool()]).abs().max().item() < 1e-4


def test_released_file_variants_all_import_identically(tmp_path):
    """Bare trained tensors with DDP/FSDP/compile wrapper segments, a model_state_dict wrapper, v1 duplicates."""
    lm_dir = save_tiny_lm(tmp_path / "lm", "mpt")
    ref, tokenizer = build_reference(lm_dir, 1)
    trained = {k: v for k, v in ref.named_parameters() if v.requires_grad}
    variants = {
        "bare": trained,
        "ddp": {f"module.{k}": v for k, v in trained.items()},
        "fsdp": {
            k.replace("lang_encoder.", "lang_encoder._fsdp_wrapped_module._checkpoint_wrapped_module."): v
            for k, v in trained.items()
        },
        "wrapped": {
            "model_state_dict": {f"_orig_mod.{k}": v for k, v in trained.items()},
            "epoch": torch.tensor(3),
        },
    }
    duplicates = {
        k.replace("transformer.blocks.", "gated_cross_attn_layers.").replace(
            ".gated_cross_attn_layer.", "."
        ): v
        for k, v in trained.items()
        if "gated_cross_attn_layer." in k
    }
    variants["v1"] = {**trained, **duplicates}
    variants["duplicates_only"] = {
        **{k: v for k, v in trained.items() if "gated_cross_attn_layer." not in k},
        **duplicates,
    }
    results = []
    images, ids, mask = inputs(tokenizer)
    for name, state in variants.items():
        path = tmp_path / f"{name}.pt"
        torch.save(state, path)
        ours = build_ours(lm_dir, 1)
        ours.vision.visual.load_state_dict(ref.vision_encoder.state_dict())
        import_openflamingo_state(ours, read_openflamingo_checkpoint(path), str(path))
        with torch.no_grad():
            results.append(ours(images, ids, mask).logits)
    with torch.no_grad():
        expected = ref(images, ids, attention_mask=mask).logits
    for got in results:
        assert (got[mask.bool()] - expected[mask.bool()]).abs().max().item() < 1e-4


def test_wrong_base_lm_names_the_release_it_needs(tmp_path):
    from flamingo.model.checkpoint import CheckpointError

    lm_dir = save_tiny_lm(tmp_path / "lm", "llama")
    ref, _ = build_reference(lm_dir, 2)
    ours = build_ours(lm_dir, 1)
    with pytest.raises(CheckpointError, match=r"cross-attention before LM layers \[1, 3\] \(2 blocks\)"):
        import_openflamingo_state(ours, ref.state_dict(), "ckpt")


def test_legacy_tokens_are_last_block_patch_tokens_without_ln_post():
    from flamingo.model.tiny import tiny_vision

    config, adapter = tiny_vision("open_clip")
    assert config.legacy_tokens
    pixels = torch.randn(2, 3, 32, 32)
    visual = adapter.visual
    with torch.no_grad():
        x = visual.transformer(visual._embeds(pixels))
        manual = x[:, 1:]
        got = adapter(pixels)
        adapter.legacy_tokens = False
        modern = adapter(pixels)
    assert got.shape == (2, 16, 64)
    assert torch.allclose(got, manual, atol=1e-6)
    assert torch.allclose(modern, visual.ln_post(x)[:, 1:], atol=1e-6)
    assert not torch.allclose(got, modern, atol=1e-3)
