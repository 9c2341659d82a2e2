"""Model subcommands: ``generate``, ``tiny-model``, ``convert`` and ``push``."""

from __future__ import annotations

import argparse
from pathlib import Path

from flamingo.errors import MissingFileError, UsageError
from flamingo.model.devices import add_device_arguments, device_options


def register(subparsers: argparse._SubParsersAction) -> None:
    gen = subparsers.add_parser(
        "generate", help="generate text from a prompt with <image> markers and images"
    )
    gen.add_argument("--model", required=True, help="checkpoint directory or hub id")
    gen.add_argument("--image", action="append", default=[], help="an image file; repeat once per <image>")
    gen.add_argument("--prompt", required=True, help='text with one "<image>" per --image, in order')
    gen.add_argument("--max-new-tokens", type=int, default=20)
    gen.add_argument("--num-beams", type=int, default=1)
    add_device_arguments(gen, quantize=True)
    gen.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let a model whose LM is defined by Python files in its repository run them (off by default; "
        "a model's own files can never turn this on)",
    )
    gen.set_defaults(func=_generate)

    tiny = subparsers.add_parser("tiny-model", help="build and save a tiny random model (no downloads)")
    tiny.add_argument("--out", required=True, help="directory to write the checkpoint to")
    tiny.add_argument("--family", default="llama", help="LM family: llama, gpt2, gpt_neox, opt, mpt, ...")
    tiny.add_argument("--vision", default="open_clip", help="open_clip, clip or siglip")
    tiny.add_argument("--gate-init", type=float, default=0.5, help="initial tanh gate value")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_tiny_model)

    conv = subparsers.add_parser("convert", help="import or export OpenFlamingo checkpoint.pt files")
    conv.add_argument("direction", choices=["from-openflamingo", "to-openflamingo"])
    conv.add_argument(
        "--preset", help="OpenFlamingo release, e.g. OpenFlamingo-9B-vitl-mpt7b (from-openflamingo)"
    )
    conv.add_argument("--checkpoint", help="checkpoint.pt to import (default: the release's file on the hub)")
    conv.add_argument("--lm", help="local path or hub id overriding the preset's LM")
    conv.add_argument("--model", help="our checkpoint directory (to-openflamingo)")
    conv.add_argument("--out", required=True, help="output directory (from-) or .pt file (to-)")
    conv.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let a model whose LM is defined by Python files in its repository run them (off by default; "
        "a model's own files can never turn this on)",
    )
    conv.add_argument(
        "--key-names",
        choices=["4.x", "5.x"],
        default="4.x",
        help="transformers generation whose LM key names the exported file uses (to-openflamingo; default 4.x, "
        "as the released files and open-flamingo 2.0.1 use: GPT-NeoX's head is embed_out there, lm_head in 5.x)",
    )
    conv.set_defaults(func=_convert)

    push = subparsers.add_parser(
        "push", help="upload a checkpoint directory to the Hugging Face hub, with a model card"
    )
    push.add_argument("directory", help="a checkpoint directory written by save_pretrained")
    push.add_argument("repo", help="hub repository id, e.g. me/my-flamingo (created when missing)")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--revision", help="branch to commit to (created when missing)")
    push.add_argument("--commit-message", help="commit message")
    push.add_argument("--token", help="hub token (default: the one `hf auth login` stored)")
    push.add_argument("--license", help="license identifier for the card, e.g. apache-2.0 (default: other)")
    push.add_argument("--training-config", help="the run's config.yaml, shown in the card")
    push.add_argument(
        "--results", action="append", default=[], help="a results.json or an eval output folder; repeatable"
    )
    push.set_defaults(func=_push)


def _generate(args: argparse.Namespace) -> int:
    from PIL import Image

    from flamingo.model.dispatch import input_device
    from flamingo.model.flamingo import Flamingo
    from flamingo.processing import FlamingoProcessor

    images = []
    for path in args.image:
        if not Path(path).is_file():
            raise MissingFileError(f"--image {path}: no such file")
        images.append(Image.open(path).convert("RGB"))
    model = Flamingo.from_pretrained(
        args.model,
        trust_remote_code=args.trust_remote_code,
        **device_options(args),
    )
    processor = FlamingoProcessor.from_model(model)
    batch = processor([(args.prompt, images)])
    device = input_device(model)  # where the vision encoder runs (the first device of a split model)
    batch = {k: (v.to(device) if v is not None else None) for k, v in batch.items()}
    out = model.generate(
        batch["images"],
        batch["input_ids"],
        batch["attention_mask"],
        image_mask=batch["image_mask"],
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        do_sample=False,
    )
    print(processor.decode(out, batch["input_ids"].shape[1])[0])
    return 0


def _tiny_model(args: argparse.Namespace) -> int:
    from PIL import Image, ImageDraw

    from flamingo.model.tiny import build_tiny_flamingo

    model = build_tiny_flamingo(args.family, vision=args.vision, gate_init=args.gate_init, seed=args.seed)
    model.save_pretrained(args.out, save_backbones=True)
    examples = Path(args.out) / "examples"
    examples.mkdir(exist_ok=True)
    for name, colour in (("red", (220, 40, 40)), ("blue", (40, 60, 220))):
        image = Image.new("RGB", (64, 64), (20, 20, 20))
        ImageDraw.Draw(image).rectangle((16, 16, 48, 48), fill=colour)
        image.save(examples / f"{name}.png")
    print(f"saved a tiny random {args.family} Flamingo to {args.out} (example images in {examples})")
    return 0


def _convert(args: argparse.Namespace) -> int:
    import torch

    from flamingo.model.convert import export_openflamingo_state, load_openflamingo
    from flamingo.model.flamingo import Flamingo

    if args.direction == "from-openflamingo":
        if not args.preset:
            raise UsageError("from-openflamingo needs --preset (see flamingo.model.presets)")
        model = load_openflamingo(
            args.preset, checkpoint=args.checkpoint, lm=args.lm, trust_remote_code=args.trust_remote_code
        )
        model.save_pretrained(args.out)
        print(f"wrote {args.out}")
        return 0
    if not args.model:
        raise UsageError("to-openflamingo needs --model DIR")
    model = Flamingo.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    torch.save(export_openflamingo_state(model, key_names=args.key_names), args.out)
    print(f"wrote {args.out}")
    return 0


def _push(args: argparse.Namespace) -> int:
    import yaml

    from flamingo.model.card import push_to_hub, read_evaluation, write_model_card
    from flamingo.model.config import FlamingoConfig

    directory = Path(args.directory)
    if not (directory / "config.json").is_file():
        raise MissingFileError(f"{directory}: no config.json; push a directory written by save_pretrained")
    training = None
    if args.training_config:
        training = yaml.safe_load(Path(args.training_config).read_text(encoding="utf-8"))
    card = write_model_card(
        directory,
        FlamingoConfig.load(directory / "config.json"),
        repo_id=args.repo,
        license=args.license,
        training=training,
        evaluation=read_evaluation(args.results) or None,
    )
    if card is None:
        print(f"{directory}/README.md was written by hand: uploading it as it is")
    info = push_to_hub(
        directory,
        args.repo,
        private=args.private or None,
        token=args.token,
        revision=args.revision,
        commit_message=args.commit_message,
    )
    print(f"pushed {directory} to {getattr(info, 'commit_url', None) or args.repo}")
    return 0
