"""Training throughput: ours against the reference open-flamingo==2.0.1 step, and MFU at OpenFlamingo-3B size.

    .venv/bin/python bench/bench_train.py                      # CPU: ours vs reference, same config and weights
    .venv/bin/python bench/bench_train.py --device cuda        # GPU: also an OF-3B-sized model (random weights)
                                                               #      in bf16 with FSDP2 on one GPU, batch sweep
    .venv/bin/python bench/bench_train.py --e2e only           # only the end-to-end rows (loader included)

End to end (``--e2e``, on by default): both training loops read the same MMC4-like tar shards (built by
``bench_loader.build_shards`` from scikit-image photographs) with one data worker, and train the same model
(same weights, batch size, 256 tokens); after a warm-up, real (non-pad: ``attention_mask == 1``) input tokens
trained on per second of wall time, waiting for data included. See :func:`end_to_end`.

Model FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one real step (forward and
backward, frozen vision encoder included; ``flamingo.train.flops.flop_counter`` adds the formulas of the CPU's
fused attention kernels, which the stock counter leaves at zero), so MFU = counted FLOPs / step time / device peak
(70 GFLOP/s fp32 for this 2-thread CPU, 989 TFLOP/s dense bf16 for an H100/H200). Writes
``bench/results/train_<device>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_model  # shared builders: same architecture and weights for both implementations
import results_log

PEAK = {"cpu": 70e9, "cuda": 989e12}


def timed(fn, iters: int, device: str) -> float:
    import torch

    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def compare_with_reference(args) -> list[dict]:
    """Both implementations' training steps on the same config, iterations interleaved."""
    import torch

    torch.set_num_threads(args.threads)
    size = bench_model.SIZES[args.size]
    ref, ours, tok = bench_model.build_models(size, Path(tempfile.mkdtemp(prefix="flamingo-bench-")))
    batch, images, tokens = 4, 4, 256
    rows = []
    for impl in ("reference", "ours"):
        model = (ref if impl == "reference" else ours).to(args.device)
        step, _ = bench_model._setup(impl, "train", 1, ref, ours, tok, size, args.device, args.bf16)
        flops = bench_model.count_flops(step)
        seconds = timed(step, args.iters, args.device)
        rows.append(_row(impl, args.size, batch, images, tokens, seconds, flops, args.device))
        model.to("cpu")
    return rows


def end_to_end(args, workdir: Path | None = None) -> list[dict]:
    """Training throughput with the loader in the loop, ours against the reference, on the same shards and model.

    - ours: :class:`flamingo.train.trainer.Trainer`'s own loop (``fit``) with a :class:`RunConfig` whose one
      interleaved source reads the shards with one worker process, ``trim_padding`` on (the default) and packing
      on (``pack: true``, rows of 256 tokens), fp32, given the bench model (``bench_model.build_models``).
    - the reference: its ``get_mmc4_dataset`` WebDataset loader (``bench_loader.reference_loader``, one worker) and
      the body of its ``train_one_epoch`` MMC4 half, written out here: that function zips a LAION loader with the
      MMC4 one and trains on both every step, so it cannot run on MMC4 alone. The body: its label masking (pad,
      text before the first ``<image>`` and after each ``<|endofchunk|>``, ``<image>`` itself), forward, backward,
      the embedding gradient masked to the two new rows, gradient clipping at 1.0, an AdamW step. Its batches are
      padded to 256 tokens.

    Each runs ``args.e2e_warmup`` steps (worker start-up, our first step's FLOP count) and then
    ``args.e2e_steps`` timed steps; real tokens are the ``attention_mask == 1`` input positions of the timed steps,
    padded tokens every position (rows x row length), over the wall time of those steps.
    """
    import bench_loader
    import torch

    from flamingo.data.loader import SourceConfig
    from flamingo.train.config import (
        CheckpointConfig,
        DataConfig,
        LoggingConfig,
        ParallelConfig,
        RunConfig,
        TrainConfig,
    )
    from flamingo.train.trainer import Trainer

    torch.set_num_threads(args.threads)
    workdir = workdir or Path(tempfile.mkdtemp(prefix="flamingo-bench-e2e-"))
    size = bench_model.SIZES[args.size]
    batch, warmup, steps = args.e2e_batch, args.e2e_warmup, args.e2e_steps
    shards = sorted((workdir / "shards").glob("mmc4-*.tar")) or bench_loader.build_shards(
        workdir / "shards", args.e2e_docs, 16, sentences=tuple(args.e2e_sentences)
    )
    tokenizer = bench_loader.make_tokenizer()
    ref, ours, ref_tok = bench_model.build_models(size, workdir / "models", tokenizer=tokenizer)
    for token in (bench_loader.IMAGE, bench_loader.EOC, bench_loader.PAD):
        if ref_tok.convert_tokens_to_ids(token) != tokenizer.convert_tokens_to_ids(token):
            raise RuntimeError(f"the reference tokenizer moved {token}: the two loaders would disagree")
    rows = []

    # Ours: the trainer's loop; on_log runs after every step, so the clock reads between the warm-up's last
    # step and the run's last step cover exactly the timed steps (their data waits included).
    source = SourceConfig(
        name="mmc4",
        shards=[str(p) for p in shards],
        batch_size=batch,
        max_tokens=256,
        max_images=6,
        min_image_bytes=11_000,  # the reference keeps images above 10 kB
        sim_threshold=0.24,
        pack=True,
        pack_max_tokens=256,
        num_workers=1,
    )
    config = RunConfig(
        run_dir=str(workdir / "run"),
        data=DataConfig(sources=[source]),
        train=TrainConfig(steps=warmup + steps, lr=1e-5, device=args.device, precision="fp32"),
        parallel=ParallelConfig(strategy="none"),
        checkpoint=CheckpointConfig(save_backbones=False),
        logging=LoggingConfig(progress=False),
    )
    marks: dict[int, float] = {}
    real = padded = samples = 0

    def on_log(record: dict) -> None:
        nonlocal real, padded, samples
        marks[record["step"]] = time.perf_counter()
        if record["step"] > warmup:
            tokens = record["tokens_per_s"] * record["step_seconds"]
            real += round(tokens)
            padded += round(tokens / record["packing_efficiency"])
            samples += round(record["samples_per_s"] * record["step_seconds"])

    ours.to(args.device)
    Trainer(config, model=ours).fit(on_log)
    rows.append(_e2e_row("ours", steps, batch, samples, real, padded, marks[warmup + steps] - marks[warmup]))
    ours.to("cpu")

    # The reference: its loader and the MMC4 half of its train_one_epoch.
    ref.to(args.device).train()
    ref.vision_encoder.eval()
    params = [p for p in ref.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    embedding = ref.lang_encoder.get_input_embeddings()
    media_id = ref_tok.convert_tokens_to_ids(bench_loader.IMAGE)
    eoc_id = ref_tok.convert_tokens_to_ids(bench_loader.EOC)
    loader_args = types.SimpleNamespace(seed=0, batch_size=batch, image_size=size["image"])
    data = bench_loader.reference_loader(shards, 1, loader_args)
    batches = iter(data.dataloader)

    def reference_step(batches) -> tuple[int, int, int]:
        images, texts = next(batches)
        images = images.to(args.device).unsqueeze(2)  # (b, t, c, h, w) -> (b, t, f=1, c, h, w)
        input_ids = torch.stack([x[0] for x in texts]).squeeze(1)
        attention_mask = torch.stack([x[1] for x in texts]).squeeze(1)
        labels = input_ids.clone()
        labels[labels == ref_tok.pad_token_id] = -100
        for i in range(labels.shape[0]):  # its per-row Python loops, as it runs them
            j = 0
            while j < labels.shape[1] and labels[i][j] != media_id:
                labels[i][j] = -100
                j += 1
            for eoc in torch.where(labels[i] == eoc_id)[0]:
                j = eoc + 1
                while j < labels.shape[1] and labels[i][j] != media_id:
                    labels[i][j] = -100
                    j += 1
        labels[labels == media_id] = -100
        loss = ref(
            vision_x=images,
            lang_x=input_ids.to(args.device),
            attention_mask=attention_mask.to(args.device),
            labels=labels.to(args.device),
        )[0]
        loss.backward()
        keep = torch.zeros_like(embedding.weight.grad)
        keep[media_id] = 1
        keep[eoc_id] = 1
        embedding.weight.grad = embedding.weight.grad * keep
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return len(input_ids), int(attention_mask.sum()), attention_mask.numel()

    try:
        for _ in range(warmup):
            reference_step(batches)
        real = padded = samples = 0
        started = time.perf_counter()
        for _ in range(steps):
            rows_in, real_in, padded_in = reference_step(batches)
            samples, real, padded = samples + rows_in, real + real_in, padded + padded_in
        seconds = time.perf_counter() - started
    finally:
        del batches  # ends its worker process
    rows.insert(0, _e2e_row("reference", steps, batch, samples, real, padded, seconds))
    ref.to("cpu")
    return rows


def _e2e_row(impl, steps, batch, samples, real, padded, seconds) -> dict:
    seconds = max(seconds, 1e-9)
    row = {
        "impl": impl,
        "steps": steps,
        "batch": batch,
        "seconds": seconds,
        "samples": samples,
        "real_tokens": real,
        "padded_tokens": padded,
        "samples_per_s": samples / seconds,
        "real_tokens_per_s": real / seconds,
        "padded_tokens_per_s": padded / seconds,
        "padding_share": 1 - real / max(padded, 1),
    }
    print(
        f"  {impl:9s} e2e {steps} steps: {row['samples_per_s']:.2f} samples/s, "
        f"{row['real_tokens_per_s']:.0f} real tok/s, padding {100 * row['padding_share']:.0f}%",
        flush=True,
    )
    return row


def _row(impl, config, batch, images, tokens, seconds, flops, device, **extra) -> dict:
    row = {
        "impl": impl,
        "config": config,
        "batch": batch,
        "step_s": seconds,
        "samples_per_s": batch / seconds,
        "tokens_per_s": batch * tokens / seconds,
        "images_per_s": batch * images / seconds,
        "step_tflop": flops / 1e12,
        "mfu": flops / seconds / PEAK[device],
        **extra,
    }
    print(
        f"  {impl:9s} {config:6s} batch {batch:3d}: {seconds:.3f} s/step, {row['tokens_per_s']:.0f} tok/s, "
        f"MFU {100 * row['mfu']:.1f}%",
        flush=True,
    )
    return row


def of3b_model():
    """OpenFlamingo-3B's shapes with random weights: CLIP ViT-L/14 at 224 px, a 24-layer width-2048 LM (llama
    blocks with SDPA; MPT-1B's ALiBi attention has no fused kernel in transformers), Perceiver 6x64, every_n=1."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from flamingo.model.config import CrossAttnConfig, FlamingoConfig, LMConfig, PerceiverConfig, VisionConfig
    from flamingo.model.vision import OpenClipAdapter

    tok = bench_model.make_tokenizer(50277)
    lm_cfg = LlamaConfig(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=24,
        num_attention_heads=16,
        vocab_size=len(tok),
        max_position_embeddings=2048,
        bos_token_id=0,
        eos_token_id=0,
    )
    with torch.device("cuda"):
        lm = AutoModelForCausalLM.from_config(lm_cfg, attn_implementation="sdpa")
        vision_cfg = VisionConfig(kind="open_clip", name="ViT-L-14", pretrained=None)
        vision = OpenClipAdapter.from_config(vision_cfg).cuda()
        config = FlamingoConfig(
            lm=LMConfig(name_or_path="random-of3b-lm"),
            vision=vision_cfg,
            perceiver=PerceiverConfig(),
            cross_attn=CrossAttnConfig(every_n=1, gate_init=0.1),
        )
        from flamingo.model.flamingo import Flamingo

        model = Flamingo.from_config(config, lm=lm, tokenizer=tok, vision=vision)
    return model, tok


def of3b_sweep(args) -> list[dict]:
    """Ours at OF-3B size: bf16 parameters through FSDP2 on one GPU; the largest interleaved batch that fits."""
    import torch
    import torch.distributed as dist

    from flamingo.distributed import DistInfo
    from flamingo.train.freeze import freeze_backbones
    from flamingo.train.parallel import apply_activation_checkpointing, apply_compile, apply_fsdp

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl", rank=0, world_size=1)
    model, tok = of3b_model()
    trainable = freeze_backbones(model)
    model.vision.eval()
    if args.activation_checkpointing:  # the trainer's order: checkpointing, then compile, then FSDP
        apply_activation_checkpointing(model)
    if args.compile:
        apply_compile(model)
    model = apply_fsdp(model, DistInfo(0, 1, 0, torch.device("cuda")), torch.bfloat16, reshard=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    size = {"image": 224, "vocab": 50277}
    rows, images, tokens = [], 6, 256
    for batch in args.batches:
        pixels, ids, mask = (t.cuda() for t in bench_model.batch_inputs(tok, batch, images, tokens, size))

        def step(pixels=pixels, ids=ids, mask=mask):
            loss = model(pixels, ids, mask, labels=ids, return_logits=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        try:
            torch.cuda.reset_peak_memory_stats()
            seconds = timed(step, args.iters, "cuda")  # first: compiled layers compile outside the counter
            try:
                flops = bench_model.count_flops(step)
            except Exception as err:  # FLOP counting is a nicety: the row keeps its time, MFU unknown
                print(f"  FLOP counter failed ({err}); MFU not reported", flush=True)
                flops = float("nan")
        except torch.OutOfMemoryError:
            print(f"  batch {batch}: out of memory", flush=True)
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            break
        rows.append(
            _row(
                "ours",
                "of-3b",
                batch,
                images,
                tokens,
                seconds,
                flops,
                "cuda",
                peak_gb=torch.cuda.max_memory_allocated() / 2**30,
                trainable_params=trainable,
                activation_checkpointing=args.activation_checkpointing,
                compile=args.compile,
            )
        )
        if batch == args.profile_batch:
            profile_step(step, args)
    dist.destroy_process_group()
    return rows


def profile_step(step, args) -> None:
    """One profiled step: where the GPU time goes (by op, and by op and input shapes) and the host's busiest
    calls."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    print(f"\nprofiled step: wall {wall:.3f} s (the table's 'Self CUDA time total' is the GPU's busy time)")
    print(events.table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=60))
    print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))
    by_shape = [e for e in prof.key_averages(group_by_input_shape=True) if e.key.startswith("aten::")]
    by_shape.sort(key=lambda e: e.device_time_total, reverse=True)
    print("busiest (op, input shapes):")
    for e in by_shape[:40]:
        print(
            f"  {e.device_time_total / 1e3:8.2f} ms  {e.count:5d}x  {e.key:28s} {str(e.input_shapes)[:150]}"
        )
    if args.trace:
        prof.export_chrome_trace(args.trace)


def print_e2e(rows: list[dict]) -> float:
    """The end-to-end table; returns ours / reference in real tokens per second."""
    print(
        "\n| impl | steps | samples/s | real tokens/s | padded tokens/s | padding |\n|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['impl']} | {r['steps']} | {r['samples_per_s']:.2f} | {r['real_tokens_per_s']:.0f} | "
            f"{r['padded_tokens_per_s']:.0f} | {100 * r['padding_share']:.1f}% |"
        )
    by = {r["impl"]: r for r in rows}
    ratio = by["ours"]["real_tokens_per_s"] / max(by["reference"]["real_tokens_per_s"], 1e-9)
    print(f"ours / reference, end to end: {ratio:.2f}x real tokens/s")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="small", choices=sorted(bench_model.SIZES))
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 24, 32, 48, 64])
    parser.add_argument("--skip-compare", action="store_true", help="only the OF-3B sweep (GPU)")
    parser.add_argument(
        "--activation-checkpointing", action="store_true", help="OF-3B sweep: recompute layers"
    )
    parser.add_argument("--compile", action="store_true", help="OF-3B sweep: torch.compile the layers")
    parser.add_argument("--profile-batch", type=int, default=0, help="OF-3B sweep: profile one step here")
    parser.add_argument("--trace", default=None, help="with --profile-batch: write a Chrome trace here")
    parser.add_argument(
        "--e2e", default="on", choices=["on", "off", "only"], help="end-to-end rows, loader included"
    )
    parser.add_argument("--e2e-steps", type=int, default=8, help="end to end: timed steps, after the warm-up")
    parser.add_argument("--e2e-warmup", type=int, default=2, help="end to end: untimed first steps")
    parser.add_argument("--e2e-batch", type=int, default=4, help="end to end: samples (rows) per step")
    parser.add_argument("--e2e-docs", type=int, default=128, help="end to end: documents in the shards")
    parser.add_argument(
        "--e2e-sentences",
        type=int,
        nargs=2,
        default=[15, 35],
        metavar=("FEWEST", "MOST"),
        help="end to end: sentences per document (8-24 words each); the default fills 256 tokens",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import torch

    result = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads",
        "peak_flops": PEAK[args.device],
    }
    if not args.skip_compare and args.e2e != "only":
        rows = compare_with_reference(args)
        result["compare"] = rows
        ratio = rows[0]["step_s"] / rows[1]["step_s"]
        print(
            "\n| impl | config | batch | s/step | samples/s | tokens/s | MFU |\n|---|---|---|---|---|---|---|"
        )
        for r in rows:
            print(
                f"| {r['impl']} | {r['config']} | {r['batch']} | {r['step_s']:.3f} | {r['samples_per_s']:.2f} | "
                f"{r['tokens_per_s']:.0f} | {100 * r['mfu']:.1f}% |"
            )
        print(f"ours / reference throughput: {ratio:.2f}x")
        result["speedup"] = ratio
    if args.e2e != "off":
        result["e2e"] = end_to_end(args)
        result["e2e_speedup"] = print_e2e(result["e2e"])
    if args.device == "cuda" and args.e2e != "only":
        result["of3b"] = of3b_sweep(args)
    out = Path(args.out or f"bench/results/train_{args.device}.json")
    results_log.record(out, result, gpu=result["device"] if args.device == "cuda" else None)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
