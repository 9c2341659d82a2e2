"""The quickstart's middle stages through the framework's public APIs: build shards, train the adapters.

- build: ``flamingo.corpus.run_pipeline`` over the world's WARC files with the tiny CLIP as the embedder
  (``flamingo.corpus.clip.ClipEmbedder``), ``flamingo.corpus.convert`` over the alt-text pair list, then
  ``flamingo.data.validate_shards`` on both;
- train: a new Flamingo over the pretrained (frozen) LM and CLIP vision tower, saved as a checkpoint directory
  and trained by ``flamingo.train.trainer.train`` (``model.kind: pretrained``), like ``flamingo train``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from flamingo.quickstart.world_clip import CLIP_CONFIG, CLIP_NAME


class NoNSFW:
    """The world holds only coloured shapes: an NSFW scorer that never flags one.

    (The builder's default zero-shot scorer asks the CLIP about prompts like "a nude body", which this tiny
    CLIP never read, so its answers would be noise that drops random pictures.)
    """

    def score(self, images: list[Image.Image]) -> np.ndarray:
        return np.zeros(len(images))


@dataclass
class BuildOutcome:
    """What the build stage produced and what validation found."""

    shards_dir: Path
    stats: dict[str, Any]
    validation: dict[str, Any]
    pairs_dir: Path | None = None
    pairs_stats: dict[str, Any] | None = None
    pairs_validation: dict[str, Any] | None = None


def build_shards(
    warcs: list[Path], images_root: Path, out_dir: Path, clip_weights: Path, threshold: float
) -> BuildOutcome:
    """Run the dataset builder on the WARC files and validate its shards."""
    from flamingo.corpus import BuildConfig, FetchConfig, FilterConfig, InterleaveConfig, run_pipeline
    from flamingo.corpus.clip import ClipEmbedder
    from flamingo.corpus.config import ReadConfig, TextConfig
    from flamingo.data import validate_shards

    embedder = ClipEmbedder.from_open_clip(
        CLIP_NAME, pretrained=str(clip_weights), model_cfg=CLIP_CONFIG, device="cpu", batch_size=256
    )
    config = BuildConfig(
        read=ReadConfig(splitter="rules"),
        # The world's pages are short, drawn English, and share their intros and outros by design: web text
        # rules (language, per-site repeated lines, Gopher and C4) are for crawled pages, not these.
        text=TextConfig(
            languages=[], line_dedup_min_pages=0, gopher_quality=False, gopher_repetition=False, c4=False
        ),
        fetch=FetchConfig(local_root=str(images_root.resolve()), threads=4),
        # 32 px pictures of a few hundred bytes: MMC4's size floors would drop them all. Perceptual dedup is
        # off because pHashes of small shapes on dark backgrounds collide; exact dedup stays on.
        filter=FilterConfig(min_side=16, min_bytes=0, dedup_perceptual=False, max_faces=0),
        interleave=InterleaveConfig(similarity_threshold=threshold, batch_size=256),
        progress=False,
    )
    result = run_pipeline(warcs, out_dir, config, workers=1, embedder=embedder, nsfw_scorer=NoNSFW())
    report = validate_shards(str(out_dir / "shards"))
    return BuildOutcome(out_dir / "shards", result.stats.to_dict(), report.to_dict())


def convert_pairs(pair_list: Path, images_root: Path, out_dir: Path) -> tuple[Path, dict, dict]:
    """The alt-text pair list -> img2dataset-layout pair shards, as ``flamingo data convert pairs`` does.

    Returns the shard folder, the conversion's stats and the validation report.
    """
    from flamingo.corpus import FetchConfig
    from flamingo.corpus.convert import ConvertConfig, convert
    from flamingo.data import validate_shards

    config = ConvertConfig(fetch=FetchConfig(threads=4), progress=False)
    result = convert([pair_list], out_dir, "pairs", config, image_dir=images_root)
    report = validate_shards(str(out_dir / "shards"))
    return out_dir / "shards", result.stats.to_dict(), report.to_dict()


def initial_model(lm_dir: Path, clip_visual: Path, out_dir: Path, gate_init: float, seed: int) -> Path:
    """A new Flamingo (random adapters) over the pretrained backbones, saved as a checkpoint directory."""
    import torch

    from flamingo import Flamingo, FlamingoConfig
    from flamingo.model import CrossAttnConfig, LMConfig, PerceiverConfig, VisionConfig
    from flamingo.quickstart.text import PROMPTS

    torch.manual_seed(seed)
    config = FlamingoConfig(
        lm=LMConfig(name_or_path=str(lm_dir.resolve())),
        vision=VisionConfig(
            kind="open_clip",
            name=CLIP_NAME,
            pretrained=str(clip_visual.resolve()),
            model_cfg=CLIP_CONFIG,
            legacy_tokens=True,
        ),
        perceiver=PerceiverConfig(depth=1, heads=2, dim_head=32, num_latents=4),
        # Gates start at 0.5, not 0: at 0 the image signal reaches the copying head only quadratically in
        # the gate, a saddle from which tiny models learn "copy any name" instead (see docs/quickstart.md,
        # "Why the recipe looks like this").
        cross_attn=CrossAttnConfig(every_n=1, heads=2, dim_head=32, gate_init=gate_init),
        prompts=PROMPTS,  # every checkpoint of the run records them; the pipeline and the evaluator read them
    )
    model = Flamingo.from_config(config)
    model.save_pretrained(str(out_dir))
    return out_dir


VISION_CACHE_MB = 512
"""The training stage's frozen-CLIP feature cache (``train.vision_cache_mb``)."""


def train_config(
    init_dir: Path,
    shards: Path,
    run_dir: Path,
    steps: int,
    batch_size: int,
    threshold: float,
    seed: int,
    *,
    pair_shards: Path | None,
    pair_batch_size: int,
    pair_loss_weight: float,
    pair_pack_tokens: int | None,
    max_images: int = 8,
    max_tokens: int = 160,
) -> Any:
    """The training run, as ``flamingo train`` would read it from YAML: interleaved documents, plus
    image-text pairs when ``pair_shards`` is given (every step takes a batch of each, as in OpenFlamingo),
    packed into rows of ``pair_pack_tokens`` when it is set (``pair_batch_size`` then counts rows). Documents keep
    at most ``max_images`` pictures and ``max_tokens`` tokens."""
    from flamingo.data.loader import SourceConfig
    from flamingo.train.config import (
        CheckpointConfig,
        DataConfig,
        LoggingConfig,
        ModelConfig,
        RunConfig,
        TrainConfig,
    )

    source = SourceConfig(
        name="web",
        kind="interleaved",
        shards=[str(shards)],
        batch_size=batch_size,
        max_tokens=max_tokens,
        max_images=max_images,
        min_image_bytes=0,
        sim_threshold=threshold,
        single_image_drop_prob=0.0,
        shuffle_block=64,
    )
    sources = [source]
    if pair_shards is not None:
        sources.append(
            SourceConfig(
                name="pairs",
                kind="pairs",
                shards=[str(pair_shards)],
                batch_size=pair_batch_size,
                loss_weight=pair_loss_weight,
                max_tokens=16,
                pack=pair_pack_tokens is not None,
                pack_max_tokens=pair_pack_tokens,
                min_image_bytes=0,
                shuffle_block=64,
            )
        )
    return RunConfig(
        run_dir=str(run_dir),
        model=ModelConfig(kind="pretrained", name=str(init_dir), seed=seed),
        data=DataConfig(sources=sources, prefetch=2),
        train=TrainConfig(
            steps=steps,
            lr=3e-3,
            weight_decay=0.0,
            warmup_steps=20,
            schedule="cosine",
            min_lr_ratio=0.1,
            precision="fp32",
            device="cpu",
            seed=seed,
            # Each picture comes back about eight times and the CLIP is frozen: its features of the
            # quickstart's 27,600 pictures (16 x 64 floats each) take 113 MB.
            vision_cache_mb=VISION_CACHE_MB,
        ),
        checkpoint=CheckpointConfig(every=0, keep_last=1, save_backbones=True),
        logging=LoggingConfig(every=5, progress=False),
    )


class TrainProgress:
    """The training stage's progress line, from the trainer's logged records: about ``lines`` lines per run, each
    with the step, the loss, the time spent and an estimate of the time left. It only reads the records (and the
    clock), so training computes exactly what it would without it."""

    def __init__(self, steps: int, log: Callable[[str], None], lines: int = 10) -> None:
        self.steps, self.log = steps, log
        self.every = max(1, steps // lines)
        self.next = self.every
        self.started = time.perf_counter()

    def __call__(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        if step < self.next and step != self.steps:
            return
        self.next = (step // self.every + 1) * self.every
        spent = time.perf_counter() - self.started
        left = spent / step * (self.steps - step) if step else 0.0
        self.log(
            f"    train step {step}/{self.steps}: loss {record['loss']:.3f}, {_duration(spent)} spent, "
            f"about {_duration(left)} left"
        )


def _duration(seconds: float) -> str:
    """``42s`` or ``3m05s``."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def train_adapters(
    config: Any, log: Callable[[str], None] | None = None
) -> tuple[Path, list[dict[str, Any]]]:
    """Train with the framework's trainer; returns the trained model directory and the logged metrics. With
    ``log``, a progress line (step, loss, time spent and left) about every tenth of the run."""
    from flamingo.train.trainer import train

    progress = TrainProgress(config.train.steps, log) if log is not None else None
    result = train(config, on_log=progress)
    if result.model_dir is None:
        raise RuntimeError("training wrote no checkpoint")
    metrics_file = Path(config.run_dir) / "metrics.jsonl"
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    return result.model_dir, records
