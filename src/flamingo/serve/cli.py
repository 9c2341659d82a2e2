"""``flamingo serve``: the HTTP API and, when Gradio is installed, the web demo on one port."""

from __future__ import annotations

import argparse

from flamingo.model.devices import add_device_arguments, device_options


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve a web demo and an HTTP API for a checkpoint")
    p.add_argument("--model", required=True, help="checkpoint directory, hub id or OpenFlamingo preset")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=7860)
    add_device_arguments(p, quantize=True)
    p.add_argument(
        "--allow-urls", action="store_true", help="fetch http(s) image URLs (public addresses only)"
    )
    p.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="with --allow-urls, also fetch from private addresses",
    )
    p.add_argument(
        "--url-timeout",
        type=float,
        default=10.0,
        help="seconds one image URL fetch may take in all (lookup, connect, redirects, every read)",
    )
    p.add_argument("--max-image-bytes", type=int, default=10 * 1024 * 1024)
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096)
    p.add_argument("--max-images", type=int, default=33, help="images per prompt")
    p.add_argument(
        "--max-pending-mb",
        type=int,
        default=1024,
        help="memory (MiB) all requests in flight may hold together; over it requests get 503 + Retry-After",
    )
    p.add_argument("--max-prompt-tokens", type=int, default=2048)
    p.add_argument("--max-new-tokens", type=int, default=256, help="largest max_new_tokens a request may ask")
    p.add_argument("--max-batch-size", type=int, default=8, help="requests batched into one generate call")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long to wait for a batch to fill")
    p.add_argument(
        "--demo",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mount the Gradio web demo at / (default: when Gradio is installed; --no-demo: the API alone)",
    )
    p.add_argument("--log-level", default="info")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let a model whose LM is defined by Python files in its repository run them (off by default; "
        "a model's own files can never turn this on)",
    )
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from flamingo.serve.app import ServeLimits
    from flamingo.serve.server import serve

    limits = ServeLimits(
        max_images=args.max_images,
        max_new_tokens=args.max_new_tokens,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        max_pending_bytes=args.max_pending_mb * 2**20,
    )
    serve(
        args.model,
        host=args.host,
        port=args.port,
        limits=limits,
        log_level=args.log_level,
        demo=args.demo,
        **device_options(args),
        allow_urls=args.allow_urls,
        allow_private_urls=args.allow_private_urls,
        url_timeout_s=args.url_timeout,
        max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels,
        max_prompt_tokens=args.max_prompt_tokens,
        trust_remote_code=args.trust_remote_code,
    )
    return 0
