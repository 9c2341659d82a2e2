"""ClipEmbedder: open_clip and Hugging Face backends, normalisation, batching, pickling, and the engine."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from corpus_fakes import encode, small_config, textured
from PIL import Image
from scipy.optimize import linear_sum_assignment

import flamingo.corpus.clip as clip_module
from flamingo.corpus import run_pipeline
from flamingo.corpus.clip import TINY_CLIP_CONFIG, ClipEmbedder, parse_clip_spec, tiny_clip_embedder
from flamingo.data.shards import ReadStats, read_interleaved
from flamingo.data.validate import validate_shards

TEXTS = ["a red car", "x", "the blue sea is calm and wide, and the sun is setting over the hills tonight"]


def _images() -> list[Image.Image]:
    """Different sizes and modes: preprocessing must resize and convert each the same way in any batch."""
    return [textured("red", 1, 96), textured("blue", 2, 40).convert("L"), textured("green", 3, 64).rotate(30)]


def _tiny_hf_clip_dir(path) -> str:
    """A random tiny Hugging Face CLIPModel with a byte-level tokenizer (eos appended) and image processor."""
    import transformers as tf
    from tokenizers import processors

    from flamingo.model.tiny import train_tiny_tokenizer

    tok = train_tiny_tokenizer()
    eos = tok.eos_token
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", special_tokens=[(eos, tok.eos_token_id)]
    )
    tok.pad_token = eos
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {**small, "vocab_size": len(tok), "max_position_embeddings": 32, "eos_token_id": tok.eos_token_id}
    vision = {**small, "image_size": 32, "patch_size": 8}
    config = tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    tf.CLIPModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    size = {"shortest_edge": 32}
    tf.CLIPImageProcessor(size=size, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def open_clip_embedder() -> ClipEmbedder:
    return tiny_clip_embedder(batch_size=2)


@pytest.fixture(scope="module")
def hf_embedder(tmp_path_factory) -> ClipEmbedder:
    return ClipEmbedder.from_hf(_tiny_hf_clip_dir(tmp_path_factory.mktemp("hf-clip")), batch_size=2)


@pytest.mark.parametrize("name", ["open_clip_embedder", "hf_embedder"])
def test_embeddings_are_normalised_and_batching_invariant(name, request) -> None:
    embedder: ClipEmbedder = request.getfixturevalue(name)
    images = _images()
    batched = embedder.embed_images(images)  # batch_size 2: batches of 2 and 1
    assert batched.shape == (3, embedder.dim) and batched.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    singles = np.concatenate([embedder.embed_images([im]) for im in images])
    np.testing.assert_allclose(batched, singles, atol=1e-5)
    assert np.abs(batched[0] - batched[1]).max() > 1e-3  # different images, different embeddings
    texts = embedder.embed_texts(TEXTS)
    assert texts.shape == (3, embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(texts, np.concatenate([embedder.embed_texts([t]) for t in TEXTS]), atol=1e-5)
    assert embedder.embed_images([]).shape == (0, embedder.dim)
    assert embedder.embed_texts([]).shape == (0, embedder.dim)


def test_pickled_embedder_reloads_the_same_weights_from_its_spec(open_clip_embedder) -> None:
    expected = open_clip_embedder.embed_images(_images())
    payload = pickle.dumps(open_clip_embedder)
    assert len(payload) < 5_000  # the description travels, not the weights
    clip_module._LOADED.clear()  # as in a fresh worker process
    again = pickle.loads(payload)
    np.testing.assert_allclose(again.embed_images(_images()), expected, atol=1e-6)
    other_seed = tiny_clip_embedder(seed=1).embed_images(_images())
    assert np.abs(other_seed - expected).max() > 1e-3


def test_parse_clip_spec(tmp_path) -> None:
    assert parse_clip_spec("open_clip:ViT-L-14:openai").pretrained == "openai"
    assert parse_clip_spec("hf:/models/siglip").name == "/models/siglip"
    cfg = tmp_path / "tiny-arch.json"
    cfg.write_text(json.dumps(TINY_CLIP_CONFIG))
    spec = parse_clip_spec(f"open_clip:{cfg}:{tmp_path / 'w.pt'}")
    assert spec.name == "tiny-arch" and json.loads(spec.model_cfg_json) == TINY_CLIP_CONFIG
    with pytest.raises(ValueError, match="use open_clip:NAME:PRETRAINED"):
        parse_clip_spec("clip:ViT-B-32")
    with pytest.raises(FileNotFoundError, match=r"missing\.json does not exist"):
        parse_clip_spec(f"open_clip:{tmp_path / 'missing.json'}:x")
    with pytest.raises(FileNotFoundError, match="not a pretrained tag"):
        ClipEmbedder.from_open_clip("tiny-x", "nope.pt", model_cfg=TINY_CLIP_CONFIG).embed_texts(["a"])


def test_engine_places_images_with_clip_similarities(tmp_path, open_clip_embedder) -> None:
    root = tmp_path / "images"
    root.mkdir()
    pictures = {f"{c}.png": textured(c, i, 96) for i, c in enumerate(["red", "blue", "green"])}
    for name, picture in pictures.items():
        (root / name).write_bytes(encode(picture))
    sentences = ["A red kite.", "A blue boat.", "A green field.", "Nothing else."]
    doc = {"id": "d", "text_list": sentences, "images": list(pictures)}
    (tmp_path / "docs.jsonl").write_text(json.dumps(doc) + "\n")
    config = small_config()
    config.fetch.local_root = str(root)
    config.interleave.similarity_threshold = -1.0  # random weights: keep every one-to-one pair
    out = tmp_path / "out"
    run_pipeline([tmp_path / "docs.jsonl"], out, config, workers=2, embedder=open_clip_embedder)
    assert validate_shards(out / "shards").ok
    (written,) = read_interleaved(out / "shards", stats=ReadStats())
    assert len(written.image_info) == 3
    # Every stored similarity is the cosine of this CLIP's embeddings (computed in a worker process).
    text_emb = open_clip_embedder.embed_texts(sentences)
    for info in written.image_info:
        name = info.raw_url
        image_emb = open_clip_embedder.embed_images([pictures[name]])[0]
        expected = float(image_emb @ text_emb[info.matched_text_index])
        assert info.matched_sim == pytest.approx(expected, abs=1e-4)
    sims = np.array(written.similarity_matrix)  # (images, sentences)
    assert sims.shape == (3, 4)
    rows, cols = linear_sum_assignment(sims, maximize=True)  # the stored matching is the optimal one
    assert sum(i.matched_sim for i in written.image_info) == pytest.approx(sims[rows, cols].sum(), abs=1e-4)
