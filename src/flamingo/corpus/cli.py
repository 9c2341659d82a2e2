"""Builder subcommands of ``flamingo data``: ``build``, ``show`` and ``convert``.

``register(subparsers)``, the hook the top-level CLI calls for every command module, adds them to the ``data``
group that ``flamingo.data.cli`` made (the data package sits below the builder and does not import it), or
creates the group when no other module did. This module imports only argparse and the builder's config at
the top; each command imports the builder when it runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from flamingo.corpus.config import DEFAULT_CLIP
from flamingo.errors import MissingFileError, UsageError

_COMMANDS = ("build", "show", "convert")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``build``, ``show`` and ``convert`` under ``flamingo data`` (creating the group if it is missing)."""
    data = subparsers.choices.get("data")
    if data is None:
        data = subparsers.add_parser("data", help="build, convert, inspect and validate datasets")
        data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    (commands,) = [a for a in data._actions if isinstance(a, argparse._SubParsersAction)]
    if not set(_COMMANDS) & set(commands.choices):
        register_data_commands(commands)


def register_data_commands(data_subparsers: argparse._SubParsersAction) -> None:
    """Add ``build``, ``show`` and ``convert`` to the ``flamingo data`` sub-command group."""
    _add_build(data_subparsers)
    _add_show(data_subparsers)
    _add_convert(data_subparsers)


def _add_fetch_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-loopback", action="store_true", help="allow images from 127.0.0.0/8 and ::1 (tests)"
    )
    parser.add_argument(
        "--allow-private", action="store_true", help="allow images from private networks (local mirrors)"
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (one input file each)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_build(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build",
        help="build interleaved shards from WARC, HTML or JSONL files (the MMC4 recipe)",
        description="Read pages, fetch and filter images, place them among sentences with CLIP, write shards.",
    )
    p.add_argument("inputs", nargs="+", help="WARC (.warc.gz), HTML or JSONL files; input i -> shard i")
    p.add_argument(
        "--out",
        required=True,
        help="output folder (shards/, stats.json, report.md, ...), or s3://bucket/prefix (gs://...) storage",
    )
    p.add_argument("--engine", choices=["local", "ray"], default="local")
    p.add_argument(
        "--clip",
        default=DEFAULT_CLIP,
        help=f"open_clip:NAME:PRETRAINED, open_clip:CONFIG.json:WEIGHTS or hf:PATH (default {DEFAULT_CLIP})",
    )
    p.add_argument("--device", default="auto", help="CLIP device: auto (CUDA when present), cpu, cuda:0")
    p.add_argument("--clip-batch-size", type=int, default=64, help="images or sentences per CLIP call")
    p.add_argument(
        "--config", help="build config (YAML or JSON): sections read, text, fetch, filter, interleave"
    )
    p.add_argument(
        "--eval-sets", help="comma-separated folders of evaluation images to decontaminate against"
    )
    p.add_argument(
        "--ray-address", help="join this Ray cluster (ray://host:10001 or auto) instead of a local Ray"
    )
    _add_fetch_flags(p)
    p.set_defaults(func=_build)


def _add_show(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("show", help="render one document of a shard as a self-contained HTML page")
    p.add_argument(
        "shard",
        help="an interleaved shard (.tar), ours or an MMC4 base64 shard; a path or s3://, https://, pipe:",
    )
    p.add_argument("--doc", type=int, default=0, help="0-based index of the document in the shard")
    p.add_argument("--out", required=True, help="HTML file to write")
    p.set_defaults(func=_show)


def _add_convert(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert MMC4, OBELICS or image-text pair lists into our shards",
        description="Images are fetched with the builder's safe fetcher (manifests: re-running resumes).",
    )
    p.add_argument("kind", choices=["mmc4", "obelics", "pairs"], help="what the inputs are")
    p.add_argument(
        "inputs", nargs="+", help="MMC4 .jsonl(.gz) or .tar, OBELICS .parquet, pairs .parquet/.csv"
    )
    p.add_argument("--out", required=True, help="output folder (shards/, stats.json, report.md, ...)")
    p.add_argument("--images", help="MMC4 JSONL: the folder holding the image files named by image_name")
    p.add_argument("--fetch-missing", action="store_true", help="MMC4: download raw_url of missing images")
    p.add_argument("--keep-text-only", action="store_true", help="keep documents left without images")
    p.add_argument("--url-col", default="url", help="pairs: URL column (default url)")
    p.add_argument("--caption-col", default="caption", help="pairs: caption column (default caption)")
    p.add_argument("--max-per-tar", type=int, default=1000, help="documents or pairs per output tar")
    _add_fetch_flags(p)
    p.set_defaults(func=_convert)


def load_build_config(path: str | None) -> Any:
    """A ``BuildConfig`` from a YAML or JSON file (defaults when ``path`` is None)."""
    from flamingo.corpus.config import BuildConfig

    if path is None:
        return BuildConfig()
    from flamingo.configs import read_mapping

    if not Path(path).is_file():
        raise MissingFileError(f"--config {path}: no such file")
    return BuildConfig.from_dict(read_mapping(path, "build config"), source=path)


def _build_config(args: argparse.Namespace) -> Any:
    config = load_build_config(args.config)
    config.fetch.allow_loopback = config.fetch.allow_loopback or args.allow_loopback
    config.fetch.allow_private = config.fetch.allow_private or args.allow_private
    if args.eval_sets:
        folders = [f.strip() for f in args.eval_sets.split(",") if f.strip()]
        for folder in folders:
            if not Path(folder).is_dir():
                raise MissingFileError(f"--eval-sets: {folder} is not a folder")
        config.filter.decontaminate_folders = folders
    config.progress = not args.no_progress
    return config


def _summary(stats: dict[str, Any], out: str, seconds: float, what: str) -> str:
    write = stats["stages"].get("write", {})
    out = out.rstrip("/")  # a folder or an s3:// URL: joined with "/" so that the URL stays one
    return (
        f"{what} {write.get('documents_out', 0)} documents with {write.get('images_out', 0)} images "
        f"into {out}/shards in {seconds:.1f}s; stats: {out}/stats.json, report: {out}/report.md"
    )


def _build(args: argparse.Namespace) -> int:
    from flamingo.corpus.clip import ClipEmbedder
    from flamingo.corpus.engine import run_pipeline

    config = _build_config(args)
    embedder = ClipEmbedder(args.clip, device=args.device, batch_size=args.clip_batch_size)
    started_ray = False
    if args.engine == "ray" and args.ray_address:
        import ray

        ray.init(address=args.ray_address)
        started_ray = True
    elif args.ray_address:
        raise UsageError("--ray-address needs --engine ray")
    start = time.perf_counter()
    try:
        result = run_pipeline(args.inputs, args.out, config, args.engine, args.workers, embedder=embedder)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    print(_summary(result.stats.to_dict(), args.out, time.perf_counter() - start, "built"))
    return 0


def _show(args: argparse.Namespace) -> int:
    from flamingo.corpus.show import show_document

    path, document = show_document(args.shard, args.doc, args.out)
    print(f"wrote {path}: document {document.id} ({len(document.image_info)} images)")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from flamingo.corpus.config import FetchConfig
    from flamingo.corpus.convert import ConvertConfig, convert

    config = ConvertConfig(
        fetch=FetchConfig(allow_loopback=args.allow_loopback, allow_private=args.allow_private),
        fetch_missing=args.fetch_missing,
        keep_text_only=args.keep_text_only,
        url_column=args.url_col,
        caption_column=args.caption_col,
        max_documents_per_tar=args.max_per_tar,
        progress=not args.no_progress,
    )
    start = time.perf_counter()
    result = convert(args.inputs, args.out, args.kind, config, image_dir=args.images, workers=args.workers)
    what = "converted" if args.kind != "pairs" else "converted (pairs)"
    print(_summary(result.stats.to_dict(), args.out, time.perf_counter() - start, what))
    return 0
