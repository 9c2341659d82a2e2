"""Property: whatever JSON a shard holds, neither the trainer's loader nor `flamingo data validate` raises, and
both count the same samples as skipped, under the same reasons.

Each example writes real tar shards (our interleaved documents, MMC4 documents, image-text pairs and
instruction conversations): a usable sample first (so the loader's epoch ends), then samples whose JSON is
either any JSON value at all or a valid sample with some fields replaced by any JSON value or removed, and
whose other members are sometimes JSON too.
"""

from __future__ import annotations

import copy
import io
import json
import random
import tempfile
from pathlib import Path
from typing import Any

from data_support import flamingo_data, loader_source
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from flamingo.data.loader import sample_settings
from flamingo.data.mmc4 import document_to_mmc4
from flamingo.data.sft import SFT_FORMAT
from flamingo.data.synthetic import synthetic_document
from flamingo.data.usable import REASONS
from flamingo.data.validate import validate_shards

FIELD_NAMES = [
    *("format", "id", "url", "source", "text_list", "image_info", "similarity_matrix", "member"),
    *("matched_text_index", "matched_sim", "width", "height", "sha256", "image_name", "image_base64"),
    *("caption", "images", "messages", "role", "content", "type", "text", "image"),
]
ODD_TEXT = ["<image>", "a <image> b", "<|endofchunk|>", "0.png", "1.jpg", "x" * 300, "\x00", "é\u202e𝕏", ""]
ODD_NUMBERS = [10**400, -(10**30), 2**63, 1e308, float("inf"), float("nan"), -0.0, 0.3]

leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from(ODD_NUMBERS)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(ODD_TEXT + FIELD_NAMES + [SFT_FORMAT, "flamingo-interleaved/1"])
)
json_values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=12,
)


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buffer, format="PNG")
    return buffer.getvalue()


RED, BLUE = _png((220, 20, 20)), _png((20, 20, 220))


def _base_samples() -> dict[str, tuple[dict[str, Any], dict[str, bytes]]]:
    """A valid JSON and its other members, per kind of shard (``{suffix: bytes}``)."""
    document = synthetic_document(random.Random(0), "doc", num_sentences=3, num_images=2, image_size=4)
    document.images[0].data, document.images[1].data = RED, BLUE
    for info, image in zip(document.image_info, document.images):
        info.sha256 = image.sha256()
    ours = document.to_dict()
    conversation = {
        "format": SFT_FORMAT,
        "id": "conv",
        "images": ["0.png"],
        "messages": [
            {"role": "user", "content": [{"type": "image", "image": 0}, {"type": "text", "text": "What?"}]},
            {"role": "assistant", "content": "A red circle."},
        ],
    }
    pair = {"caption": "a red circle", "url": "https://example.com/p.png", "width": 4, "height": 4}
    return {
        "interleaved": (ours, {"0.png": RED, "1.png": BLUE}),
        "mmc4": (document_to_mmc4(document, embed_images=True), {}),
        "pairs": (pair, {"png": RED, "txt": b"a red circle"}),
        "sft": (conversation, {"0.png": RED}),
    }


BASES = _base_samples()
LOADER_KIND = {"interleaved": "interleaved", "mmc4": "interleaved", "pairs": "pairs", "sft": "sft"}


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indices) to a value inside ``value``, the root excluded."""
    children = (
        value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    )
    found = []
    for key, child in children:
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key)))
    return found


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    """``base`` with one to three values replaced by any JSON value, or removed."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(data)
        if not paths:
            break
        *parent_path, last = draw(st.sampled_from(paths))
        parent = data
        for part in parent_path:
            parent = parent[part]
        if draw(st.booleans()):
            parent[last] = draw(json_values)
        else:
            del parent[last]
    return data


@st.composite
def raw_sample(draw: st.DrawFn, kind: str) -> dict[str, bytes]:
    """One sample's members: a mutated (or arbitrary) JSON, its other members sometimes JSON as well."""
    base, others = BASES[kind]
    data = draw(mutated(base) | json_values)
    members = {"json": json.dumps(data, ensure_ascii=draw(st.booleans())).encode("utf-8")}
    for suffix, content in others.items():
        choice = draw(st.sampled_from(["keep", "keep", "json", "drop"]))
        if choice == "keep":
            members[suffix] = content
        elif choice == "json":
            members[suffix] = json.dumps(draw(json_values)).encode()
    if kind == "pairs" and "txt" not in members and draw(st.booleans()):
        del members["json"]  # a pair may come without JSON (then without any caption)
    return members


def _write_shard(write_tar, path: Path, kind: str, samples: list[dict[str, bytes]]) -> Path:
    base, others = BASES[kind]
    good = {"json": json.dumps(base).encode(), **others}
    members = [
        (f"k{index}.{suffix}", content)
        for index, sample in enumerate([good, *samples])
        for suffix, content in sample.items()
    ]
    return write_tar(path, members)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
def test_loader_and_validate_count_the_same_skips_on_any_json(
    data, epoch_counts, tiny_tokenizer, write_tar
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        for kind in BASES:
            samples = data.draw(st.lists(raw_sample(kind), min_size=1, max_size=3), label=kind)
            path = _write_shard(write_tar, Path(folder) / f"{kind}.tar", kind, samples)
            loader_kind = LOADER_KIND[kind]
            read, left_out = epoch_counts(loader_kind, path, max_tokens=16)
            settings_ = sample_settings(loader_source(loader_kind, path, max_tokens=16), tiny_tokenizer)
            report = validate_shards(path, settings=settings_)
            assert report.skipped == read, kind
            assert report.left_out == left_out, kind
            assert report.samples == len([s for s in samples if s]) + 1 and report.usable >= 1
            # The command line without a training config checks the structure: the same skips but for
            # the truncation, which needs the tokenizer.
            out = Path(folder) / f"{kind}.json"
            code = flamingo_data("validate", "--kind", loader_kind, "--json", str(out), str(path))
            written = json.loads(out.read_text())
            structural = {k: v for k, v in read.items() if k != "image_past_truncation"}
            assert written["skipped"] == structural and code == (0 if written["ok"] else 1), kind
            for reason in read:
                assert reason.split(":")[0] in REASONS and reason != "bad_sample", reason
