"""Face detection for the "fewer faces" policy (MMC4 drops images with detected faces).

Two classical detectors that ship with their packages, so nothing is downloaded:

- ``opencv-haar``: one of OpenCV's bundled frontal-face Haar cascades (``cv2.data.haarcascades``; ``alt`` by
  default, the most precise on the labelled set in ``bench/bench_filters.py``), optionally verified by eyes
  inside the box and skin tone in it. OpenCV 5 wheels no longer ship ``CascadeClassifier``; there this backend
  raises a clear error.
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
# OpenCV's frontal-face Haar files. The pip wheels ship no LBP face cascade; scikit-image's LBP detector is the
# skimage-lbp backend.
HAAR_CASCADES = {
    "default": "haarcascade_frontalface_default.xml",
    "alt": "haarcascade_frontalface_alt.xml",
    "alt2": "haarcascade_frontalface_alt2.xml",
}
_HAAR_FILE = HAAR_CASCADES["default"]
_EYE_FILE = "haarcascade_eye.xml"
_EYE_CROP = 96  # face boxes are scaled to this width before looking for eyes (eyes in small boxes are ~5 px)
# Skin in YCrCb (the Chai-Ngan ranges): a box whose pixels are rarely in it is a coin, a dial or a diagram.
_CR_RANGE, _CB_RANGE = (133, 173), (77, 127)
_GREY_SPREAD = 8.0  # images whose colour channels differ by less than this on average are greyscale
Box = tuple[int, int, int, int]


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


def _rescale(boxes: list[Box], scale: float) -> list[Box]:
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
def _cascade(name: str) -> Any:
    """An OpenCV ``CascadeClassifier`` for a ``HAAR_CASCADES`` name or a file of ``cv2.data.haarcascades``
    (loaded once per process and name)."""
    import cv2

    return cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, HAAR_CASCADES.get(name, name)))


@functools.cache
def _lbp_cascade() -> Any:
    from skimage.data import lbp_frontal_face_cascade_filename
    from skimage.feature import Cascade

    return Cascade(lbp_frontal_face_cascade_filename())


def count_eyes(gray: np.ndarray, box: Box) -> int:
    """Eyes the Haar eye cascade finds in the upper 60% of ``box`` of the grey image ``gray`` (h, w)."""
    import cv2

    x, y, w, h = box
    top = gray[y : y + max(1, round(h * 0.6)), x : x + w]
    if top.size == 0:
        return 0
    factor = _EYE_CROP / max(1, top.shape[1])
    top = cv2.resize(top, (_EYE_CROP, max(1, round(top.shape[0] * factor))))
    eyes = _cascade(_EYE_FILE).detectMultiScale(top, scaleFactor=1.1, minNeighbors=3, minSize=(12, 12))
    return len(eyes)


def is_greyscale(pixels: np.ndarray) -> bool:
    """Whether an RGB array (h, w, 3) carries no colour (skin tone cannot be judged there)."""
    rgb = pixels.astype(np.int16)
    spread = np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])
    return float(spread.mean()) < _GREY_SPREAD


def skin_share(pixels: np.ndarray, box: Box) -> float:
    """Share of skin-toned pixels in the middle half of ``box`` of the RGB array ``pixels`` (h, w, 3)."""
    import cv2

    x, y, w, h = box
    middle = pixels[y + h // 4 : y + 3 * h // 4, x + w // 4 : x + 3 * w // 4]
    if middle.size == 0:
        return 0.0
    ycrcb = cv2.cvtColor(np.ascontiguousarray(middle), cv2.COLOR_RGB2YCrCb)
    cr, cb = ycrcb[..., 1], ycrcb[..., 2]
    skin = (cr >= _CR_RANGE[0]) & (cr <= _CR_RANGE[1]) & (cb >= _CB_RANGE[0]) & (cb <= _CB_RANGE[1])
    return float(skin.mean())


class OpenCVHaarDetector:
    """An OpenCV face cascade, optionally verified by eyes inside the box and skin tone in it.

    ``cascade`` names one of OpenCV's frontal-face Haar files (``default``, ``alt``, ``alt2``). A candidate box is kept when the eye cascade finds at least
    ``min_eyes`` eyes in its upper part and, in colour images, at least ``min_skin_share`` of its middle is
    skin-toned (greyscale images skip the skin test). Cascades load once per process, on first use.
    """

    def __init__(
        self,
        min_neighbors: int = 5,
        min_size: int = 24,
        cascade: str = "alt",
        min_eyes: int = 0,
        min_skin_share: float = 0.0,
    ) -> None:
        if not opencv_haar_available():
            raise RuntimeError(
                "filter.face_backend=opencv-haar: this OpenCV has no CascadeClassifier or Haar cascade files "
                "(OpenCV 5 dropped them); install opencv-python-headless<5 or use face_backend=skimage-lbp"
            )
        if cascade not in HAAR_CASCADES:
            raise ValueError(f"filter.face_cascade={cascade!r}: use one of {', '.join(HAAR_CASCADES)}")
        self.min_neighbors, self.min_size, self.cascade = min_neighbors, min_size, cascade
        self.min_eyes, self.min_skin_share = min_eyes, min_skin_share

    def candidates(self, pixels: np.ndarray) -> list[Box]:
        """Unverified cascade boxes ``(x, y, w, h)`` in an RGB array (h, w, 3) of at most 512 px a side."""
        import cv2

        gray = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
        found = _cascade(self.cascade).detectMultiScale(
            gray, scaleFactor=1.1, minNeighbors=self.min_neighbors, minSize=(self.min_size, self.min_size)
        )
        return [tuple(int(v) for v in box) for box in found]  # type: ignore[misc]

    def verified(self, pixels: np.ndarray, boxes: list[Box]) -> list[Box]:
        """The ``boxes`` (in ``pixels``, an RGB array (h, w, 3)) that pass the eye and skin tests."""
        if not boxes or (self.min_eyes == 0 and self.min_skin_share == 0):
            return boxes
        import cv2

        gray = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
        check_skin = self.min_skin_share > 0 and not is_greyscale(pixels)
        return [
            box
            for box in boxes
            if (self.min_eyes == 0 or count_eyes(gray, box) >= self.min_eyes)
            and (not check_skin or skin_share(pixels, box) >= self.min_skin_share)
        ]

    def detect(self, image: Image.Image) -> list[Box]:
        """Face boxes ``(x, y, w, h)`` in ``image``'s pixel coordinates."""
        pixels, scale = _downscale(image)
        return _rescale(self.verified(pixels, self.candidates(pixels)), scale)


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


def make_face_detector(backend: str = "auto", config: FilterConfig | None = None) -> FaceDetector:
    """The detector named by ``FilterConfig.face_backend``, with the OpenCV settings of ``config``."""
    if backend == "opencv-haar" or (backend == "auto" and opencv_haar_available()):
        config = config or FilterConfig()
        return OpenCVHaarDetector(
            min_neighbors=config.face_min_neighbors,
            min_size=config.face_min_size,
            cascade=config.face_cascade,
            min_eyes=config.face_min_eyes,
            min_skin_share=config.face_min_skin_share,
        )
    if backend in ("auto", "skimage-lbp"):
        return SkimageLBPDetector()
    raise ValueError(f"filter.face_backend={backend!r}: use auto, opencv-haar or skimage-lbp")


def filter_faces(
    docs: list[WebDocument], config: FilterConfig, detector: FaceDetector | None = None
) -> list[WebDocument]:
    """Drop images with at least ``config.max_faces`` faces (reason ``faces``); 0 disables the filter."""
    if config.max_faces == 0:
        return docs
    detector = detector or make_face_detector(config.face_backend, config)
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
