"""Face detection for the "fewer faces" policy (MMC4 drops images with detected faces).

Two classical detectors that ship with their packages, so nothing is downloaded:

- ``opencv-haar``: OpenCV's bundled frontal-face Haar cascade (``cv2.data.haarcascades``). OpenCV 5 wheels
  no longer ship ``CascadeClassifier``; there this backend raises a clear error.
- ``skimage-lbp``: scikit-image's bundled LBP frontal-face cascade (``skimage.feature.Cascade``).

``auto`` picks OpenCV's cascade when it is available, else scikit-image's. Both see frontal faces only
and are far weaker than MMC4's RetinaFace; a stronger detector plugs in through ``FaceDetector``.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Protocol

import numpy as np
from PIL import Image

from flamingo.corpus.config import FilterConfig
from flamingo.corpus.document import WebDocument
from flamingo.corpus.imagecheck import open_rgb

logger = logging.getLogger(__name__)

_MAX_SIDE = 512  # images are downscaled to this before detection; faces under ~24 px there are missed
_HAAR_FILE = "haarcascade_frontalface_default.xml"


class FaceDetector(Protocol):
    """Anything that returns face boxes ``(x, y, w, h)`` found in an RGB image."""

    def detect(self, image: Image.Image) -> list[tuple[int, int, int, int]]:
        """Face boxes in ``image``'s pixel coordinates."""
        ...


def _downscale(image: Image.Image) -> tuple[np.ndarray, float]:
    scale = min(1.0, _MAX_SIDE / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    return np.asarray(image.convert("RGB")), scale


def _rescale(boxes: list[tuple[int, int, int, int]], scale: float) -> list[tuple[int, int, int, int]]:
    return [tuple(round(v / scale) for v in box) for box in boxes]  # type: ignore[misc]


def opencv_haar_available() -> bool:
    """Whether this OpenCV ships ``CascadeClassifier`` and the Haar cascade files."""
    try:
        import cv2
    except ImportError:
        return False
    path = os.path.join(getattr(getattr(cv2, "data", None), "haarcascades", ""), _HAAR_FILE)
    return hasattr(cv2, "CascadeClassifier") and os.path.exists(path)


@functools.cache
def _haar_cascade() -> Any:
    import cv2

    return cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, _HAAR_FILE))


@functools.cache
def _lbp_cascade() -> Any:
    from skimage.data import lbp_frontal_face_cascade_filename
    from skimage.feature import Cascade

    return Cascade(lbp_frontal_face_cascade_filename())


class OpenCVHaarDetector:
    """OpenCV's frontal-face Haar cascade (the cascade is loaded once per process, on first use)."""

    def __init__(self, min_neighbors: int = 5, min_size: int = 24) -> None:
        if not opencv_haar_available():
            raise RuntimeError(
                "filter.face_backend=opencv-haar: this OpenCV has no CascadeClassifier or Haar cascade files "
                "(OpenCV 5 dropped them); install opencv-python-headless<5 or use face_backend=skimage-lbp"
            )
        self.min_neighbors, self.min_size = min_neighbors, min_size

    def detect(self, image: Image.Image) -> list[tuple[int, int, int, int]]:
        """Face boxes ``(x, y, w, h)``."""
        import cv2

        pixels, scale = _downscale(image)
        gray = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
        found = _haar_cascade().detectMultiScale(
            gray, scaleFactor=1.1, minNeighbors=self.min_neighbors, minSize=(self.min_size, self.min_size)
        )
        return _rescale([tuple(int(v) for v in box) for box in found], scale)


class SkimageLBPDetector:
    """scikit-image's LBP frontal-face cascade; ``min_neighbors`` merges overlapping hits (fewer false faces)."""

    def __init__(self, min_neighbors: int = 8, min_size: int = 24) -> None:
        self.min_neighbors, self.min_size = min_neighbors, min_size

    def detect(self, image: Image.Image) -> list[tuple[int, int, int, int]]:
        """Face boxes ``(x, y, w, h)``."""
        pixels, scale = _downscale(image)
        side = max(pixels.shape[:2])
        found = _lbp_cascade().detect_multi_scale(
            img=pixels,
            scale_factor=1.2,
            step_ratio=1,
            min_size=(self.min_size, self.min_size),
            max_size=(side, side),
            min_neighbor_number=self.min_neighbors,
        )
        return _rescale([(d["c"], d["r"], d["width"], d["height"]) for d in found], scale)


def make_face_detector(backend: str = "auto") -> FaceDetector:
    """The detector named by ``FilterConfig.face_backend``."""
    if backend == "opencv-haar" or (backend == "auto" and opencv_haar_available()):
        return OpenCVHaarDetector()
    if backend in ("auto", "skimage-lbp"):
        return SkimageLBPDetector()
    raise ValueError(f"filter.face_backend={backend!r}: use auto, opencv-haar or skimage-lbp")


def filter_faces(
    docs: list[WebDocument], config: FilterConfig, detector: FaceDetector | None = None
) -> list[WebDocument]:
    """Drop images with at least ``config.max_faces`` faces (reason ``faces``); 0 disables the filter."""
    if config.max_faces == 0:
        return docs
    detector = detector or make_face_detector(config.face_backend)
    out = []
    for doc in docs:
        images = []
        for image in doc.images:
            if image.alive:
                n_faces = len(detector.detect(open_rgb(image.load_bytes())))
                image = image.annotate(faces=n_faces)
                image = image.drop("faces") if n_faces >= config.max_faces else image
            images.append(image)
        out.append(doc.with_images(images))
    return out
