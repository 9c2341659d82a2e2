"""Training subcommand: ``flamingo train --config FILE [key.sub=value ...] [--resume auto|DIR]``."""

from __future__ import annotations

import argparse
import os

from flamingo.errors import UsageError
from flamingo.model.devices import add_device_arguments


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
    # The same flags as the other commands, as shortcuts for train.device / train.precision; unset, the config
    # decides (its default is auto for both). A split --device-map does not apply: training shards with FSDP.
    add_device_arguments(train, device_map=False, device_default=None, dtype_default=None)
    train.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let a model whose LM is defined by Python files in its repository run them (off by default; "
        "only this flag turns it on: config files and overrides cannot)",
    )
    train.set_defaults(func=_train)

    export = subparsers.add_parser(
        "export",
        help="turn a training checkpoint (full or sharded) into a model directory for from_pretrained/eval/serve",
        description="Write a training checkpoint's model in the layout of save_pretrained, e.g. "
        "`flamingo export runs/tiny-cpu/checkpoints/step-000040 --out models/tiny`.",
    )
    export.add_argument("checkpoint", help="a checkpoint directory (<run_dir>/checkpoints/step-NNNNNN)")
    export.add_argument("--out", required=True, help="directory to write the model to")
    export.add_argument(
        "--config",
        help="the run's YAML config (default: the one saved in the checkpoint or its run directory)",
    )
    export.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let an LM defined by Python files in its repository run them (as for flamingo train)",
    )
    export.set_defaults(func=_export)


# --dtype -> train.precision: training keeps float32 master weights and runs bfloat16 under autocast.
_PRECISION = {"auto": "auto", "float32": "fp32", "bfloat16": "bf16"}


def device_overrides(device: str | None, dtype: str | None) -> list[str]:
    """``--device`` / ``--dtype`` as config overrides (``train.device=...``, ``train.precision=...``)."""
    overrides = [] if device is None else [f"train.device={device}"]
    if dtype is not None:
        if dtype not in _PRECISION:
            raise UsageError(
                f"flamingo train --dtype {dtype}: training runs in float32 or bfloat16 (or auto: bfloat16 "
                "autocast on a GPU, float32 on the CPU)"
            )
        overrides.append(f"train.precision={_PRECISION[dtype]}")
    return overrides


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
    overrides.extend(device_overrides(args.device, args.dtype))
    config = load_config(args.config, overrides)
    result = train(config, trust_remote_code=args.trust_remote_code)
    if os.environ.get("RANK", "0") != "0":
        return 0
    last = result.losses[max(result.losses)] if result.losses else float("nan")
    skipped = {name: sum(counts.values()) for name, counts in result.data_skips.items()}
    print(
        f"trained to step {result.step} (loss {last:.4f}); skipped steps {result.skipped_steps}, "
        f"skipped samples {skipped}; "
        + (f"model: {result.model_dir}" if result.model_dir else f"checkpoint: {result.checkpoint}")
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from flamingo.train.config import load_config
    from flamingo.train.export import export_checkpoint

    config = load_config(args.config) if args.config else None
    out = export_checkpoint(args.checkpoint, args.out, config, trust_remote_code=args.trust_remote_code)
    print(f"exported {args.checkpoint} to {out}")
    return 0
