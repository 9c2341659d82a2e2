"""Example few-shot prompts for the web demo and ``GET /v1/examples``, with images drawn by Pillow at startup
(nothing downloaded)."""

from __future__ import annotations

import base64
import io
import math
from typing import Any

from PIL import Image, ImageDraw

_COLOURS = {
    "red": (220, 50, 47),
    "blue": (38, 139, 210),
    "green": (113, 178, 58),
    "yellow": (240, 190, 30),
    "purple": (148, 90, 200),
}


def shape_image(shape: str, colour: str, count: int = 1, size: int = 96) -> Image.Image:
    """``count`` shapes (circle, square, triangle or star) of a named colour on a light background."""
    image = Image.new("RGB", (size, size), (245, 243, 238))
    draw = ImageDraw.Draw(image)
    fill = _COLOURS[colour]
    cell = size // max(count, 1)
    for k in range(count):
        cx, cy, r = cell * k + cell / 2, size / 2, cell * 0.35
        if shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif shape == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
        else:  # five-pointed star
            points = [
                (
                    cx + (r if i % 2 == 0 else r / 2.5) * math.sin(i * math.pi / 5),
                    cy - (r if i % 2 == 0 else r / 2.5) * math.cos(i * math.pi / 5),
                )
                for i in range(10)
            ]
            draw.polygon(points, fill=fill)
    return image


def data_url(image: Image.Image) -> str:
    """A PNG ``data:`` URL, the form ``/v1/generate``'s ``base64`` field accepts."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _shot(shape: str, colour: str, text: str, count: int = 1) -> dict[str, Any]:
    return {"image": shape_image(shape, colour, count), "text": text}


def example_specs() -> list[dict[str, Any]]:
    """Few-shot prompts in the benchmark formats: demonstrations and a query (each a PIL image and its text),
    and decoding settings (``mode`` greedy, beam or sample)."""
    return [
        {
            "title": "Captioning, 2-shot",
            "description": "Two captioned shapes, then a new one to caption.",
            "shots": [
                _shot("circle", "red", "Output:a red circle"),
                _shot("square", "blue", "Output:a blue square"),
            ],
            "query": _shot("triangle", "green", "Output:"),
            "settings": {"mode": "greedy", "max_new_tokens": 20},
        },
        {
            "title": "Visual question answering",
            "description": "Colour questions in the VQAv2 prompt format.",
            "shots": [
                _shot("star", "yellow", "Question:What colour is the shape? Short answer:yellow"),
                _shot("circle", "purple", "Question:What colour is the shape? Short answer:purple"),
            ],
            "query": _shot("square", "red", "Question:What colour is the shape? Short answer:"),
            "settings": {"mode": "beam", "num_beams": 3, "max_new_tokens": 5},
        },
        {
            "title": "Counting, sampled",
            "description": "How many shapes? Sampling at temperature 0.7.",
            "shots": [
                _shot("circle", "blue", "Output:two blue circles", count=2),
                _shot("triangle", "red", "Output:three red triangles", count=3),
            ],
            "query": _shot("star", "green", "Output:", count=2),
            "settings": {"mode": "sample", "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 20},
        },
    ]


def example_prompts() -> list[dict[str, Any]]:
    """The examples for ``GET /v1/examples``: each image as a PNG data URL."""
    specs = example_specs()
    for spec in specs:
        for part in [*spec["shots"], spec["query"]]:
            part["image"] = data_url(part["image"])
    return specs
