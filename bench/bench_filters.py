"""Precision and recall of the builder's face filter and pHash dedup threshold on labelled image sets.

The sets are generated offline from images that installed packages ship and from figures drawn on the spot
(``tests/corpus/labelled_images.py`` describes them); nothing is downloaded.

  * faces: OpenCV's frontal-face Haar cascades (default, alt, alt2) at several minNeighbors settings,
    each with and without verification (eyes inside the box, skin tone in it), plus scikit-image's LBP
    detector. An image counts as "has a face" when at least one box survives (the builder's max_faces=1).
  * dedup: pHash Hamming distance between the two images of each labelled pair; for each threshold 0..10,
    precision and recall of "distance <= threshold" as "same image".

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_filters.py      # writes bench/results/filters_cpu.json
    .venv/bin/python bench/bench_filters.py --quick                # fewer settings, no JSON

The detector settings measured are the builder's own (``OpenCVHaarDetector``), so the table is what the
configuration knobs give.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests" / "corpus"))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENCV_FOR_THREADS_NUM", "1")

import labelled_images  # noqa: E402
import results_log  # noqa: E402
from PIL import Image  # noqa: E402

from flamingo.corpus.dedup import hamming, phash_hex  # noqa: E402
from flamingo.corpus.faces import (  # noqa: E402
    OpenCVHaarDetector,
    SkimageLBPDetector,
    _downscale,
    count_eyes,
    is_greyscale,
    skin_share,
)

EYES = (0, 1, 2)
SKIN = (0.0, 0.2)


def precision_recall(predicted: list[bool], truth: list[bool]) -> dict[str, float | int]:
    """Precision, recall and the counts behind them."""
    tp = sum(p and t for p, t in zip(predicted, truth))
    fp = sum(p and not t for p, t in zip(predicted, truth))
    fn = sum(t and not p for p, t in zip(predicted, truth))
    return {
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def measure_faces(quick: bool) -> list[dict[str, Any]]:
    """One row per detector setting: precision, recall, false-positive names."""
    import cv2

    items = labelled_images.face_set()
    truth = [it.has_face for it in items]
    pixels = [_downscale(it.image)[0] for it in items]
    grays = [cv2.cvtColor(p, cv2.COLOR_RGB2GRAY) for p in pixels]
    grey_images = [is_greyscale(p) for p in pixels]
    rows: list[dict[str, Any]] = []
    cascades = ("default", "alt2") if quick else ("default", "alt", "alt2")
    neighbours = (3, 5) if quick else (3, 5, 8)
    sizes = (24,)
    for cascade, mn, size in itertools.product(cascades, neighbours, sizes):
        detector = OpenCVHaarDetector(min_neighbors=mn, min_size=size, cascade=cascade)
        start = time.perf_counter()
        boxes = [detector.candidates(p) for p in pixels]
        seconds = time.perf_counter() - start
        eyes = [[count_eyes(g, b) for b in bs] for g, bs in zip(grays, boxes)]
        skin = [[skin_share(p, b) for b in bs] for p, bs in zip(pixels, boxes)]
        for min_eyes, min_skin in itertools.product(EYES, SKIN):
            predicted = [
                any(
                    e >= min_eyes and (grey or min_skin == 0 or s >= min_skin)
                    for e, s in zip(image_eyes, image_skin)
                )
                for image_eyes, image_skin, grey in zip(eyes, skin, grey_images)
            ]
            rows.append(
                {
                    "detector": f"opencv {cascade}",
                    "min_neighbors": mn,
                    "min_size": size,
                    "min_eyes": min_eyes,
                    "min_skin_share": min_skin,
                    **precision_recall(predicted, truth),
                    "ms_per_image": 1000 * seconds / len(items),
                    "false_faces": [it.name for it, p in zip(items, predicted) if p and not it.has_face],
                }
            )
    lbp = SkimageLBPDetector()
    start = time.perf_counter()
    predicted = [bool(lbp.detect(it.image)) for it in items]
    seconds = time.perf_counter() - start
    rows.append(
        {
            "detector": "skimage lbp",
            "min_neighbors": lbp.min_neighbors,
            "min_size": lbp.min_size,
            "min_eyes": 0,
            "min_skin_share": 0.0,
            **precision_recall(predicted, truth),
            "ms_per_image": 1000 * seconds / len(items),
            "false_faces": [it.name for it, p in zip(items, predicted) if p and not it.has_face],
        }
    )
    return rows


def measure_dedup() -> list[dict[str, Any]]:
    """One row per pHash threshold 0..10: precision and recall of "same image"."""
    pairs = labelled_images.dedup_pairs()
    distances = [hamming(int(phash_hex(p.a), 16), int(phash_hex(p.b), 16)) for p in pairs]
    truth = [p.same for p in pairs]
    rows = []
    for threshold in range(11):
        predicted = [d <= threshold for d in distances]
        merged = [p.name for p, d in zip(pairs, distances) if d <= threshold and not p.same]
        rows.append({"threshold": threshold, **precision_recall(predicted, truth), "wrongly_merged": merged})
    return rows


def composition() -> dict[str, Any]:
    """How many images of each group the sets hold."""
    faces: dict[str, int] = {}
    for it in labelled_images.face_set():
        key = f"{it.group} ({'face' if it.has_face else 'no face'})"
        faces[key] = faces.get(key, 0) + 1
    pairs: dict[str, int] = {}
    for p in labelled_images.dedup_pairs():
        key = f"{'same' if p.same else 'different'}: {p.group}"
        pairs[key] = pairs.get(key, 0) + 1
    return {"faces": faces, "dedup_pairs": pairs}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer detector settings; no JSON written")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "filters_cpu.json"))
    args = parser.parse_args()
    Image.MAX_IMAGE_PIXELS = None
    faces = measure_faces(args.quick)
    dedup = measure_dedup()
    print(f"{'detector':<16}{'nbrs':>5}{'size':>5}{'eyes':>5}{'skin':>6}{'prec':>7}{'recall':>7}{'ms':>7}")
    for r in sorted(faces, key=lambda r: (-r["precision"], -r["recall"])):
        print(
            f"{r['detector']:<16}{r['min_neighbors']:>5}{r['min_size']:>5}{r['min_eyes']:>5}"
            f"{r['min_skin_share']:>6.1f}{r['precision']:>7.3f}{r['recall']:>7.3f}{r['ms_per_image']:>7.1f}"
        )
    print(f"\n{'pHash distance':<16}{'prec':>7}{'recall':>7}  wrongly merged")
    for r in dedup:
        print(
            f"{r['threshold']:<16}{r['precision']:>7.3f}{r['recall']:>7.3f}  {', '.join(r['wrongly_merged'])}"
        )
    if not args.quick:
        results_log.record(args.out, {"sets": composition(), "faces": faces, "dedup": dedup})
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
