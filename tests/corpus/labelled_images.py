"""Labelled image sets for measuring the builder's face filter and pHash dedup, built offline and reproducibly.

Everything comes from images that installed packages ship (scikit-image's sample data and its LFW subset,
matplotlib's and scikit-learn's sample photographs) or that is drawn here (plots, network diagrams, a
desktop-like screenshot, text pages), so no image is stored in the repository and no download is needed.

``face_set()``: ``(name, group, image, has_face)`` items.

- faces: the astronaut (Eileen Collins), Grace Hopper and the cameraman, each cropped, scaled and
  JPEG-recompressed several ways; and LFW face crops (scikit-image's ``lfw_subset``) pasted at portrait scale
  into backgrounds cut from face-free photographs.
- photos without faces: scikit-image's coffee, cat, rocket, coins, moon, horse, retina, Hubble field, ...;
  scikit-learn's china and flower; the LFW subset's non-face patches pasted the same way as the faces.
- graphics: matplotlib plots, network diagrams of circles and lines, desktop-like screenshots, text pages and
  the Shepp-Logan phantom: the kinds of documentation images a face detector mistakes for faces.

``dedup_pairs()``: ``(name, group, a, b, same)`` pairs. Same image: resized, recompressed, slightly cropped or
brightened copies. Different images of one kind: plots of different data, diagrams that differ in one label,
gallery thumbnails of different photographs, text pages with different words.
"""

from __future__ import annotations

import functools
import io
import random
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont


class FaceItem(NamedTuple):
    """One labelled image for the face filter."""

    name: str
    group: str
    image: Image.Image
    has_face: bool


class DedupPair(NamedTuple):
    """Two images and whether the dedup stage should call them the same."""

    name: str
    group: str
    a: Image.Image
    b: Image.Image
    same: bool


def _sk(name: str) -> Image.Image:
    from skimage import data

    pixels = getattr(data, name)()
    pixels = pixels[0] if isinstance(pixels, tuple) else pixels  # the stereo pair: its left view
    if pixels.dtype != np.uint8:  # boolean masks and float images in [0, 1]
        pixels = (np.asarray(pixels, dtype=np.float64) * 255).round().astype(np.uint8)
    return Image.fromarray(pixels).convert("RGB")


def _mpl_sample(name: str) -> Image.Image:
    import matplotlib

    return Image.open(Path(matplotlib.get_data_path()) / "sample_data" / name).convert("RGB")


def _sklearn_sample(name: str) -> Image.Image:
    import sklearn.datasets

    return Image.open(Path(sklearn.datasets.__file__).parent / "images" / name).convert("RGB")


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """``image`` after a JPEG round trip at ``quality``."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _scale(image: Image.Image, factor: float) -> Image.Image:
    return image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))))


# Face photographs and where the face is (x0, y0, x1, y1), so augmentations keep it in the frame.
_PORTRAITS: dict[str, tuple[Callable[[], Image.Image], tuple[int, int, int, int]]] = {
    "astronaut": (lambda: _sk("astronaut"), (170, 60, 290, 170)),
    "grace_hopper": (lambda: _mpl_sample("grace_hopper.jpg"), (150, 100, 400, 400)),
    "cameraman": (lambda: _sk("camera"), (220, 60, 310, 170)),
}


def _portrait_variants(name: str, rng: random.Random) -> list[tuple[str, Image.Image]]:
    load, (x0, y0, x1, y1) = _PORTRAITS[name]
    base = load()
    out = [(f"{name}", base)]
    for k in range(5):
        # A crop that keeps the face with a random margin, then a scale and a recompression.
        margin = rng.uniform(0.4, 1.5) * (x1 - x0)
        box = (
            max(0, round(x0 - margin * rng.uniform(0.5, 1.5))),
            max(0, round(y0 - margin * rng.uniform(0.5, 1.0))),
            min(base.width, round(x1 + margin * rng.uniform(0.5, 1.5))),
            min(base.height, round(y1 + margin * rng.uniform(0.8, 2.0))),
        )
        crop = base.crop(box)
        crop = _scale(crop, rng.uniform(0.6, 1.4) * 300 / max(crop.size))
        out.append((f"{name}-aug{k}", jpeg(crop, rng.choice([40, 60, 85]))))
    return out


_BACKGROUNDS = ["coffee", "chelsea", "rocket", "horse", "brick", "grass", "gravel", "stereo_motorcycle"]


@functools.cache
def _lfw() -> np.ndarray:
    from skimage import data

    return data.lfw_subset()  # (200, 25, 25) grey in [0, 1]: 100 faces, then 100 non-faces


def _pasted(patch: np.ndarray, rng: random.Random, background: Image.Image) -> Image.Image:
    """A 25x25 grey patch scaled to 70-110 px (with 30% context blurred in) inside a 256x256 background."""
    side = rng.randint(70, 110)
    tile = Image.fromarray((patch * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
    left, top = rng.randint(0, background.width - 256), rng.randint(0, background.height - 256)
    canvas = background.crop((left, top, left + 256, top + 256)).convert("L").convert("RGB")
    canvas.paste(tile.convert("RGB"), (rng.randint(10, 256 - side - 10), rng.randint(10, 256 - side - 10)))
    return jpeg(canvas, 85)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def network_diagram(seed: int, label: str | None = None, size: int = 400) -> Image.Image:
    """Circles (hosts) joined by lines, labelled; small circles inside big ones resemble eyes."""
    rng = random.Random(seed)
    im = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(im)
    nodes = [(rng.randint(40, size - 40), rng.randint(40, size - 40)) for _ in range(rng.randint(4, 8))]
    for a, b in zip(nodes, nodes[1:] + nodes[:1]):
        draw.line([a, b], fill="black", width=2)
    for i, (x, y) in enumerate(nodes):
        r = rng.randint(18, 34)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=rng.choice(["#dde", "#eed", "#ded"]), outline="black")
        for dx in (-r // 3, r // 3):  # two port markers per host
            draw.ellipse((x + dx - 3, y - r // 3 - 3, x + dx + 3, y - r // 3 + 3), fill="black")
        draw.text((x - r // 2, y + 2), label if (label and i == 0) else f"h{i}", fill="black", font=_font(12))
    return im


def screenshot(seed: int, size: tuple[int, int] = (640, 400)) -> Image.Image:
    """A desktop-like screenshot: a wallpaper, icons with captions, windows with title bars and text."""
    rng = random.Random(seed)
    w, h = size
    im = Image.new("RGB", size, rng.choice(["#3a6ea5", "#2d4059", "#4b7f52"]))
    draw = ImageDraw.Draw(im)
    for i in range(6):  # desktop icons down the left side
        y = 10 + 60 * i
        draw.rounded_rectangle((12, y, 44, y + 32), 6, fill=rng.choice(["#f4d35e", "#ee964b", "#faf0ca"]))
        draw.ellipse((20, y + 8, 27, y + 15), fill="black")
        draw.ellipse((30, y + 8, 37, y + 15), fill="black")
        draw.text((8, y + 36), f"file{i}", fill="white", font=_font(10))
    for _ in range(rng.randint(1, 3)):
        x0, y0 = rng.randint(70, w // 2), rng.randint(10, h // 2)
        x1, y1 = min(w - 5, x0 + rng.randint(200, 380)), min(h - 25, y0 + rng.randint(120, 240))
        draw.rectangle((x0, y0, x1, y1), fill="#f0f0f0", outline="black")
        draw.rectangle((x0, y0, x1, y0 + 18), fill="#1f4e79")
        for j, colour in enumerate(["#e81123", "#ffb900", "#107c10"]):
            draw.ellipse((x1 - 18 - 14 * j, y0 + 4, x1 - 8 - 14 * j, y0 + 14), fill=colour)
        for line in range(y0 + 26, y1 - 10, 14):
            draw.text((x0 + 8, line), " ".join(_words(rng, 5)), fill="black", font=_font(11))
    draw.rectangle((0, h - 22, w, h), fill="#202020")  # task bar
    draw.text((w - 60, h - 18), f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}", fill="white")
    return im


_VOCAB = [
    "the",
    "of",
    "data",
    "model",
    "image",
    "layer",
    "train",
    "shard",
    "index",
    "batch",
    "tensor",
    "vision",
    "text",
    "token",
    "page",
    "build",
]


def _words(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(_VOCAB) for _ in range(n)]


def text_page(seed: int, size: tuple[int, int] = (420, 560)) -> Image.Image:
    """A page of black text on white."""
    rng = random.Random(seed)
    im = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(im)
    draw.text((20, 16), " ".join(_words(rng, 3)).title(), fill="black", font=_font(22))
    for y in range(60, size[1] - 20, 18):
        draw.text((20, y), " ".join(_words(rng, 7)), fill="black", font=_font(14))
    return im


def plot(seed: int, kind: str, size: tuple[int, int] = (480, 360)) -> Image.Image:
    """A matplotlib figure (line, bar, scatter, hist, pie or image) of random data from ``seed``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(size[0] / 80, size[1] / 80), dpi=80)
    if kind == "line":
        x = np.linspace(0, 10, 100)
        for k in range(rng.integers(1, 4)):
            ax.plot(x, np.sin(x * rng.uniform(0.3, 2) + k) + rng.normal(0, 0.1, 100), label=f"run {k}")
        ax.legend()
    elif kind == "bar":
        ax.bar([f"c{i}" for i in range(6)], rng.uniform(1, 10, 6))
    elif kind == "scatter":
        ax.scatter(rng.normal(size=80), rng.normal(size=80), c=rng.uniform(size=80))
    elif kind == "hist":
        ax.hist(rng.normal(rng.uniform(-1, 1), 1, 500), bins=30)
    elif kind == "pie":
        ax.pie(rng.uniform(1, 5, 4), labels=["a", "b", "c", "d"])
    else:
        ax.imshow(rng.normal(size=(20, 20)).cumsum(0), cmap="viridis")
    ax.set_title(f"figure {seed}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


_PLOT_KINDS = ["line", "bar", "scatter", "hist", "pie", "image"]
_NO_FACE_PHOTOS = [
    "coffee",
    "chelsea",
    "rocket",
    "coins",
    "moon",
    "horse",
    "retina",
    "hubble_deep_field",
    "immunohistochemistry",
    "stereo_motorcycle",
    "brick",
    "grass",
    "gravel",
    "cell",
    "clock",
    "logo",
    "colorwheel",
    "shepp_logan_phantom",
]


@functools.cache
def face_set() -> tuple[FaceItem, ...]:
    """The labelled face set (fixed seeds; the same images on every call and machine)."""
    rng = random.Random(1234)
    items: list[FaceItem] = []
    for name in _PORTRAITS:
        items += [FaceItem(n, "portrait", im, True) for n, im in _portrait_variants(name, rng)]
    backgrounds = [_sk(b) for b in _BACKGROUNDS]
    lfw = _lfw()
    for i in range(0, 100, 2):  # every other LFW face: 50 people
        items.append(
            FaceItem(f"lfw-face-{i}", "lfw-face", _pasted(lfw[i], rng, rng.choice(backgrounds)), True)
        )
    for i in range(100, 200, 2):
        items.append(
            FaceItem(f"lfw-nonface-{i}", "lfw-nonface", _pasted(lfw[i], rng, rng.choice(backgrounds)), False)
        )
    for name in _NO_FACE_PHOTOS:
        image = _sk(name)
        items.append(FaceItem(name, "photo", image, False))
        items.append(FaceItem(f"{name}-small", "photo", jpeg(_scale(image, 0.6), 70), False))
    for name in ("china.jpg", "flower.jpg"):
        items.append(FaceItem(name, "photo", _sklearn_sample(name), False))
    items.append(FaceItem("page", "graphic", _sk("page"), False))
    items.append(FaceItem("text", "graphic", _sk("text"), False))
    for seed in range(12):
        items.append(
            FaceItem(
                f"plot-{_PLOT_KINDS[seed % 6]}-{seed}", "graphic", plot(seed, _PLOT_KINDS[seed % 6]), False
            )
        )
    for seed in range(8):
        items.append(FaceItem(f"network-{seed}", "graphic", network_diagram(seed), False))
        items.append(FaceItem(f"screenshot-{seed}", "graphic", screenshot(seed), False))
        items.append(FaceItem(f"textpage-{seed}", "graphic", text_page(seed), False))
    return tuple(items)


def _crop_edges(image: Image.Image, share: float) -> Image.Image:
    dx, dy = round(image.width * share), round(image.height * share)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


def _brighter(image: Image.Image, factor: float) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32) * factor
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


@functools.cache
def dedup_pairs() -> tuple[DedupPair, ...]:
    """The labelled pHash pairs (fixed seeds)."""
    originals: list[tuple[str, Image.Image]] = [(n, _sk(n)) for n in _NO_FACE_PHOTOS[:10]]
    originals += [("astronaut", _sk("astronaut")), ("china", _sklearn_sample("china.jpg"))]
    originals += [(f"plot-{k}", plot(100 + i, k)) for i, k in enumerate(_PLOT_KINDS)]
    originals += [(f"network-{s}", network_diagram(200 + s)) for s in range(3)]
    originals += [(f"screenshot-{s}", screenshot(300 + s)) for s in range(2)]
    originals += [(f"textpage-{s}", text_page(400 + s)) for s in range(2)]
    copies: list[tuple[str, Callable[[Image.Image], Image.Image]]] = [
        ("half-size", lambda im: _scale(im, 0.5)),
        ("thumbnail", lambda im: _scale(im, 160 / max(im.size))),
        ("jpeg-q30", lambda im: jpeg(im, 30)),
        ("jpeg-q75-resized", lambda im: jpeg(_scale(im, 0.8), 75)),
        ("crop-2%", lambda im: _crop_edges(im, 0.02)),
        ("crop-5%", lambda im: _crop_edges(im, 0.05)),
        ("brighter", lambda im: _brighter(im, 1.15)),
    ]
    pairs = [
        DedupPair(f"{name}/{how}", name.split("-")[0], im, change(im), True)
        for name, im in originals
        for how, change in copies
    ]
    for i, kind in enumerate(_PLOT_KINDS):  # the same kind of plot, other data
        for j in range(3):
            pairs.append(
                DedupPair(
                    f"plot-{kind}/data-{j}", "plot", plot(100 + i, kind), plot(500 + 10 * i + j, kind), False
                )
            )
    for s in range(3):  # the same diagram with one host renamed
        pairs.append(
            DedupPair(
                f"network-{s}/label",
                "network",
                network_diagram(200 + s),
                network_diagram(200 + s, "db-2"),
                False,
            )
        )
        pairs.append(
            DedupPair(
                f"network-{s}/other", "network", network_diagram(200 + s), network_diagram(600 + s), False
            )
        )
    for s in range(2):
        pairs.append(
            DedupPair(f"screenshot-{s}/other", "screenshot", screenshot(300 + s), screenshot(700 + s), False)
        )
        pairs.append(
            DedupPair(f"textpage-{s}/other", "textpage", text_page(400 + s), text_page(800 + s), False)
        )
    thumbs = [_scale(_sk(n), 120 / max(_sk(n).size)) for n in _NO_FACE_PHOTOS[:8]]  # a gallery of thumbnails
    for i in range(len(thumbs)):
        for j in range(i + 1, len(thumbs)):
            pairs.append(DedupPair(f"thumb-{i}-{j}", "thumbnail", thumbs[i], thumbs[j], False))
    return tuple(pairs)
