"""The face filter's and pHash dedup's defaults on the labelled sets: at least the precision the docs state."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from labelled_images import dedup_pairs, face_set
from PIL import Image
from skimage import data as skdata

from flamingo.configs import ConfigError
from flamingo.corpus.config import FilterConfig
from flamingo.corpus.dedup import hamming, phash_hex
from flamingo.corpus.faces import (
    OpenCVHaarDetector,
    count_eyes,
    is_greyscale,
    make_face_detector,
    opencv_haar_available,
    skin_share,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "corpus-builder.md"
needs_opencv = pytest.mark.skipif(not opencv_haar_available(), reason="needs opencv-python-headless<5")


def _stated(what: str) -> tuple[float, float]:
    """The precision and recall docs/corpus-builder.md gives for ``what`` ("faces" or "dedup")."""
    found = re.search(rf"<!-- {what}: precision ([0-9.]+), recall ([0-9.]+) -->", DOCS.read_text())
    assert found, f"docs/corpus-builder.md states no {what} precision/recall"
    return float(found[1]), float(found[2])


def _precision_recall(predicted: list[bool], truth: list[bool]) -> tuple[float, float]:
    tp = sum(p and t for p, t in zip(predicted, truth))
    return tp / max(1, sum(predicted)), tp / max(1, sum(truth))


@needs_opencv
@pytest.mark.slow
def test_default_face_filter_on_the_labelled_set() -> None:
    detector = make_face_detector("auto", FilterConfig())
    assert isinstance(detector, OpenCVHaarDetector) and detector.cascade == "alt"
    items = face_set()
    predicted = [bool(detector.detect(it.image)) for it in items]
    precision, recall = _precision_recall(predicted, [it.has_face for it in items])
    doc_precision, doc_recall = _stated("faces")
    assert precision >= doc_precision and recall >= doc_recall, (precision, recall)
    # The documentation images the old default flagged: coins, microscope cells, a scatter plot.
    flagged = {it.name for it, p in zip(items, predicted) if p}
    assert not flagged & {"coins", "cell", "plot-scatter-8", "shepp_logan_phantom"}
    old = OpenCVHaarDetector(min_neighbors=5, cascade="default")
    assert old.detect(next(it.image for it in items if it.name == "coins"))  # the set does hold the trap


def test_default_phash_threshold_on_the_labelled_pairs() -> None:
    pairs = dedup_pairs()
    threshold = FilterConfig().phash_max_distance
    distances = [hamming(int(phash_hex(p.a), 16), int(phash_hex(p.b), 16)) for p in pairs]
    precision, recall = _precision_recall([d <= threshold for d in distances], [p.same for p in pairs])
    doc_precision, doc_recall = _stated("dedup")
    assert precision >= doc_precision and recall >= doc_recall, (precision, recall)
    # One more bit of tolerance would merge different plots and text pages.
    assert any(d == threshold + 1 or d == threshold + 2 for d, p in zip(distances, pairs) if not p.same)


@needs_opencv
def test_face_verification_helpers() -> None:
    astronaut = skdata.astronaut()
    face = (170, 50, 120, 120)  # Eileen Collins' face in the 512 x 512 photo
    assert skin_share(astronaut, face) > 0.5
    assert skin_share(np.full((64, 64, 3), (40, 60, 220), np.uint8), (0, 0, 64, 64)) == 0.0  # blue
    grey = np.asarray(Image.fromarray(astronaut).convert("L").convert("RGB"))
    assert is_greyscale(grey) and not is_greyscale(astronaut)
    assert count_eyes(grey[..., 0], face) >= 1 and count_eyes(grey[..., 0], (0, 300, 120, 120)) == 0
    strict = OpenCVHaarDetector(cascade="default", min_eyes=1, min_skin_share=0.2)
    assert strict.detect(Image.fromarray(astronaut)) and not strict.detect(Image.fromarray(skdata.coins()))
    with pytest.raises(ConfigError, match=r"filter\.face_cascade is 'lbp'; use default, alt or alt2"):
        FilterConfig(face_cascade="lbp")
