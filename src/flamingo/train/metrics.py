"""Metrics: JSONL always (rank 0), TensorBoard and W&B when asked.

MFU (``mfu`` in the records) = counted FLOPs of a step / its seconds / peak FLOP/s (``logging.peak_flops``); the
trainer counts the first step's FLOPs once (:mod:`flamingo.train.flops`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
