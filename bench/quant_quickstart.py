"""The quickstart's trained model with full-precision, int8 and int4 backbones: 4-shot novel-label open accuracy
on each evaluation seed (the report's "4-shot" row: the same episodes), and the LM's stored bytes.

    python bench/quant_quickstart.py --run runs/quickstart --out /tmp/quant-eval [--episodes 300]

Writes ``<out>/quant_quickstart.json`` and prints a Markdown table (docs/model.md, "Low-bit backbones").
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default="runs/quickstart", help="the quickstart's output folder")
    parser.add_argument("--out", required=True, help="folder for quant_quickstart.json")
    parser.add_argument("--episodes", type=int, default=300, help="episodes per seed (the quickstart's 300)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--modes", default="fp32,int8,int4")
    args = parser.parse_args()

    from flamingo.model.flamingo import Flamingo
    from flamingo.model.quantize import stored_bytes
    from flamingo.processing import FlamingoProcessor
    from flamingo.quickstart.episodes import make_episode, score_episodes

    run = Path(args.run)
    names = json.loads((run / "world" / "names.json").read_text())["heldout"]
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for mode in args.modes.split(","):
        started = time.perf_counter()
        model = Flamingo.from_pretrained(str(run / "model"), quantization=None if mode == "fp32" else mode)
        processor = FlamingoProcessor.from_model(model)
        scores = {}
        with torch.no_grad():
            for seed in seeds:
                rng = random.Random(f"episodes-{seed}-4")  # the quickstart's own 4-shot episodes of this seed
                sample = [make_episode(rng, 4, names) for _ in range(args.episodes)]
                scores[seed] = score_episodes(model, processor, sample)["open_accuracy"]
        rows.append(
            {
                "mode": mode,
                "open_accuracy": scores,
                "lm_bytes": stored_bytes(model.lm),
                "model_bytes": stored_bytes(model),
                "seconds": time.perf_counter() - started,
            }
        )
        print(mode, scores, f"{time.perf_counter() - started:.0f} s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"cpu": platform.processor() or platform.machine(), "episodes": args.episodes, "rows": rows}
    (out / "quant_quickstart.json").write_text(json.dumps(record, indent=2) + "\n")
    base = rows[0]["open_accuracy"]
    print("\n| backbones | " + " | ".join(f"seed {s}" for s in seeds) + " | LM bytes |")
    print("|---|" + "---|" * (len(seeds) + 1))
    for row in rows:
        cells = []
        for s in seeds:
            value = row["open_accuracy"][s]
            delta = "" if row is rows[0] else f" ({value - base[s]:+.3f})"
            cells.append(f"{value:.3f}{delta}")
        print(f"| {row['mode']} | " + " | ".join(cells) + f" | {row['lm_bytes']:,} |")


if __name__ == "__main__":
    main()
