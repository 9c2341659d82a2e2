"""Tiny random Flamingo models built offline from configs: for tests, benchmarks and the setup smoke job.

Nothing here downloads: the tokenizer is a byte-level BPE trained on a few sentences, the LM comes from a
``transformers`` config, the vision encoder from a small open_clip or Hugging Face CLIP/SigLIP config.
"""

from __future__ import annotations

from typing import Any

import torch

from flamingo.model.config import CrossAttnConfig, FlamingoConfig, LMConfig, PerceiverConfig, VisionConfig
from flamingo.model.flamingo import Flamingo
from flamingo.model.vision import HFVisionAdapter, OpenClipAdapter

LM_FAMILIES = (
    "llama",
    "mistral",
    "qwen2",
    "gemma",
    "phi3",
    "gpt2",
    "gpt_neox",
    "opt",
    "mpt",
    "gptj",
    "falcon",
)

_CORPUS = [
    "a photo of a red circle on a dark background.",
    "Output: two blue squares next to a green triangle.",
    "Question: what colour is the star? Short answer: yellow",
    "the cat sat on the mat while the dog slept in the sun.",
    "an image of three small purple hexagons in the corner.",
] * 4

TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def train_tiny_tokenizer(vocab_size: int = 320, corpus: list[str] | None = None) -> Any:
    """A byte-level BPE tokenizer (eos ``<|endoftext|>``, no pad token) as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus or _CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def tiny_lm_config(family: str, vocab_size: int, width: int = 64, layers: int = 4, heads: int = 4) -> Any:
    """A small ``transformers`` config of the given family (hidden ``width``, ``layers`` decoder layers)."""
    import transformers as tf

    common = {"vocab_size": vocab_size, "bos_token_id": 0, "eos_token_id": 0}
    llama_like = {
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "max_position_embeddings": 1024,
        **common,
    }
    builders = {
        "llama": lambda: tf.LlamaConfig(**llama_like),
        "mistral": lambda: tf.MistralConfig(**llama_like, sliding_window=None),
        "qwen2": lambda: tf.Qwen2Config(**llama_like, use_sliding_window=False),
        "gemma": lambda: tf.GemmaConfig(**llama_like, head_dim=width // heads),
        "phi3": lambda: tf.Phi3Config(**llama_like, pad_token_id=0),
        "gpt2": lambda: tf.GPT2Config(n_embd=width, n_layer=layers, n_head=heads, n_positions=1024, **common),
        "gpt_neox": lambda: tf.GPTNeoXConfig(
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=2 * width,
            max_position_embeddings=1024,
            **common,
        ),
        "opt": lambda: tf.OPTConfig(
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            ffn_dim=2 * width,
            word_embed_proj_dim=width,
            max_position_embeddings=1024,
            **common,
        ),
        "mpt": lambda: tf.MptConfig(
            d_model=width, n_layers=layers, n_heads=heads, max_seq_len=1024, **common
        ),
        "gptj": lambda: tf.GPTJConfig(
            n_embd=width, n_layer=layers, n_head=heads, rotary_dim=8, n_positions=1024, **common
        ),
        "falcon": lambda: tf.FalconConfig(
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            new_decoder_architecture=False,
            multi_query=False,
            parallel_attn=True,
            alibi=False,
            **common,
        ),
    }
    if family not in builders:
        raise ValueError(f"unknown LM family {family!r}; choose one of {sorted(builders)}")
    return builders[family]()


def tiny_vision(kind: str = "open_clip") -> tuple[VisionConfig, Any]:
    """A tiny vision config and adapter: ``open_clip`` (ViT, 32 px), ``clip`` or ``siglip`` (Hugging Face)."""
    if kind == "open_clip":
        config = VisionConfig(
            kind="open_clip", name="flamingo-tiny-vit", pretrained=None, model_cfg=TINY_OPEN_CLIP
        )
        return config, OpenClipAdapter.from_config(config)
    import transformers as tf

    common = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
    common |= {"image_size": 32, "patch_size": 8}
    model = tf.CLIPVisionModel(tf.CLIPVisionConfig(**common)) if kind == "clip" else None
    if kind == "siglip":
        model = tf.SiglipVisionModel(tf.SiglipVisionConfig(**common))
    if model is None:
        raise ValueError(f"unknown tiny vision kind {kind!r}; choose open_clip, clip or siglip")
    return VisionConfig(kind="hf", name=f"tiny-{kind}", pretrained=None), HFVisionAdapter(model)


def build_tiny_flamingo(
    family: str = "llama",
    vision: str = "open_clip",
    every_n: int = 1,
    gate_init: float = 0.0,
    media_policy: str = "previous",
    width: int = 64,
    layers: int = 4,
    max_frames: int | None = None,
    seed: int = 0,
) -> Flamingo:
    """A complete random Flamingo for tests: tiny tokenizer, LM of ``family``, tiny vision tower."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    tokenizer = train_tiny_tokenizer()
    lm = AutoModelForCausalLM.from_config(tiny_lm_config(family, len(tokenizer), width, layers))
    lm.eval()
    vision_cfg, adapter = tiny_vision(vision)
    adapter.eval()
    config = FlamingoConfig(
        lm=LMConfig(name_or_path=f"tiny-{family}"),
        vision=vision_cfg,
        perceiver=PerceiverConfig(depth=2, heads=2, dim_head=16, num_latents=4, max_frames=max_frames),
        cross_attn=CrossAttnConfig(
            every_n=every_n, heads=2, dim_head=16, gate_init=gate_init, media_policy=media_policy
        ),
    )
    return Flamingo.from_config(config, lm=lm, tokenizer=tokenizer, vision=adapter)
