"""Loading an OpenFlamingo-3B-shaped model in bf16: peak memory and seconds, ours vs the reference, in one run.

    .venv/bin/python bench/bench_load.py --shape small   # a scaled-down model, about a minute
    .venv/bin/python bench/bench_load.py --shape full    # MPT-1B + ViT-L/14 + the 3B adapters; ~15 GB for the reference

The model (random weights) is saved once in a work folder, in bf16: ours as ``save_pretrained(save_backbones=True)``
writes it, the reference as an LM folder plus its ``checkpoint.pt`` (the adapters and the resized embedding, in
OpenFlamingo's key layout). Each load then runs in its own process, which reports its peak resident memory
(``VmHWM``), its resident memory before loading (after the imports) and the seconds the load took:

- ours: ``Flamingo.from_pretrained(dir, dtype=torch.bfloat16)`` (built on the meta device, each tensor read once);
- reference: ``open_flamingo.create_model_and_transforms(...)`` (the model built and initialised in float32),
  ``model.load_state_dict(torch.load("checkpoint.pt"), strict=False)``, then ``model.to(torch.bfloat16)``.

Both processes import the modules the loads need before measuring, and touch every page of every weight after
loading, so that weights a memory map has not paged in yet are counted. The ratio compares the memory the load added (peak minus the resident memory before it) with
the model's bf16 weight bytes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_log

SHAPES = {
    # OpenFlamingo-3B-vitl-mpt1b: MPT-1B (d_model 2048, 24 layers, 16 heads, vocabulary 50432), CLIP ViT-L/14,
    # Perceiver of 6 layers and 64 latents over 1024-wide features, cross-attention before every layer.
    "full": {"d_model": 2048, "layers": 24, "heads": 16, "vocab": 50432, "vision": "ViT-L-14", "vis": None},
    # The same proportions scaled down, for quick runs.
    "small": {
        "d_model": 512,
        "layers": 6,
        "heads": 8,
        "vocab": 8000,
        "vision": "bench-load-vit",
        "vis": {
            "embed_dim": 256,
            "vision_cfg": {"image_size": 112, "layers": 6, "width": 512, "patch_size": 14, "head_width": 64},
            "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 64, "heads": 1, "layers": 1},
        },
    },
}


def _status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def _tokenizer(vocab: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<|endoftext|>": 0, "<unk>": 1}
    words.update({f"w{i}": i for i in range(2, vocab)})
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<unk>")


def _register_vision(shape: dict) -> None:
    if shape["vis"] is not None:
        from flamingo.model.vision import _register_open_clip_config

        _register_open_clip_config(shape["vision"], shape["vis"])


def prepare(shape: dict, workdir: Path) -> None:
    """Random weights saved in both layouts (bf16). Runs in its own process: it holds the whole model."""
    import torch
    from transformers import AutoModelForCausalLM, MptConfig

    from flamingo.model.config import CrossAttnConfig, FlamingoConfig, LMConfig, PerceiverConfig, VisionConfig
    from flamingo.model.convert import export_openflamingo_state
    from flamingo.model.flamingo import Flamingo
    from flamingo.model.vision import OpenClipAdapter

    torch.manual_seed(0)
    tokenizer = _tokenizer(shape["vocab"])
    lm_config = MptConfig(
        d_model=shape["d_model"],
        n_layers=shape["layers"],
        n_heads=shape["heads"],
        vocab_size=shape["vocab"],
        max_seq_len=2048,
        expansion_ratio=4,
    )
    lm = AutoModelForCausalLM.from_config(lm_config, dtype=torch.bfloat16)
    lm_dir = workdir / "reference_lm"
    lm.save_pretrained(lm_dir)
    tokenizer.save_pretrained(lm_dir)
    _register_vision(shape)
    vision_config = VisionConfig(
        kind="open_clip", name=shape["vision"], pretrained=None, model_cfg=shape["vis"]
    )
    config = FlamingoConfig(
        lm=LMConfig(name_or_path=str(lm_dir)),
        vision=vision_config,
        perceiver=PerceiverConfig(),
        cross_attn=CrossAttnConfig(every_n=1),
    )
    model = Flamingo.from_config(
        config, lm=lm, tokenizer=tokenizer, vision=OpenClipAdapter.from_config(vision_config)
    )
    model = model.to(torch.bfloat16)
    model.save_pretrained(str(workdir / "ours"), save_backbones=True)
    torch.save(export_openflamingo_state(model), workdir / "checkpoint.pt")


def load(impl: str, shape: dict, workdir: Path) -> dict:
    """One load in this process: seconds, resident memory before and at peak, weight bytes."""
    # Everything either load imports comes in before measuring: the memory of code is not the loader's.
    import open_clip  # noqa: F401
    import open_flamingo
    import torch
    import transformers.models.mpt.modeling_mpt  # noqa: F401

    import flamingo.model.checkpoint  # noqa: F401
    from flamingo.model.flamingo import Flamingo

    _register_vision(shape)
    before = _status()["VmRSS"]
    start = time.perf_counter()
    if impl == "ours":
        model = Flamingo.from_pretrained(str(workdir / "ours"), dtype=torch.bfloat16)
    else:
        lm_dir = str(workdir / "reference_lm")
        model, _, _ = open_flamingo.create_model_and_transforms(
            shape["vision"], None, lm_dir, lm_dir, cross_attn_every_n_layers=1, use_local_files=True
        )
        model.load_state_dict(torch.load(workdir / "checkpoint.pt", map_location="cpu"), strict=False)
        model = model.to(torch.bfloat16)
    seconds = time.perf_counter() - start
    # One element per 4 KiB page of every weight: pages a memory map has not read in yet are counted too.
    checksum = sum(
        float(p.detach().reshape(-1)[:: 4096 // p.element_size()].float().sum()) for p in model.parameters()
    )
    tensors = {p.data_ptr(): p for p in model.parameters()}.values()  # a tied weight counts once
    weights = sum(p.numel() * p.element_size() for p in tensors)
    return {
        "seconds": seconds,
        "rss_before": before,
        "peak_rss": _status()["VmHWM"],
        "weight_bytes": weights,
        "dtypes": sorted({str(p.dtype) for p in tensors}),
        "finite": checksum == checksum,
    }


def _child(role: str, shape_name: str, workdir: Path) -> dict | None:
    out = subprocess.run(
        [sys.executable, __file__, "--child", role, "--shape", shape_name, "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{role} failed:\n{out.stderr[-4000:]}")
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--workdir", help="keep the saved model here (default: a temporary folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--no-record", action="store_true", help="print the table without writing results")
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    if args.child:
        workdir = Path(args.workdir)
        if args.child == "prepare":
            prepare(shape, workdir)
        else:
            print(json.dumps(load(args.child, shape, workdir)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if not (workdir / "checkpoint.pt").is_file():
            _child("prepare", args.shape, workdir)
        rows = []
        for impl in ("reference", "ours"):
            measured = _child(impl, args.shape, workdir)
            added = measured["peak_rss"] - measured["rss_before"]
            rows.append(
                {
                    "impl": impl,
                    "seconds": round(measured["seconds"], 2),
                    "peak_rss_mb": round(measured["peak_rss"] / 2**20),
                    "load_added_mb": round(added / 2**20),
                    "weights_mb": round(measured["weight_bytes"] / 2**20),
                    "added_over_weights": round(added / measured["weight_bytes"], 2),
                    "dtypes": measured["dtypes"],
                }
            )
    print(f"{'':10} {'seconds':>8} {'peak RSS MB':>12} {'added MB':>9} {'bf16 MB':>8} {'added/weights':>14}")
    for r in rows:
        print(
            f"{r['impl']:10} {r['seconds']:8.2f} {r['peak_rss_mb']:12d} {r['load_added_mb']:9d} "
            f"{r['weights_mb']:8d} {r['added_over_weights']:13.2f}x"
        )
    if not args.no_record:
        results_log.record(
            Path(__file__).parent / "results" / f"load_cpu_{args.shape}.json",
            {"shape": args.shape, "rows": rows},
        )


if __name__ == "__main__":
    main()
