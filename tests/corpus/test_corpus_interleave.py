"""Interleaving (Hungarian assignment on similarities) and the shard record it produces."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
from corpus_fakes import ColourEmbedder, encode, textured

from flamingo.corpus.config import InterleaveConfig
from flamingo.corpus.document import ImageRef, WebDocument
from flamingo.corpus.interleave import assign, interleave_documents
from flamingo.corpus.write import to_shard_record
from flamingo.data.schema import check_document_dict


def _brute_force_best(sim: np.ndarray) -> float:
    n_img, n_txt = sim.shape
    if n_img <= n_txt:
        return max(
            sum(sim[i, c] for i, c in enumerate(cols)) for cols in itertools.permutations(range(n_txt), n_img)
        )
    return max(
        sum(sim[r, j] for j, r in enumerate(rows)) for rows in itertools.permutations(range(n_img), n_txt)
    )


@pytest.mark.parametrize("seed", range(20))
def test_assignment_is_the_brute_force_optimum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sim = rng.uniform(-1, 1, size=(int(rng.integers(1, 6)), int(rng.integers(1, 6))))
    matches = assign(sim, threshold=-np.inf)
    assert len(matches) == min(sim.shape)
    assert len({m.image for m in matches}) == len({m.sentence for m in matches}) == len(matches)  # one-to-one
    assert sum(m.similarity for m in matches) == pytest.approx(_brute_force_best(sim))
    assert [m.sentence for m in matches] == sorted(m.sentence for m in matches)


def test_threshold_drops_weak_pairs_after_the_assignment() -> None:
    sim = np.array([[0.9, 0.1], [0.8, 0.2]])
    # The optimum pairs image 1 with sentence 1 (0.2), so image 1 is dropped, not moved to sentence 0.
    assert [(m.image, m.sentence) for m in assign(sim, threshold=0.24)] == [(0, 0)]
    assert [(m.image, m.sentence) for m in assign(sim, threshold=0.2)] == [(0, 0), (1, 1)]
    assert assign(np.zeros((0, 3)), 0.24) == []


def _doc(tmp_path, doc_id: str, sentences: list[str], colours: list[str]) -> WebDocument:
    images = []
    for i, colour in enumerate(colours):
        data = encode(textured(colour, hash((doc_id, i)) % 1000))
        path = tmp_path / f"{doc_id}-{i}.png"
        path.write_bytes(data)
        images.append(
            ImageRef(url=f"http://e.com/{doc_id}/{i}.png", path=str(path), format="png", width=160, height=160,
                     sha256=hashlib.sha256(data).hexdigest())
        )  # fmt: skip
    return WebDocument(
        id=doc_id, url=f"http://e.com/{doc_id}", sentences=sentences, images=images, source="t.warc"
    )


def test_interleave_places_images_by_content_and_batches_across_documents(tmp_path) -> None:
    docs = [
        # Page order puts blue first, but the blue sentence comes last: images follow the matched sentences.
        _doc(tmp_path, "a", ["Intro text.", "A red barn.", "The sea is blue."], ["blue", "red"]),
        _doc(tmp_path, "b", ["Nothing matches here.", "Still nothing."], ["green"]),  # below threshold
        _doc(tmp_path, "c", ["A green hill."], ["green", "yellow"]),  # 2 images, 1 sentence
        WebDocument(id="d", url="", sentences=["Text only."], images=[]),
    ]
    embedder = ColourEmbedder()
    out = interleave_documents(
        docs, embedder.embed_images, embedder.embed_texts, InterleaveConfig(batch_size=3)
    )
    assert embedder.image_calls == [3, 2]  # 5 images over 3 documents, batches of 3
    assert embedder.text_calls == [3, 3]  # sentences of documents that have images: 3 + 2 + 1
    assert [d.id for d in out] == ["a", "c"]  # b and d are left without images: dropped
    a = out[0]
    assert [im.metadata["matched_text_index"] for im in a.images] == [2, 1]
    assert all(im.metadata["matched_sim"] > 0.9 for im in a.images)
    assert [im.failure for im in out[1].images] == [
        None,
        "unmatched",
    ]  # yellow is close to "green" too, but lost
    kept = interleave_documents(
        docs, embedder.embed_images, embedder.embed_texts, InterleaveConfig(no_image_policy="keep_text")
    )
    assert [d.id for d in kept] == ["a", "b", "c", "d"]
    assert [im.failure for im in kept[1].images] == ["below_similarity_threshold"]

    record, members = to_shard_record(a)
    assert check_document_dict(record) == []
    assert [i["matched_text_index"] for i in record["image_info"]] == [1, 2]  # ordered by sentence
    assert [i["raw_url"] for i in record["image_info"]] == ["http://e.com/a/1.png", "http://e.com/a/0.png"]
    assert list(members) == ["0.png", "1.png"]
    assert record["image_info"][0]["sha256"] == hashlib.sha256(members["0.png"]).hexdigest()
    assert np.array(record["similarity_matrix"]).shape == (2, 3)
    assert record["similarity_matrix"][0][1] == pytest.approx(
        record["image_info"][0]["matched_sim"], abs=1e-5
    )


def test_gif_images_are_stored_as_png(tmp_path) -> None:
    data = encode(textured("red", 3), "GIF")
    path = tmp_path / "x.gif"
    path.write_bytes(data)
    image = ImageRef(url="http://e.com/x.gif", path=str(path), format="gif", width=160, height=160)
    image = image.annotate(matched_text_index=0, matched_sim=0.5, similarities=[0.5])
    record, members = to_shard_record(WebDocument(id="g", url="", sentences=["Red."], images=[image]))
    assert list(members) == ["0.png"] and members["0.png"].startswith(b"\x89PNG")
    assert check_document_dict(record) == []
    with pytest.raises(ValueError, match="run interleave first"):
        to_shard_record(
            WebDocument(id="h", url="", sentences=["x."], images=[ImageRef(url="u", path=str(path))])
        )
