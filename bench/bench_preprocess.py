"""Image preprocessing: open_clip's transform picture by picture (what ``torch.stack([transform(im) ...])`` does,
the baseline) against ``flamingo.model.vision.apply_transform``, which converts and normalises the batch at once.

    .venv/bin/python bench/bench_preprocess.py            # 32 px (the quickstart) and 224 px (CLIP ViT-L/14)

Pictures are random RGB PNGs decoded once before timing (decoding is the same for both). Checks that the two
give identical pixels, prints a table and writes ``bench/results/preprocess.json``.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_log


def pictures(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
        image = Image.open(io.BytesIO(buffer.getvalue()))
        image.load()
        out.append(image)
    return out


def per_picture_seconds(fn, count: int, repeats: int) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats / count


def main() -> None:
    import open_clip

    from flamingo.model.vision import OPENAI_MEAN, OPENAI_STD, apply_transform

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=160, help="pictures per batch (a quickstart step: ~150)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "preprocess.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for size, source in ((32, 32), (224, 224), (224, 320)):
        transform = open_clip.image_transform(size, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD)
        batch = pictures(args.count if size == 32 else max(8, args.count // 4), source)
        base = torch.stack([transform(im) for im in batch])
        ours = apply_transform(transform, batch)
        seconds = {
            "per_picture": per_picture_seconds(
                lambda b=batch, t=transform: torch.stack([t(im) for im in b]), len(batch), args.repeats
            ),
            "batched": per_picture_seconds(
                lambda b=batch, t=transform: apply_transform(t, b), len(batch), args.repeats
            ),
        }
        rows.append(
            {
                "size": size,
                "source_size": source,
                "pictures": len(batch),
                "per_picture_us": seconds["per_picture"] * 1e6,
                "batched_us": seconds["batched"] * 1e6,
                "speedup": seconds["per_picture"] / seconds["batched"],
                "identical": bool(torch.equal(base, ours)),
            }
        )
    print(
        "| output size | source pictures | per picture (baseline) | batched (ours) | speed-up | identical |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']} px | {r['pictures']} x {r['source_size']} px | {r['per_picture_us']:.0f} us "
            f"| {r['batched_us']:.0f} us | {r['speedup']:.2f}x | {'yes' if r['identical'] else 'NO'} |"
        )
    results_log.record(args.out, {"threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
