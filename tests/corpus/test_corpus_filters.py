"""Filters: per-image rules, corpus-wide dedup, decontamination, faces and NSFW."""

from __future__ import annotations

import hashlib
import io
import random

import numpy as np
import pytest
from corpus_fakes import ColourEmbedder, encode, textured
from PIL import Image
from skimage import data as skdata

from flamingo.corpus.config import FilterConfig
from flamingo.corpus.dedup import (
    DedupIndex,
    PHashIndex,
    build_eval_index,
    decontaminate,
    dedup_documents,
    hamming,
)
from flamingo.corpus.document import ImageRef, WebDocument
from flamingo.corpus.faces import SkimageLBPDetector, filter_faces, make_face_detector, opencv_haar_available
from flamingo.corpus.filters import filter_images, hash_images, image_rejection
from flamingo.corpus.nsfw import PromptNSFWScorer, SafetyHeadScorer, filter_nsfw


def _ref(url: str = "http://e.com/photo.jpg", w: int = 400, h: int = 300, size: int = 50_000) -> ImageRef:
    return ImageRef(url=url, width=w, height=h, metadata={"bytes": size})


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        (_ref(), None),
        (_ref(w=1, h=1), "tracking_pixel"),
        (_ref("http://ad.doubleclick.net/x/photo.jpg"), "ad_url"),
        (_ref("http://e.com/ads/banner.gif", 728, 90), "ad_banner"),
        (_ref("http://e.com/img/sponsor_box.png", 300, 250), "ad_banner"),
        (_ref("http://e.com/img/garden.png", 300, 250), None),  # an ad size alone is not an ad
        (_ref("http://e.com/pixelart/cat.png", 300, 250), None),  # "pixel" only as a whole path word
        (_ref(w=149, h=400), "too_small"),
        (_ref(w=700, h=300), "aspect_ratio"),
        (_ref(size=9_999), "too_few_bytes"),
    ],
)
def test_image_rejection_rules(ref: ImageRef, reason: str | None) -> None:
    assert image_rejection(ref, FilterConfig()) == reason


def test_filter_images_marks_without_mutating_input() -> None:
    doc = WebDocument(id="d", url="", sentences=["s."], images=[_ref(), _ref(w=10, h=10)])
    out = filter_images([doc], FilterConfig())
    assert [im.failure for im in out[0].images] == [None, "too_small"]
    assert doc.images[1].failure is None  # the stage copies what it changes


def _stored(tmp_path, name: str, data: bytes, fmt: str) -> ImageRef:
    path = tmp_path / name
    path.write_bytes(data)
    return ImageRef(
        url=f"http://e.com/{name}", path=str(path), sha256=hashlib.sha256(data).hexdigest(), format=fmt
    )


def test_exact_and_perceptual_dedup_across_documents(tmp_path) -> None:
    photo = Image.fromarray(skdata.astronaut())
    original = encode(photo, "PNG")
    copy = encode(photo.resize((300, 300)), "JPEG", quality=70)  # resized and re-encoded
    other = encode(Image.fromarray(skdata.coffee()), "PNG")
    docs = [
        WebDocument(id="a", url="", sentences=["s."], images=[_stored(tmp_path, "1.png", original, "png")]),
        WebDocument(
            id="b",
            url="",
            sentences=["s."],
            images=[
                _stored(tmp_path, "2.png", original, "png"),
                _stored(tmp_path, "3.jpg", copy, "jpeg"),
                _stored(tmp_path, "4.png", other, "png"),
            ],
        ),
    ]
    hashed = hash_images(docs)
    assert hamming(int(hashed[0].images[0].phash, 16), int(hashed[1].images[1].phash, 16)) <= 4
    out = dedup_documents(hashed, DedupIndex(phash_max_distance=4))
    assert [im.failure for im in out[1].images] == ["duplicate_exact", "duplicate_perceptual", None]
    assert out[1].images[1].metadata["duplicate_of"] == "a#0"
    only_exact = dedup_documents(hashed, DedupIndex(phash_max_distance=4, perceptual=False))
    assert [im.failure for im in only_exact[1].images] == ["duplicate_exact", None, None]


def test_phash_index_matches_brute_force() -> None:
    rng = random.Random(0)
    base = [rng.getrandbits(64) for _ in range(200)]
    stored = base + [b ^ (1 << rng.randrange(64)) ^ (1 << rng.randrange(64)) for b in base[:50]]
    queries = [rng.getrandbits(64) for _ in range(100)] + [
        b ^ (0b111 << rng.randrange(60)) for b in base[50:150]
    ]
    for max_distance in (0, 3, 6):
        index = PHashIndex(max_distance)
        for i, value in enumerate(stored):
            index.add(value, str(i))
        for q in queries:
            expected = next((str(i) for i, v in enumerate(stored) if hamming(q, v) <= max_distance), None)
            assert index.find(q) == expected


def test_dedup_index_merge_keeps_first_seen() -> None:
    a, b = DedupIndex(), DedupIndex()
    assert a.check_and_add("s1", "0f0f0f0f0f0f0f0f", "a1").reason is None
    assert b.check_and_add("s2", "ffffffff00000000", "b1").reason is None
    assert b.check_and_add("s3", "0f0f0f0f0f0f0f0e", "b2").reason is None  # near a1, but b has not seen a1
    a.merge(b)
    assert len(a) == 2  # b2 is a near-copy of a1 and is not added
    assert a.check_and_add("s9", "ffffffff00000001", "c").original == "b1"
    assert a.check_and_add("s3", None, "d").reason is None  # b2 was skipped, so its sha is unknown
    assert a.check_and_add("s2", None, "e").original == "b1"


def test_decontamination_drops_near_copies_of_eval_images(tmp_path) -> None:
    eval_dir = tmp_path / "eval" / "coco"
    eval_dir.mkdir(parents=True)
    (eval_dir / "cat.png").write_bytes(encode(Image.fromarray(skdata.chelsea())))
    (eval_dir / "notes.txt").write_text("not an image")
    index = build_eval_index([tmp_path / "eval"], max_distance=4)
    assert len(index) == 1
    leaked = encode(Image.fromarray(skdata.chelsea()).resize((200, 133)), "JPEG", quality=75)
    clean = encode(Image.fromarray(skdata.rocket()), "JPEG")
    doc = WebDocument(
        id="d",
        url="",
        sentences=["s."],
        images=[_stored(tmp_path, "x.jpg", leaked, "jpeg"), _stored(tmp_path, "y.jpg", clean, "jpeg")],
    )
    out = decontaminate(hash_images([doc]), index)
    assert [im.failure for im in out[0].images] == ["eval_overlap", None]
    assert out[0].images[0].metadata["eval_match"].endswith("cat.png")
    with pytest.raises(ValueError, match="decontaminate_folders"):
        build_eval_index([tmp_path / "missing"], 4)


def _face_boxes(image: np.ndarray) -> list[tuple[int, int, int, int]]:
    return SkimageLBPDetector().detect(Image.fromarray(image))


def test_face_detector_finds_the_astronaut_and_no_face_in_coffee_or_cat() -> None:
    boxes = _face_boxes(skdata.astronaut())
    # Eileen Collins' face is around x 170-290, y 60-170 in the 512x512 photo.
    assert any(170 <= x + w / 2 <= 290 and 60 <= y + h / 2 <= 170 for x, y, w, h in boxes)
    assert _face_boxes(skdata.coffee()) == []
    assert _face_boxes(skdata.chelsea()) == []


def test_fewer_faces_policy(tmp_path) -> None:
    doc = WebDocument(
        id="d",
        url="",
        sentences=["s."],
        images=[
            _stored(tmp_path, "a.png", encode(Image.fromarray(skdata.astronaut())), "png"),
            _stored(tmp_path, "c.png", encode(Image.fromarray(skdata.coffee())), "png"),
        ],
    )
    out = filter_faces([doc], FilterConfig(max_faces=1, face_backend="skimage-lbp"))
    assert [im.failure for im in out[0].images] == ["faces", None]
    assert out[0].images[1].metadata["faces"] == 0
    assert filter_faces([doc], FilterConfig(max_faces=0)) == [doc]  # 0 disables
    assert isinstance(make_face_detector("auto"), SkimageLBPDetector) != opencv_haar_available()


def test_prompt_nsfw_scorer_and_filter(tmp_path) -> None:
    embedder = ColourEmbedder()
    # With the colour "CLIP", "red" plays the NSFW concept.
    scorer = PromptNSFWScorer(
        embedder.embed_images, embedder.embed_texts, ["red"], ["blue", "green"], logit_scale=10
    )
    red, blue = textured("red", 1), textured("blue", 2)
    p_red, p_blue = scorer.score([red, blue])
    assert p_red > 0.9 and p_blue < 0.1
    doc = WebDocument(
        id="d",
        url="",
        sentences=["s."],
        images=[
            _stored(tmp_path, "r.png", encode(red), "png"),
            _stored(tmp_path, "b.png", encode(blue), "png"),
        ],
    )
    out = filter_nsfw([doc], scorer, FilterConfig(nsfw_threshold=0.5), batch_size=1)
    assert [im.failure for im in out[0].images] == ["nsfw", None]
    assert embedder.image_calls == [2, 1, 1]  # batch_size=1 in the filter


def test_safety_head_loads_from_safetensors(tmp_path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    w1, b1 = rng.normal(size=(1, 4)).astype(np.float32), rng.normal(size=1).astype(np.float32)
    path = tmp_path / "head.safetensors"
    save_file(
        {"layers.0.weight": w0, "layers.0.bias": b0, "layers.1.weight": w1, "layers.1.bias": b1}, str(path)
    )
    embedder = ColourEmbedder()
    head = SafetyHeadScorer(embedder.embed_images, path)
    images = [textured("red", 1), textured("green", 2)]
    x = embedder.embed_images(images)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    expected = 1 / (1 + np.exp(-(np.maximum(x @ w0.T + b0, 0) @ w1.T + b1)[:, 0]))
    np.testing.assert_allclose(head.score(images), expected, rtol=1e-5)
    save_file({"layers.0.weight": w0, "layers.0.bias": b0}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="final layer of 1 output"):
        SafetyHeadScorer(embedder.embed_images, tmp_path / "bad.safetensors")


def test_image_bytes_roundtrip_helper() -> None:
    assert Image.open(io.BytesIO(encode(textured("red", 0)))).size == (160, 160)
