"""Build the OpenFlamingo parity fixtures in tests/fixtures/openflamingo/ with the reference itself.

The fixtures are what a user of the OpenFlamingo releases holds: checkpoint files written by
``open-flamingo==2.0.1`` under transformers 4.x (key names of that generation, e.g. GPT-NeoX's untied head
``embed_out``), base LMs saved by transformers 4.x, and the reference's own logits and greedy tokens on fixed
inputs. The tests in tests/model/test_openflamingo_fixtures.py load them under the project's transformers and
compare.

One fixture per language-model family the six release presets use, at tiny widths:

- ``mpt``: ``MptForCausalLM`` as transformers ships it (tied head), cross-attention every layer (the 3B
  releases). The 3B releases' MPT-1B runs remote code (``mosaic_gpt``) that cannot be fetched offline; its key
  names for the embedding (``transformer.wte``) and decoder layers (``transformer.blocks``) are the same.
- ``gpt_neox``: untied head, cross-attention every 2 layers (the 4B RedPajama releases). The checkpoint holds
  ``lang_encoder.embed_out.weight`` with the added tokens' rows, as the releases do.
- ``llama``: untied head, cross-attention every 4 layers (the v1 9B release). Its head is named ``lm_head``,
  which OpenFlamingo's release filter drops, so this fixture's checkpoint is the whole state dict (a superset,
  as full-state FSDP runs write) and the added rows of the head come from the file.

Release-style files keep what OpenFlamingo's training script keeps: the trainable tensors and every parameter
whose name contains ``embed``, without the vision encoder and without the duplicate module lists.

The Perceiver and the cross-attention blocks are the reference's own classes, rebuilt with small widths (the
factory hard-codes 8 heads of 64 and 64 latents, which would make the files megabytes large).

Run it in a separate environment with the 2023 stack (it refuses transformers 5)::

    python3.11 -m venv /tmp/of4
    /tmp/of4/bin/pip install torch torchvision transformers==4.57.1 open_clip_torch==2.20.0 einops einops-exts
    /tmp/of4/bin/pip install --no-deps open-flamingo==2.0.1
    /tmp/of4/bin/python scripts/make_openflamingo_fixtures.py

open_clip 2.20 predates the change of 2.23 that passes the patch tokens through ``ln_post``, so the fixtures
hold the token semantics the releases were trained with (flamingo-vlm's ``legacy_tokens``).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

VISION_NAME = "of-fixture-vit"
VISION_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1},
}
PERCEIVER = {"depth": 2, "heads": 2, "dim_head": 8, "num_latents": 4}
CROSS_ATTN = {"heads": 2, "dim_head": 8}
WIDTH = 32
FAMILIES = {  # family -> (decoder layers, cross_attn_every_n, checkpoint kind)
    "mpt": (2, 1, "release"),
    "gpt_neox": (4, 2, "release"),
    "llama": (4, 4, "superset"),
}
PROMPTS = [
    "<image>Output: a red circle.<|endofchunk|><image>Output: two blue<|endofchunk|><image>Output:",
    "a<image>Output: the cat sat<|endofchunk|><image>Output:",
]
CORPUS = [
    "a photo of a red circle on a dark background.",
    "Output: two blue squares next to a green triangle.",
    "the cat sat on the mat while the dog slept in the sun.",
] * 4


def make_tokenizer(directory: Path):
    """A byte-level BPE with a few merges (eos ``<|endoftext|>``, no pad token), saved to ``directory``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=288,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.save_pretrained(directory)
    return fast


def lm_config(family: str, vocab: int, layers: int):
    import transformers as tf

    common = {"vocab_size": vocab, "bos_token_id": 0, "eos_token_id": 0}
    if family == "mpt":
        return tf.MptConfig(d_model=WIDTH, n_layers=layers, n_heads=2, max_seq_len=128, **common)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(
            hidden_size=WIDTH,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=2 * WIDTH,
            max_position_embeddings=128,
            tie_word_embeddings=False,
            **common,
        )
    return tf.LlamaConfig(
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        **common,
    )


def release_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What OpenFlamingo's training script saves: trainable tensors plus every ``embed`` parameter, without
    the vision encoder and without the duplicate lists ``old_decoder_blocks`` / ``gated_cross_attn_layers``."""
    state = model.state_dict()
    keep = {name for name, p in model.named_parameters() if p.requires_grad or "embed" in name}
    drop = ("lang_encoder.old_decoder_blocks", "lang_encoder.gated_cross_attn_layers", "vision_encoder")
    return {k: v for k, v in state.items() if k in keep and not any(d in k for d in drop)}


def build_reference(family: str, lm_dir: Path, every_n: int, vision_state: dict, seed: int):
    import open_clip
    from open_flamingo import create_model_and_transforms
    from open_flamingo.src.helpers import GatedCrossAttentionBlock, PerceiverResampler

    torch.manual_seed(seed)
    ref, _, tokenizer = create_model_and_transforms(
        VISION_NAME, None, str(lm_dir), str(lm_dir), cross_attn_every_n_layers=every_n, use_local_files=True
    )
    vis_dim = open_clip.get_model_config(VISION_NAME)["vision_cfg"]["width"]
    ref.perceiver = PerceiverResampler(dim=vis_dim, **PERCEIVER)
    lang = ref.lang_encoder
    lang.gated_cross_attn_layers = torch.nn.ModuleList(
        [
            GatedCrossAttentionBlock(dim=WIDTH, dim_visual=vis_dim, **CROSS_ATTN) if old is not None else None
            for old in lang.gated_cross_attn_layers
        ]
    )
    lang.init_flamingo_layers(False)
    ref.vision_encoder.load_state_dict(vision_state)
    ref.perceiver.requires_grad_(True)
    lang.gated_cross_attn_layers.requires_grad_(True)
    with torch.no_grad():  # trained-looking adapters: open gates, no LayerNorm left at ones and zeros
        for name, p in list(ref.perceiver.named_parameters()) + list(
            lang.gated_cross_attn_layers.named_parameters()
        ):
            if name.endswith("gate"):
                p.uniform_(0.3, 0.9)
            else:
                p.add_(0.05 * torch.randn_like(p))
        head = lang.get_output_embeddings()
        if head.weight is not lang.get_input_embeddings().weight:
            head.weight[-3:].normal_(0, 0.5)  # added rows that differ clearly from any default initialisation
    return ref.eval(), tokenizer


def main() -> None:
    from importlib.metadata import version

    import open_clip
    import open_flamingo  # noqa: F401  (fail early when the reference is missing)
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        raise SystemExit(
            f"transformers {transformers.__version__}: run this in an environment with transformers 4.x (see the "
            "module docstring); the fixtures must hold 4.x key names"
        )
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parents[1] / "tests/fixtures/openflamingo")
    )
    out = Path(parser.parse_args().out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    config_file = out / f"{VISION_NAME}.json"
    config_file.write_text(json.dumps(VISION_CFG, indent=1))
    open_clip.add_model_config(config_file)
    config_file.unlink()
    torch.manual_seed(0)
    visual = open_clip.create_model(VISION_NAME, pretrained=None).visual
    vision_state = {k: v.contiguous() for k, v in visual.state_dict().items()}
    torch.save(vision_state, out / "vision.pt")  # a bare visual state dict: model.visual.state_dict()

    tokenizer = make_tokenizer(out / "tokenizer")
    meta = {
        "made_with": {
            "transformers": transformers.__version__,
            "open_clip": version("open_clip_torch"),
            "open_flamingo": "2.0.1",
            "torch": torch.__version__.split("+")[0],
        },
        "vision": {"name": VISION_NAME, "model_cfg": VISION_CFG, "legacy_tokens": True},
        "perceiver": PERCEIVER,
        "cross_attn": CROSS_ATTN,
        "prompts": PROMPTS,
        "families": {},
    }
    inputs = None
    for seed, (family, (layers, every_n, kind)) in enumerate(FAMILIES.items()):
        torch.manual_seed(100 + seed)
        lm = transformers.AutoModelForCausalLM.from_config(lm_config(family, len(tokenizer), layers))
        lm_dir = out / family / "lm"
        lm.save_pretrained(lm_dir)
        shutil.copytree(out / "tokenizer", lm_dir, dirs_exist_ok=True)
        ref, ref_tokenizer = build_reference(family, lm_dir, every_n, vision_state, seed)
        if inputs is None:
            enc = ref_tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
            image_id = ref_tokenizer.convert_tokens_to_ids("<image>")
            counts = int((enc.input_ids == image_id).sum(1).max())
            generator = torch.Generator().manual_seed(3)
            images = torch.randn(len(PROMPTS), counts, 1, 3, 16, 16, generator=generator)
            inputs = {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "images": images}
            torch.save(inputs, out / "inputs.pt")
        state = release_state(ref) if kind == "release" else ref.state_dict()
        torch.save({k: v.contiguous() for k, v in state.items()}, out / family / "checkpoint.pt")
        with torch.no_grad():
            logits = ref(
                inputs["images"], inputs["input_ids"], attention_mask=inputs["attention_mask"]
            ).logits
            greedy = ref.generate(
                inputs["images"],
                inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                max_new_tokens=6,
                num_beams=1,
                do_sample=False,
                suppress_tokens=[ref_tokenizer.convert_tokens_to_ids("<image>")],
            )
        torch.save({"logits": logits.contiguous(), "greedy": greedy}, out / family / "expected.pt")
        head = ref.lang_encoder.get_output_embeddings()
        meta["families"][family] = {
            "layers": layers,
            "every_n": every_n,
            "checkpoint": kind,
            "tied_head": head.weight is ref.lang_encoder.get_input_embeddings().weight,
            "checkpoint_keys_outside_adapters": sorted(
                k for k in state if "perceiver" not in k and "gated_cross_attn" not in k
            )[:8],
        }
    shutil.rmtree(out / "tokenizer")
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
