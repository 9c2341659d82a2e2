"""Interleave stage: place each image before the sentence it matches best (the MMC4 assignment).

For each document, the image-by-sentence cosine similarity matrix is computed from CLIP-like embeddings,
a one-to-one assignment maximising the total similarity is found with the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment``), and pairs below ``similarity_threshold`` are dropped. MMC4 uses
0.24 with CLIP ViT-L/14; the right value depends on the model, so it is configurable.

Embedding calls are batched across documents: every kept image of the batch of documents goes through
``embed_images`` in chunks of ``batch_size``, and likewise every sentence through ``embed_texts``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

from flamingo.corpus.config import InterleaveConfig
from flamingo.corpus.document import ImageRef, WebDocument
from flamingo.corpus.nsfw import l2_normalise, score_in_batches

logger = logging.getLogger(__name__)

EmbedImages = Callable[[list[Image.Image]], np.ndarray]
EmbedTexts = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class Match:
    """One kept image-sentence pair."""

    image: int
    sentence: int
    similarity: float


def cosine_similarity(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """Cosine similarities, shape (images, sentences)."""
    return l2_normalise(image_emb) @ l2_normalise(text_emb).T


def assign(similarity: np.ndarray, threshold: float) -> list[Match]:
    """One-to-one image->sentence pairs maximising total similarity, minus pairs below ``threshold``.

    Sorted by sentence index (the order images appear in the interleaved text).
    """
    if similarity.size == 0:
        return []
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    matches = [Match(int(r), int(c), float(similarity[r, c])) for r, c in zip(rows, cols)]
    return sorted((m for m in matches if m.similarity >= threshold), key=lambda m: m.sentence)


def _embed_texts(sentences: list[str], embed_texts: EmbedTexts, batch_size: int) -> np.ndarray:
    chunks = [
        np.asarray(embed_texts(sentences[i : i + batch_size])) for i in range(0, len(sentences), batch_size)
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0))


def _place(doc: WebDocument, similarity: np.ndarray, threshold: float) -> WebDocument:
    """Mark each kept image with its match (or drop it) given the doc's (kept images, sentences) matrix."""
    alive = [i for i, im in enumerate(doc.images) if im.alive]
    matches = {alive[m.image]: m for m in assign(similarity, threshold)}
    images: list[ImageRef] = []
    for i, image in enumerate(doc.images):
        if image.alive:
            row = similarity[alive.index(i)].round(6).tolist()
            image = image.annotate(similarities=row)
            if i in matches:
                image = image.annotate(
                    matched_text_index=matches[i].sentence, matched_sim=matches[i].similarity
                )
            else:
                below = bool(row) and max(row) >= threshold
                image = image.drop("unmatched" if below else "below_similarity_threshold")
        images.append(image)
    return doc.with_images(images)


def interleave_documents(
    docs: list[WebDocument], embed_images: EmbedImages, embed_texts: EmbedTexts, config: InterleaveConfig
) -> list[WebDocument]:
    """Assign images to sentences; drop (or keep as text, per ``no_image_policy``) documents left imageless."""
    refs = [im for doc in docs for im in doc.images if im.alive]
    image_emb = np.concatenate(score_in_batches(refs, embed_images, config.batch_size)) if refs else None
    with_images = [doc for doc in docs if doc.alive_images and doc.sentences]
    sentences = [s for doc in with_images for s in doc.sentences]
    text_emb = _embed_texts(sentences, embed_texts, config.batch_size)
    out: list[WebDocument] = []
    img_at = txt_at = 0
    for doc in docs:
        n_img = len(doc.alive_images)
        if n_img and doc.sentences:
            assert image_emb is not None
            sim = cosine_similarity(
                image_emb[img_at : img_at + n_img], text_emb[txt_at : txt_at + len(doc.sentences)]
            )
            doc = _place(doc, sim, config.similarity_threshold)
            txt_at += len(doc.sentences)
        elif n_img:
            doc = doc.with_images([im.drop("no_sentences") if im.alive else im for im in doc.images])
        img_at += n_img
        if doc.alive_images or config.no_image_policy == "keep_text":
            out.append(doc)
    return out
