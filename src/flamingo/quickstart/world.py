"""The quickstart's world: small procedurally drawn pictures of coloured shapes, and words about them.

Everything is a pure function of a seed. 8 shapes x 8 colours give 64 shape-colour classes; 8 of them (one per
shape and one per colour) are held out of every training stage, so that evaluation can ask about
combinations the model has never seen. Invented names (3-5 letters) come in two disjoint pools: ``train``
names appear in training pages, ``heldout`` names never appear in any multimodal training data.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 32
SUPERSAMPLE = 4  # shapes are drawn 4x larger and downsampled, for smooth edges
SHAPES = ("circle", "square", "triangle", "diamond", "hexagon", "star", "cross", "crescent")
PLURALS = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}
COLOURS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 230, 40),
    "green": (40, 190, 60),
    "cyan": (40, 210, 220),
    "blue": (50, 80, 235),
    "purple": (160, 60, 215),
    "white": (235, 235, 235),
}
COLOUR_NAMES = tuple(COLOURS)
COUNT_WORDS = ("one", "two", "three")
# One combination per shape, each colour once: shape i with colour (3i + 1) mod 8.
HELDOUT_COMBOS = frozenset((SHAPES[i], COLOUR_NAMES[(3 * i + 1) % 8]) for i in range(8))
CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"


@dataclass(frozen=True)
class Scene:
    """What one picture shows: ``count`` objects of one shape and colour."""

    shape: str
    colour: str
    count: int = 1

    @property
    def combo(self) -> tuple[str, str]:
        return (self.shape, self.colour)

    def caption(self) -> str:
        """``a red triangle`` / ``two red triangles``."""
        if self.count == 1:
            return f"a {self.colour} {self.shape}"
        return f"{COUNT_WORDS[self.count - 1]} {self.colour} {PLURALS[self.shape]}"


def training_combos() -> list[tuple[str, str]]:
    """The 56 shape-colour classes that training may use."""
    return [(s, c) for s in SHAPES for c in COLOUR_NAMES if (s, c) not in HELDOUT_COMBOS]


def random_scene(rng: random.Random, heldout: bool = False, max_count: int = 3) -> Scene:
    """A scene of a training class (or of a held-out class when ``heldout``), 1..max_count objects."""
    combos = sorted(HELDOUT_COMBOS) if heldout else training_combos()
    shape, colour = rng.choice(combos)
    return Scene(shape, colour, rng.randint(1, max_count))


# ------------------------------------------------------------------------------------------ drawing


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape of radius ``r`` centred at (cx, cy), rotated by ``angle`` radians."""
    if shape == "square":
        points = [(math.pi / 4 + k * math.pi / 2, r) for k in range(4)]
    elif shape == "triangle":
        points = [(-math.pi / 2 + k * 2 * math.pi / 3, r) for k in range(3)]
    elif shape == "diamond":
        points = [(k * math.pi / 2, r if k % 2 else 0.65 * r) for k in range(4)]
    elif shape == "hexagon":
        points = [(k * math.pi / 3, r) for k in range(6)]
    elif shape == "star":
        points = [(-math.pi / 2 + k * math.pi / 5, r if k % 2 == 0 else 0.45 * r) for k in range(10)]
    elif shape == "cross":
        a, w = r, 0.36 * r
        xy = [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w)]
        xy += [(-a, -w), (-w, -w)]
        points = [(math.atan2(y, x), math.hypot(x, y)) for x, y in xy]
    else:
        raise ValueError(f"unknown polygon shape {shape!r}")
    return [(cx + rad * math.cos(t + angle), cy + rad * math.sin(t + angle)) for t, rad in points]


def _draw_mask(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "crescent":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ox, oy = 0.55 * r * math.cos(angle), 0.55 * r * math.sin(angle)
        draw.ellipse([cx + ox - 0.85 * r, cy + oy - 0.85 * r, cx + ox + 0.85 * r, cy + oy + 0.85 * r], fill=0)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=255)


def _centres(rng: random.Random, count: int, radius: float) -> list[tuple[float, float]]:
    """Object centres (in final pixels) that do not overlap: one object anywhere, several in separate cells."""
    if count == 1:
        margin = radius + 1
        return [(rng.uniform(margin, IMAGE_SIZE - margin), rng.uniform(margin, IMAGE_SIZE - margin))]
    cells = [(8, 8), (24, 8), (8, 24), (24, 24)]
    rng.shuffle(cells)
    jitter = max(0.0, 8 - radius - 1)
    return [(x + rng.uniform(-jitter, jitter), y + rng.uniform(-jitter, jitter)) for x, y in cells[:count]]


def draw_scene(scene: Scene, rng: random.Random) -> Image.Image:
    """A 32x32 RGB picture: dark varied background, jittered colour, random size/position/rotation, noise."""
    size = IMAGE_SIZE * SUPERSAMPLE
    radius = rng.uniform(8.0, 12.5) if scene.count == 1 else rng.uniform(5.0, 6.8)
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for cx, cy in _centres(rng, scene.count, radius):
        angle = rng.uniform(-0.35, 0.35)
        _draw_mask(draw, scene.shape, cx * SUPERSAMPLE, cy * SUPERSAMPLE, radius * SUPERSAMPLE, angle)
    alpha = (
        np.asarray(mask.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS), dtype=np.float32)[..., None] / 255
    )
    base = np.array([rng.uniform(0, 60) for _ in range(3)], dtype=np.float32)
    gradient = np.linspace(0, rng.uniform(-25, 25), IMAGE_SIZE, dtype=np.float32)
    background = np.clip(base[None, None, :] + gradient[:, None, None], 0, 70)
    colour = np.array(COLOURS[scene.colour], dtype=np.float32) + [rng.uniform(-18, 18) for _ in range(3)]
    pixels = alpha * np.clip(colour, 0, 255) + (1 - alpha) * background
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8), "RGB")


def blank_image() -> Image.Image:
    """The picture used when an ablation blanks a demonstration image: uniform dark grey."""
    return Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (30, 30, 30))


# ------------------------------------------------------------------------------------------ names


def invented_names(seed: int = 0, train: int = 400, heldout: int = 100) -> tuple[list[str], list[str]]:
    """Two disjoint pools of pronounceable 3-5 letter names (``train``, ``heldout``), fixed by ``seed``."""
    rng = random.Random(f"names-{seed}")
    reserved = set(vocabulary_words(pet_quiz=True))
    names: set[str] = set()
    patterns = ("cvc", "cvcc", "cvcv", "cvcvc", "vcvc")
    while len(names) < train + heldout:
        word = "".join(rng.choice(CONSONANTS if p == "c" else VOWELS) for p in rng.choice(patterns))
        if word not in reserved:
            names.add(word)
    ordered = sorted(names)
    rng.shuffle(ordered)
    return sorted(ordered[:train]), sorted(ordered[train:])


def vocabulary_words(pet_quiz: bool = False) -> list[str]:
    """Every word of the world's sentences (page templates, questions, task prompts), lower case.

    ``pet_quiz``: the world also asks for pets' names (:func:`flamingo.quickstart.text.name_question`).
    """
    from flamingo.quickstart.text import NAME_QUESTION_WORDS, TEMPLATE_WORDS

    words = set(TEMPLATE_WORDS) | set(SHAPES) | set(PLURALS.values()) | set(COLOUR_NAMES)
    if pet_quiz:
        words |= set(NAME_QUESTION_WORDS)
    return sorted(words | set(COUNT_WORDS) | {"a", "an", "the"})
