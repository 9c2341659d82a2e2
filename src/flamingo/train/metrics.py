"""Metrics: JSONL always (rank 0), TensorBoard and W&B when asked; throughput and MFU.

Model FLOPs per optimizer step (``flops_per_step``), matmul terms only, attention's quadratic terms ignored:

* text side, per text token: ``6 * P_train`` for the trained weights it passes through (cross-attention blocks,
  added rows and LoRA matrices: forward 2, weight gradient 2, input gradient 2) plus ``4 * P_lm`` for the frozen LM weights
  (forward 2, input gradient 2: the gradient flows back through every frozen layer down to the first
  cross-attention block, but frozen weights need no weight gradient);
* image side, per patch token of each image: ``2 * P_vision`` (frozen, nothing trainable below it: forward only)
  plus ``6 * P_perceiver``.

MFU = achieved model FLOP/s / peak FLOP/s (``logging.peak_flops``; default 989e12 for H100 bf16 on GPU, 70e9
for fp32 on this project's two-thread CPU runners).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flamingo.model.flamingo import Flamingo

GPU_PEAK_FLOPS = 989e12  # H100 SXM dense bf16
CPU_PEAK_FLOPS = 70e9  # fp32, 2 threads


@dataclass
class FlopsModel:
    """The parameter counts :func:`flops_per_step` needs."""

    trained_text: int
    frozen_lm: int
    vision: int
    perceiver: int
    patches_per_image: int

    @classmethod
    def of(cls, model: Flamingo) -> FlopsModel:
        def count(module: torch.nn.Module, trainable: bool | None = None) -> int:
            return sum(
                p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable
            )

        embeddings = model.lm.get_input_embeddings().weight.numel()  # a lookup, not a matmul
        tied = model.lm.get_output_embeddings() is None or model.config.tokens.tied_output
        frozen_lm = count(model.lm, False) - (0 if tied else embeddings)
        # Trained text-side weights: cross-attention, added rows, and the LM's LoRA matrices when they train.
        trained = count(model.cross_attn) + model.new_token_embeddings.numel() + count(model.lm, True)
        patches = (model.vision.image_size // _patch_size(model.vision)) ** 2
        return cls(trained, frozen_lm, count(model.vision), count(model.perceiver), patches)

    def flops(self, text_tokens: int, images: int, encoded_images: int | None = None) -> float:
        """Model FLOPs of a step; ``encoded_images``: images the encoder ran on (default: all ``images``;
        fewer when cached features stood in for the rest)."""
        encoded = images if encoded_images is None else encoded_images
        text = text_tokens * (6 * self.trained_text + 4 * self.frozen_lm)
        vision = self.patches_per_image * (encoded * 2 * self.vision + images * 6 * self.perceiver)
        return float(text + vision)


def _patch_size(vision: torch.nn.Module) -> int:
    """The vision tower's patch size (open_clip ``visual.patch_size`` or a Hugging Face config); 14 if unknown."""
    visual = getattr(vision, "visual", None)
    size = getattr(visual, "patch_size", None)
    if size is None:
        size = getattr(getattr(getattr(vision, "model", None), "config", None), "patch_size", 14)
    return int(size[0] if isinstance(size, tuple | list) else size)


def default_peak_flops(device: torch.device) -> float:
    return GPU_PEAK_FLOPS if device.type == "cuda" else CPU_PEAK_FLOPS


class MetricsLogger:
    """Writes one JSON object per logged step to ``metrics.jsonl``; mirrors scalars to TensorBoard/W&B."""

    def __init__(
        self, run_dir: Path, enabled: bool, tensorboard: bool, wandb: bool, project: str, config: dict
    ) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._tb: Any = None
        self._wandb: Any = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported only when asked for

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError:
                print("logging.wandb is set but wandb is not installed; logging to JSONL only")
            else:
                self._wandb = wandb_module.init(project=project, dir=str(run_dir), config=config)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in _flatten(record).items() if isinstance(v, int | float)}
        step = record.get("step", 0)
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}/")
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_metrics(run_dir: str | Path) -> dict[int, dict[str, Any]]:
    """The logged records of a run by step; a step logged again after a resume keeps its latest record."""
    path = Path(run_dir) / "metrics.jsonl"
    records: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                records[record["step"]] = record
    return records
