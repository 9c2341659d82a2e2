"""The trainer: ``train(config) -> TrainResult``, one process or many under ``torchrun``.

One optimizer step (:meth:`Trainer.train_step`):

1. each source contributes ``grad_accum`` micro-batches; the supervised tokens of each source are counted over
   all its micro-batches and all ranks first, so that every micro-batch's summed token loss can be divided
   by the step's total: the accumulated gradient is exactly that of one big batch (OpenFlamingo divided per
   micro-batch);
2. the objective is ``sum_s loss_weight_s * mean token loss_s``, each source with its own backward passes;
   gradients are synchronised on the last backward only;
3. the accumulated gradient is clipped once; a non-finite loss or gradient on any rank skips the update on
   every rank (one all-reduce carries the flag with the losses), counted; too many in a row stop the run.

Frozen backbones stay in eval mode and get neither gradients nor optimizer state. With ``model.lora.enabled``
the LM gets LoRA matrices (PEFT, injected in place before anything else touches the model, so that resuming,
freezing and DDP/FSDP2 see them like any other trained tensor); only they, the Perceiver, the cross-attention
and the added-token rows train, and their dropout (if any) is the one part of the LM in train mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from flamingo.data.loader import (
    Mixture,
    SourceBatches,
    SourceConfig,
    SourceDataset,
    SourceLoader,
    check_packing,
    pin_memory_for,
)
from flamingo.distributed import DistInfo, barrier
from flamingo.errors import FlamingoError
from flamingo.model.feature_cache import VisionFeatureCache
from flamingo.model.flamingo import Flamingo
from flamingo.model.lora import add_lora, lora_config, lora_modules
from flamingo.model.quantize import is_quantized
from flamingo.train import checkpointing as ckpt
from flamingo.train.config import LoraConfig, ModelConfig, RunConfig
from flamingo.train.data_streams import StreamLoader, load_mixture_stream_states, mixture_stream_states
from flamingo.train.flops import default_peak_flops, flop_counter
from flamingo.train.freeze import freeze_backbones
from flamingo.train.metrics import MetricsLogger
from flamingo.train.optim import build_optimizer, clip_gradients, lr_at, set_lr
from flamingo.train.parallel import (
    all_reduce_sum,
    init_distributed,
    parallelize,
    strategy_for,
)

logger = logging.getLogger(__name__)


class TrainingError(FlamingoError, ValueError):
    """Training cannot go on; the message says why and what to change."""


@dataclass
class StepStats:
    """What one optimizer step did (global over ranks)."""

    step: int
    loss: float
    source_losses: dict[str, float]
    supervised: dict[str, int]
    tokens: int
    samples: int
    images: int
    positions: int
    """Token slots of the step's micro-batches, padding included (rows x sequence length)."""
    grad_norm: float
    lr: float
    skipped: bool
    source_fill: dict[str, float] = field(default_factory=dict)
    """Per source: real tokens / token slots of its micro-batches (its packing efficiency)."""
    encoded_images: int | None = None
    """Images the vision encoder ran on (None: all of them; fewer with ``train.vision_cache_mb``)."""


@dataclass
class TrainResult:
    """The outcome of :func:`train`."""

    run_dir: Path
    step: int
    """Optimizer steps done (including those of a resumed run)."""
    losses: dict[int, float] = field(default_factory=dict)
    """Objective of each step run by this call, by 1-based step."""
    checkpoint: Path | None = None
    """The last checkpoint; its ``model/`` loads with Flamingo.from_pretrained."""
    skipped_steps: int = 0
    data_skips: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per source: samples and images skipped, per reason (rank 0's stream)."""

    @property
    def model_dir(self) -> Path | None:
        """The last checkpoint's loadable model (None for a sharded checkpoint: ``flamingo export`` makes one)."""
        return self.checkpoint / "model" if self.checkpoint and (self.checkpoint / "model").is_dir() else None


def build_model(
    config: ModelConfig, trust_remote_code: bool = False, device: torch.device | None = None
) -> Flamingo:
    """The model to train, with new or (``pretrained``) loaded adapters; backbones not yet frozen.

    ``trust_remote_code`` (the ``--trust-remote-code`` flag, never a config key) lets an LM defined by its
    repository's own code run it. With ``config.quantization`` the frozen LM comes quantized (QLoRA), each
    layer quantized on ``device`` (None: where it was loaded).
    """
    if config.kind == "pretrained":  # with the checkpoint's LoRA, if it has one, on the quantized layers
        return Flamingo.from_pretrained(
            config.name, trust_remote_code=trust_remote_code, quantization=config.quantization, device=device
        )
    model = _build_new(config, trust_remote_code)
    if config.quantization is not None:
        from flamingo.model.quantize import quantize_backbones

        quantize_backbones(model, config.quantization, device)
    return model


def _build_new(config: ModelConfig, trust_remote_code: bool) -> Flamingo:
    """A tiny model or an OpenFlamingo architecture with freshly initialised adapters."""
    if config.kind == "tiny":
        from flamingo.model.tiny import build_tiny_flamingo

        return build_tiny_flamingo(
            config.name,
            vision=config.vision,
            every_n=config.every_n,
            gate_init=config.gate_init,
            width=config.width,
            layers=config.layers,
            seed=config.seed,
        )
    if config.kind == "openflamingo":
        from flamingo.model.convert.openflamingo import openflamingo_config

        return Flamingo.from_config(openflamingo_config(config.name), trust_remote_code=trust_remote_code)
    raise ValueError(f"model.kind={config.kind!r}: use tiny, openflamingo or pretrained")


def prepare_lora(model: Flamingo, config: LoraConfig, seed: int = 0) -> None:
    """Add the configured LoRA to the LM, or check the one the model came with (from a LoRA checkpoint).

    A LoRA that came with the model but is not enabled stays in place, frozen, and is saved with the model.
    """
    existing = lora_config(model)
    if existing is None:
        if config.enabled:
            torch.manual_seed(seed)  # A's random initialisation; B starts at zero
            add_lora(model, config.r, config.alpha, config.dropout, config.target_modules)
        return
    if config.enabled and (existing.r, float(existing.lora_alpha)) != (config.r, float(config.alpha)):
        raise TrainingError(
            f"the starting model already has a LoRA with r={existing.r}, alpha={existing.lora_alpha}, which "
            f"training continues: set model.lora.r={existing.r} model.lora.alpha={existing.lora_alpha}, or "
            "merge it into the LM first (flamingo.model.lora.merge_lora, then save with the backbones)"
        )


def prepare_sources(config: RunConfig, info: DistInfo) -> list[SourceConfig]:
    """The present sources; with ``data.synthetic``, shard-less ones get synthetic shards in <run_dir>/data."""
    from flamingo.data.synthetic import (
        write_synthetic_interleaved,
        write_synthetic_pairs,
        write_synthetic_sft,
    )

    writers = {"pairs": write_synthetic_pairs, "sft": write_synthetic_sft}
    sources = []
    for source in config.data.sources:
        if not source.shards and config.data.synthetic:
            folder = Path(config.run_dir) / "data" / source.name
            if info.is_main and not (folder / ".complete").is_file():
                write = writers.get(source.kind, write_synthetic_interleaved)
                write(folder, config.data.synthetic_samples, seed=config.train.seed, max_samples_per_shard=50)
                (folder / ".complete").touch()
            barrier(info)
            source = dataclasses.replace(source, shards=[str(folder)])
        if source.shards:
            sources.append(source)
    if not sources:
        raise TrainingError(
            "no data source has shards: set data.sources.N.shards, or data.synthetic=true for synthetic data"
        )
    return sources


def build_mixture(config: RunConfig, model: Flamingo, info: DistInfo, streams: int | None = None) -> Mixture:
    """The sources' loaders for this rank; ``streams``: the number of data streams of the run (the number of
    ranks it started on, see :mod:`flamingo.train.data_streams`), None for this run's number of ranks."""
    tokens = model.config.tokens
    sources = prepare_sources(config, info)
    try:
        check_packing(sources, model.config.cross_attn.media_policy)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    streams = streams or info.world_size
    loaders: list[Any] = []
    pin = pin_memory_for(info.device)  # page-locked batches copy to the GPU asynchronously
    for source in sources:

        def dataset(stream: int, source: SourceConfig = source, world: int = streams) -> SourceDataset:
            return SourceDataset(
                source,
                model.tokenizer,
                model.vision.preprocess,
                tokens.image_id,
                tokens.eoc_id,
                seed=config.train.seed,
                rank=stream,
                world_size=world,
            )

        data = config.data
        if streams == info.world_size:
            loaders.append(
                SourceLoader(
                    dataset(info.rank),
                    tokens.pad_id,
                    data.prefetch,
                    data.worker,
                    data.trim_padding,
                    pin_memory=pin,
                )
            )
        else:
            loaders.append(
                StreamLoader(
                    source,
                    dataset,
                    tokens.pad_id,
                    info.rank,
                    info.world_size,
                    streams,
                    data.prefetch,
                    data.worker,
                    data.trim_padding,
                    pin_memory=pin,
                )
            )
    return Mixture(loaders, config.data.mixing, config.train.seed)


class Trainer:
    """Holds the model, optimizer and counters; :meth:`train_step` is one optimizer step, :meth:`fit` the run."""

    def __init__(
        self,
        config: RunConfig,
        model: Flamingo | None = None,
        info: DistInfo | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        self.config = config
        self.info = info or init_distributed(config.parallel, config.train.device)
        quantized_on = self.info.device if config.model.quantization is not None else None
        model = model if model is not None else build_model(config.model, trust_remote_code, quantized_on)
        lora = config.model.lora
        prepare_lora(model, lora, config.train.seed)
        self.resume_from = ckpt.resolve_resume(config.checkpoint.resume, config.run_dir)
        if self.resume_from is not None:
            ckpt.check_resume_lora(self.resume_from, lora.enabled)
            if ckpt.checkpoint_format(self.resume_from) == "full":  # a sharded one loads after parallelize
                ckpt.load_model_weights(model, self.resume_from)
        freeze_backbones(model, config.model.train_new_token_rows, train_lora=lora.enabled)
        torch.manual_seed(config.train.seed)
        self.model = model
        self.strategy = strategy_for(config.parallel, self.info)
        self.save_backbones = self._save_backbones()
        self._check_quantized()
        if lora.merge_on_save and lora.enabled and not self.save_backbones:
            raise TrainingError(
                "model.lora.merge_on_save folds the LoRA into a saved copy of the LM, so the checkpoints must "
                "hold the backbones: set checkpoint.save_backbones=true (not possible under FSDP)"
            )
        self.train_model, self.strategy = parallelize(model, config.parallel, self.info, self._param_dtype())
        self.optimizer = build_optimizer(self.train_model, config.train, lora.weight_decay)
        self.trainable = [p for p in self.train_model.parameters() if p.requires_grad]
        self.step, self.skipped_steps, self.skipped_in_row = 0, 0, 0
        self.data_state: dict[int, dict[str, Any]] | None = None
        self.data_streams = self.info.world_size
        """Data streams of the run: the number of ranks it started on (flamingo.train.data_streams)."""
        if self.resume_from is not None:
            shared, self.data_state = ckpt.load_training_state(
                self.resume_from, self.train_model, self.optimizer, self.info
            )
            self.step, self.skipped_steps = shared["step"], shared["skipped_steps"]
            self.skipped_in_row, self.data_streams = shared["skipped_in_row"], shared["data_streams"]
        self.pending: ckpt.PendingCheckpoint | None = None
        """A checkpoint being written in the background (checkpoint.async_save), published when complete."""
        self._background_group: Any = None
        self.step_flops: tuple[float, int] | None = None
        """(FLOPs this rank counted in its first step, that step's token slots): what MFU is measured from."""
        self.vision_cache = self._vision_cache()
        self.loader_bound_steps = 0
        """Steps of this run (its first excepted) that waited for data longer than ``logging.loader_warn_share``."""

    def _vision_cache(self) -> VisionFeatureCache | None:
        """The frozen encoder's feature cache that ``train.vision_cache_mb`` asks for, set on the model."""
        megabytes = self.config.train.vision_cache_mb
        if megabytes <= 0:
            return None
        if any(p.requires_grad for p in self.model.vision.parameters()):
            raise TrainingError(
                "train.vision_cache_mb caches a frozen vision encoder's features, but the encoder trains here: "
                "set train.vision_cache_mb=0"
            )
        if self.strategy == "fsdp":
            raise TrainingError(
                "train.vision_cache_mb does not work with parallel.strategy=fsdp: a rank whose images are all "
                "cached would skip the sharded encoder's all-gathers that the other ranks wait in; use ddp or "
                "set train.vision_cache_mb=0"
            )
        self.model.vision_cache = VisionFeatureCache(megabytes * 2**20)
        return self.model.vision_cache

    # ------------------------------------------------------------------ precision and modes
    def _use_bf16(self) -> bool:
        precision = self.config.train.precision
        return precision == "bf16" or (precision == "auto" and self.info.device.type == "cuda")

    def _param_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self._use_bf16() and self.config.parallel.strategy == "fsdp" else None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self._use_bf16():
            return contextlib.nullcontext()
        return torch.autocast(self.info.device.type, dtype=torch.bfloat16)

    def _set_modes(self) -> None:
        """Adapters in train mode, frozen backbones in eval mode (no dropout, frozen norms' statistics); the
        LM's trained LoRA layers in train mode (their dropout)."""
        self.train_model.train()
        self.model.lm.eval()
        self.model.vision.eval()
        if self.config.model.lora.enabled:
            for layer in lora_modules(self.model.lm).values():
                layer.lora_dropout.train()

    def _grad_sync(self, enabled: bool) -> contextlib.AbstractContextManager:
        """Synchronise gradients only on the step's last backward (DDP no_sync / FSDP2 gradient sync)."""
        if self.strategy == "ddp" and not enabled:
            return self.train_model.no_sync()
        if self.strategy == "fsdp":
            self.train_model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ one step
    def _token_loss_sum(self, batch: Any) -> torch.Tensor:
        """Summed next-token cross-entropy of a micro-batch over its supervised tokens (fp32)."""
        batch = batch.to(self.info.device)
        with self._autocast():
            # The loss alone: the model computes it from its final hidden states, without the (b, s, vocab)
            # logits (flamingo.model.loss), where the LM family allows it.
            out = self.train_model(
                batch.images,
                batch.input_ids,
                batch.attention_mask,
                batch.labels,
                image_mask=batch.image_mask,
                return_logits=False,
                loss_reduction="sum",
            )
        return out.loss.float()

    def _backward_all(self, sources: list[SourceBatches], totals: torch.Tensor) -> torch.Tensor:
        """Forward/backward every micro-batch; returns this rank's summed token loss per source."""
        sums = torch.zeros(len(sources), dtype=torch.float64)
        last = sum(len(s.micro_batches) for s in sources)
        done = 0
        for index, source in enumerate(sources):
            # DDP and FSDP average gradients over ranks; * world_size turns that into the global sum.
            scale = source.loss_weight * self.info.world_size / float(totals[index].clamp(min=1))
            for batch in source.micro_batches:
                done += 1
                with self._grad_sync(done == last):
                    loss_sum = self._token_loss_sum(batch)
                    (loss_sum * scale).backward()
                sums[index] += loss_sum.detach().double().cpu()
        return sums

    def train_step(self, sources: list[SourceBatches]) -> StepStats:
        """One optimizer step over the micro-batches of ``sources`` (see the module docstring)."""
        self._set_modes()
        batches = [b for s in sources for b in s.micro_batches]
        local = [[b.num_supervised for b in s.micro_batches] for s in sources]
        totals = all_reduce_sum(torch.tensor([sum(c) for c in local], dtype=torch.float64), self.info)
        misses = self.vision_cache.misses if self.vision_cache is not None else 0
        sums = self._backward_all(sources, totals)
        norm = clip_gradients(self.trainable, self.config.train.grad_clip).detach().double().cpu()
        n = len(sources)
        # Real tokens and token slots (padding included) per source, then samples, images, the non-finite flag:
        # one all-reduce carries them all with the losses.
        fill = [
            [sum(b.num_tokens for b in s.micro_batches), sum(b.input_ids.numel() for b in s.micro_batches)]
            for s in sources
        ]
        extra = [sum(len(b) for b in batches), sum(int(b.image_mask.sum()) for b in batches)]
        extra.append(extra[-1] if self.vision_cache is None else self.vision_cache.misses - misses)
        extra.append(float(not torch.isfinite(norm)))
        local_stats = [sums, torch.tensor(fill, dtype=torch.float64).flatten()]
        reduced = all_reduce_sum(
            torch.cat([*local_stats, torch.tensor(extra, dtype=torch.float64)]), self.info
        )
        losses = reduced[:n] / totals.clamp(min=1)
        filled = reduced[n : 3 * n].view(n, 2)  # (sources, [real tokens, slots])
        samples, images, encoded, flag = reduced[3 * n :].tolist()
        objective = sum(s.loss_weight * float(v) for s, v in zip(sources, losses))
        bad = flag > 0 or not torch.isfinite(losses).all().item()
        lr = lr_at(self.step, self.config.train.lr, self.config.train, self.config.train.steps)
        self._update(bad, lr)
        return StepStats(
            step=self.step,
            loss=objective,
            source_losses={s.name: float(v) for s, v in zip(sources, losses)},
            supervised={s.name: int(t) for s, t in zip(sources, totals)},
            tokens=int(filled[:, 0].sum()),
            samples=int(samples),
            images=int(images),
            positions=int(filled[:, 1].sum()),
            grad_norm=float(norm),
            lr=lr,
            skipped=bad,
            source_fill={s.name: float(f[0] / f[1].clamp(min=1)) for s, f in zip(sources, filled)},
            encoded_images=None if self.vision_cache is None else int(encoded),
        )

    def _update(self, bad: bool, lr: float) -> None:
        """Apply the step, or skip it (on every rank alike) when the loss or gradient is not finite."""
        if bad:
            self.skipped_steps += 1
            self.skipped_in_row += 1
        else:
            set_lr(self.optimizer, lr)
            self.optimizer.step()
            self.skipped_in_row = 0
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1  # the schedule advances over skipped steps too: their data was consumed
        limit = self.config.train.max_nonfinite_steps
        if self.skipped_in_row >= limit:
            raise TrainingError(
                f"{limit} optimizer steps in a row (up to step {self.step}) had a non-finite loss or gradient, "
                "so their updates were skipped; lower train.lr, keep train.grad_clip > 0, use "
                "train.precision=fp32, or check the data (flamingo data validate)"
            )

    # ------------------------------------------------------------------ the run
    def _save_backbones(self) -> bool:
        backbones = self.config.checkpoint.save_backbones
        if backbones is None:  # tiny backbones (or a checkpoint's own copies) have no other home;
            # sharded ones cannot be written whole; quantized ones are never written (QLoRA saves adapters+LoRA)
            own = self.config.model.kind == "tiny" or self.model.config.backbones_included
            backbones = own and self.strategy != "fsdp" and not is_quantized(self.model)
        return backbones

    def _check_quantized(self) -> None:
        """A quantized (QLoRA) run saves adapters and LoRA only, and runs on one device or under DDP."""
        if not is_quantized(self.model):
            return
        if self.save_backbones:
            raise TrainingError(
                "checkpoint.save_backbones=true with model.quantization: the low-bit backbones must not replace "
                "the originals; leave checkpoint.save_backbones unset (adapters and LoRA are saved)"
            )
        if self.config.model.lora.merge_on_save:
            raise TrainingError(
                "model.lora.merge_on_save with model.quantization: LoRA cannot be folded into quantized layers; "
                "set model.lora.merge_on_save=false and merge later on the unquantized model"
            )
        if self.strategy == "fsdp":
            raise TrainingError(
                "model.quantization does not work with parallel.strategy=fsdp (quantized weights cannot be "
                "sharded here): use ddp or one device"
            )

    def save(self, mixture: Mixture) -> Path | None:
        """Write a checkpoint of this step; its directory, or None while it is written in the background."""
        config = self.config
        self.publish_pending(wait=True)  # one background checkpoint at a time
        shared = {"skipped_steps": self.skipped_steps, "skipped_in_row": self.skipped_in_row}
        shared["lora_trained"] = config.model.lora.enabled
        shared["data_streams"] = self.data_streams
        per_rank = {"streams": mixture_stream_states(mixture, self.info)}
        if config.checkpoint.format == "full":
            return ckpt.save_checkpoint(
                config.run_dir,
                self.step,
                self.model,
                self.train_model,
                self.optimizer,
                shared,
                per_rank,
                self.info,
                config.checkpoint.keep_last,
                self.save_backbones,
                merge_lora=config.model.lora.merge_on_save,
                run_config=config,
            )
        if config.model.lora.merge_on_save and config.model.lora.enabled:
            raise TrainingError(
                "model.lora.merge_on_save needs checkpoint.format=full; with sharded checkpoints, "
                "`flamingo export` writes the model"
            )
        asynchronous = config.checkpoint.async_save
        if asynchronous and self.info.distributed and self._background_group is None:
            import torch.distributed as dist

            self._background_group = dist.new_group(backend="gloo")
        pending = ckpt.save_sharded_checkpoint(
            config.run_dir,
            self.step,
            self.train_model,
            self.optimizer,
            shared,
            per_rank,
            self.info,
            config.checkpoint.keep_last,
            run_config=config,
            background_group=self._background_group,
            asynchronous=asynchronous,
        )
        if asynchronous:
            self.pending = pending
            return None
        return pending.path

    def publish_pending(self, wait: bool) -> Path | None:
        """Publish the background checkpoint if every rank has finished writing it (``wait``: wait for that).

        Collective: every rank calls it at the same point. Returns the published directory, or None.
        """
        if self.pending is None:
            return None
        if not wait:
            finished = torch.tensor([float(self.pending.done())], dtype=torch.float64)
            if float(all_reduce_sum(finished, self.info)) < self.info.world_size:
                return None
        path, self.pending = self.pending.publish(), None
        return path

    def fit(self, on_log: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
        """Train up to ``train.steps`` optimizer steps, logging and checkpointing on the way; ``on_log`` (main rank
        only) receives each record written to ``metrics.jsonl``, for a caller's own progress line."""
        from tqdm.auto import tqdm

        config, info = self.config, self.info
        run_dir = Path(config.run_dir)
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            config.save(run_dir / "config.yaml")
        mixture = build_mixture(config, self.model, info, self.data_streams)
        if self.data_state is not None:
            load_mixture_stream_states(mixture, self.data_state, info)
        logger = MetricsLogger(
            run_dir,
            info.is_main,
            config.logging.tensorboard,
            config.logging.wandb,
            config.logging.wandb_project,
            config.to_dict(),
        )
        result = TrainResult(run_dir, self.step, checkpoint=self.resume_from)
        bar = tqdm(
            total=config.train.steps,
            initial=self.step,
            disable=not (info.is_main and config.logging.progress),
            desc="train",
        )
        try:
            while self.step < config.train.steps:
                started = time.perf_counter()
                sources = mixture.next_step(self.step, config.train.grad_accum)
                waited = time.perf_counter() - started  # the step's time spent waiting for its batches
                stats = self._counted_step(sources)
                record = self._record(stats, time.perf_counter() - started, mixture, waited)
                if info.is_main and stats.step > result.step + 1:  # the first step also starts the workers
                    self._watch_loader(record)
                result.losses[stats.step] = stats.loss
                if stats.step % config.logging.every == 0 or stats.step == config.train.steps:
                    logger.log(record)
                    if on_log is not None and info.is_main:
                        on_log(record)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{stats.loss:.4f}",
                    lr=f"{stats.lr:.2e}",
                    tok_s=f"{record['tokens_per_s']:.0f}",
                    mfu=f"{record['mfu']:.1%}",
                    data_wait=f"{record['loader_wait_share']:.0%}",
                )
                result.checkpoint = self.publish_pending(wait=False) or result.checkpoint
                every = config.checkpoint.every
                if (every and stats.step % every == 0) or stats.step == config.train.steps:
                    result.checkpoint = self.save(mixture) or result.checkpoint
            result.checkpoint = self.publish_pending(wait=True) or result.checkpoint
        finally:
            bar.close()
            mixture.close()
            logger.close()
        result.step, result.skipped_steps, result.data_skips = self.step, self.skipped_steps, mixture.counts()
        return result

    def _counted_step(self, sources: list[SourceBatches]) -> StepStats:
        """:meth:`train_step`, after counting the FLOPs of this process's first step (:mod:`flamingo.train.flops`).

        The count runs the step's forward and backward once more, on the same micro-batches, and throws its
        gradients away. It cannot run inside the real step: the counter's module hooks change the order in
        which gradients are summed, so a counted step's numbers differ in the last bits, and a resumed run
        (which counts its own first step) would no longer repeat the uninterrupted one bit for bit.
        """
        if self.step_flops is None:
            self._set_modes()
            local = [sum(b.num_supervised for b in s.micro_batches) for s in sources]
            totals = all_reduce_sum(torch.tensor(local, dtype=torch.float64), self.info)
            # The encoder's feature cache stays out of it: the count sees the encoder's work, and the real step
            # finds the cache as it would without the count.
            cache, self.model.vision_cache = getattr(self.model, "vision_cache", None), None
            try:
                with torch.random.fork_rng(devices=[]), flop_counter() as counter:
                    self._backward_all(sources, totals)
            finally:
                self.model.vision_cache = cache
            self.optimizer.zero_grad(set_to_none=True)
            positions = sum(b.input_ids.numel() for s in sources for b in s.micro_batches)
            self.step_flops = (float(counter.get_total_flops()), max(positions, 1))
        return self.train_step(sources)

    def _watch_loader(self, record: dict[str, Any]) -> None:
        """Warn when the step waited for data longer than ``logging.loader_warn_share`` of its time: on the
        first such step, then on the 10th, 100th, 1000th, ... (once, then rarely)."""
        share = record["loader_wait_share"]
        if share <= self.config.logging.loader_warn_share:
            return
        self.loader_bound_steps += 1
        count = self.loader_bound_steps
        if count == 10 ** (len(str(count)) - 1):  # 1, 10, 100, ...
            workers = {source.name: source.num_workers for source in self.config.data.sources}
            logger.warning(
                "step %d waited %.0f%% of its %.3f s for data (the loader is the bottleneck; %d such step(s) "
                "so far): raise data.sources.N.num_workers (now %s), use data.worker=process, or give the job "
                "more CPU cores",
                record["step"],
                100 * share,
                record["step_seconds"],
                count,
                workers,
            )

    def _record(
        self, stats: StepStats, seconds: float, mixture: Mixture, waited: float = 0.0
    ) -> dict[str, Any]:
        """The JSONL record of a step: losses, lr, norms, throughput, MFU, the loader's share and skip counts.

        MFU: the first step's counted FLOPs, scaled to this step's token slots (a step's arithmetic grows with
        them), over the step's time and this rank's peak (every rank does its share of the same step).
        ``loader_wait_share``: the part of the step (``waited`` of ``seconds``) this rank spent waiting for its
        batches; near 0 when the workers keep ahead, near 1 when the step is starved for data.
        """
        seconds = max(seconds, 1e-9)
        counted, counted_positions = self.step_flops or (0.0, 1)
        flops = counted * stats.positions / counted_positions  # this rank's
        peak = self.config.logging.peak_flops or default_peak_flops(self.info.device)
        record: dict[str, Any] = {"step": stats.step, "loss": stats.loss, "lr": stats.lr}
        record |= {f"loss/{name}": value for name, value in stats.source_losses.items()}
        record |= {
            "grad_norm": stats.grad_norm,
            "skipped_step": stats.skipped,
            "skipped_steps": self.skipped_steps,
            "samples_per_s": stats.samples / seconds,
            "tokens_per_s": stats.tokens / seconds,
            "mfu": flops / seconds / peak,
            "step_seconds": seconds,
            "loader_wait_s": waited,
            "loader_wait_share": min(waited / seconds, 1.0),
        }
        tokens = max(stats.tokens, 1)
        record["supervised_fraction"] = sum(stats.supervised.values()) / tokens
        # Real tokens over token slots: what padding wastes, and what packing (data.sources.N.pack) wins back.
        record["packing_efficiency"] = stats.tokens / max(stats.positions, 1)
        record |= {f"packing_efficiency/{name}": value for name, value in stats.source_fill.items()}
        if stats.encoded_images is not None:
            record["vision_cache_hit_rate"] = 1 - stats.encoded_images / max(stats.images, 1)
        record["skipped_samples"] = mixture.counts()
        return record


def train(
    config: RunConfig,
    trust_remote_code: bool = False,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Run a training job described by ``config`` (see flamingo.train.config); the CLI calls this.

    ``trust_remote_code`` lets an LM defined by its repository's own code run it; it is an argument (the CLI's
    ``--trust-remote-code``) because a config file must not be able to grant it. ``on_log`` receives every
    logged metrics record (see :meth:`Trainer.fit`).
    """
    import torch.distributed as dist

    started_group = not (dist.is_available() and dist.is_initialized())
    trainer = Trainer(config, trust_remote_code=trust_remote_code)
    try:
        return trainer.fit(on_log)
    finally:
        if started_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
