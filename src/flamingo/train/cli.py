"""Training subcommand: ``flamingo train --config FILE [key.sub=value ...] [--resume auto|DIR]``."""

from __future__ import annotations

import argparse
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="train a Flamingo (one process, or torchrun for DDP/FSDP2)",
        description="Train from a YAML preset (configs/train/) with dotted overrides, e.g. "
        "`flamingo train --config configs/train/tiny-cpu.yaml train.lr=3e-4 data.sources.0.batch_size=8`.",
    )
    train.add_argument("--config", help="YAML config (presets in configs/train/); defaults if omitted")
    train.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.steps=50"
    )
    train.add_argument("--resume", help="'auto' (latest checkpoint of run_dir, if any) or a checkpoint dir")
    train.add_argument("--run-dir", help="shortcut for run_dir=...")
    train.add_argument(
        "--quantize",
        choices=["int8", "int4"],
        default=None,
        help="QLoRA: store the frozen LM's linear layers in int8 or int4 (shortcut for "
        "model.quantization.mode=...; torchao, the quantize extra)",
    )
    train.add_argument(
        "--help-config", action="store_true", help="list every config key with its doc and exit"
    )
    train.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let a model whose LM is defined by Python files in its repository run them (off by default; "
        "only this flag turns it on: config files and overrides cannot)",
    )
    train.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from flamingo.train.config import describe_fields, load_config
    from flamingo.train.trainer import train

    if args.help_config:
        print("\n".join(describe_fields()))
        return 0
    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    if args.quantize:
        overrides.append(f"model.quantization.mode={args.quantize}")
    if args.resume:
        overrides.append(f"checkpoint.resume={args.resume}")
    config = load_config(args.config, overrides)
    result = train(config, trust_remote_code=args.trust_remote_code)
    if os.environ.get("RANK", "0") != "0":
        return 0
    last = result.losses[max(result.losses)] if result.losses else float("nan")
    skipped = {name: sum(counts.values()) for name, counts in result.data_skips.items()}
    print(
        f"trained to step {result.step} (loss {last:.4f}); skipped steps {result.skipped_steps}, "
        f"skipped samples {skipped}; model: {result.model_dir}"
    )
    return 0
