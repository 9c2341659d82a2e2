"""Training configs: typed dataclasses, one per component, loaded from YAML with dotted overrides.

Example::

    config = load_config("configs/train/tiny-cpu.yaml", ["train.lr=3e-4", "data.sources.0.batch_size=8"])

Every field has a one-line docstring (``flamingo train --help-config`` prints them). Unknown keys and values
of the wrong type are errors that name the key and the file.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from flamingo.configs import (
    MAX_SEED,
    ConfigError,
    between,
    bounds_text,
    from_mapping,
    read_mapping,
    valid_text,
)
from flamingo.data.loader import SourceConfig
from flamingo.errors import MissingFileError
from flamingo.model.quantize import QuantizationConfig

MAX_STEPS = 100_000_000
"""Largest number of steps (optimizer steps, warm-up, checkpoint and logging intervals)."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class LoraConfig:
    """LoRA on the language model (PEFT, injected in place; see flamingo.model.lora)."""

    enabled: bool = False
    """Add and train LoRA matrices in the LM's linear layers (the LM's own weights stay frozen)."""
    r: int = field(default=8, metadata=between(1, 4096))
    """Rank of each update ``B A``."""
    alpha: float = field(default=16.0, metadata=between(0, 1e6, above=True))
    """Scale: the update is ``(alpha / r) * B A x``."""
    dropout: float = field(default=0.0, metadata=between(0, 1))
    """Dropout on the LoRA branch's input during training."""
    target_modules: str | list[str] = "auto"
    """``auto``: the decoder layers' linear projections; ``all-linear``: all but the head; or a list of names.
    ``auto`` takes attention and MLP projections whatever the family calls them; a listed name matches itself
    and any ``*.name``. The head and the embeddings are refused."""
    weight_decay: float = field(default=0.0, metadata=between(0, 100))
    """Decoupled weight decay of the LoRA matrices (0: none, as QLoRA; decay pulls B A towards the base LM)."""
    merge_on_save: bool = False
    """Fold the LoRA into the saved LM copy model/lm/ (needs saved backbones) instead of writing model/lora/.
    The unmerged LoRA is then kept in the checkpoint's lora/ for resuming."""

    def __post_init__(self) -> None:
        _check(self.r >= 1, f"model.lora.r must be at least 1, got {self.r}")
        _check(self.alpha > 0, f"model.lora.alpha must be positive, got {self.alpha}")
        _check(0.0 <= self.dropout < 1.0, f"model.lora.dropout must be in [0, 1), got {self.dropout}")
        _check(self.weight_decay >= 0, f"model.lora.weight_decay must be >= 0, got {self.weight_decay}")
        targets = self.target_modules
        _check(
            targets in ("auto", "all-linear")
            or (isinstance(targets, list) and bool(targets) and all(isinstance(t, str) for t in targets)),
            f"model.lora.target_modules must be 'auto', 'all-linear' or a list of layer names, got {targets!r}",
        )


@dataclass
class ModelConfig:
    """Which Flamingo to train."""

    kind: Literal["tiny", "openflamingo", "pretrained"] = "tiny"
    """``tiny``: a random model from flamingo.model.tiny; ``openflamingo``: a released architecture with new
    adapters; ``pretrained``: a flamingo-vlm checkpoint directory or hub id."""
    name: str = "llama"
    """tiny: the LM family (llama, gpt2, ...); openflamingo: the preset; pretrained: the path or hub id."""
    vision: str = "open_clip"
    """tiny only: open_clip, clip or siglip."""
    every_n: int = field(default=1, metadata=between(1, 1024))
    """tiny only: cross-attention before every n-th decoder layer."""
    gate_init: float = field(default=0.0, metadata=between(-10, 10))
    """tiny only: initial value of the tanh gates."""
    width: int = field(default=64, metadata=between(1, 8192))
    """tiny only: LM width."""
    layers: int = field(default=4, metadata=between(1, 256))
    """tiny only: LM decoder layers."""
    seed: int = field(default=0, metadata=between(0, MAX_SEED))
    """tiny only: seed of the random backbone weights (they are rebuilt on resume)."""
    train_new_token_rows: bool = True
    """Train the embedding rows of <image>, <|endofchunk|> and pad."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA on the language model."""
    quantization: QuantizationConfig | None = None
    """QLoRA: the frozen LM's linear layers in int8 or int4, e.g. ``{mode: int4}`` (flamingo.model.quantize)."""

    def __post_init__(self) -> None:
        _check(
            self.kind in ("tiny", "openflamingo", "pretrained"),
            f"model.kind must be tiny, openflamingo or pretrained, got {self.kind!r}",
        )
        _check(self.every_n >= 1, f"model.every_n must be at least 1, got {self.every_n}")


@dataclass
class DataConfig:
    """The sources and how they are mixed."""

    sources: list[SourceConfig] = field(default_factory=list)
    """The data sources; a source without shards is absent (or synthetic, see ``synthetic``)."""
    mixing: Literal["all", "sample"] = "all"
    """``all``: every step uses every source (OpenFlamingo); ``sample``: one source per step by sample_weight."""
    synthetic: bool = False
    """Generate synthetic shards into <run_dir>/data for sources without shards (tiny runs and tests)."""
    synthetic_samples: int = field(default=200, metadata=between(1, 10_000_000))
    """Documents, pairs or conversations generated per synthetic source."""
    prefetch: int = field(default=2, metadata=between(0, 1024))
    """Micro-batches built ahead per source by its worker (0: none, built in the training loop)."""
    worker: Literal["process", "thread"] = "process"
    """Where each source's batches are built: ``process`` (a forked worker process per source, so reading,
    decoding and tokenizing run beside the training step instead of taking turns with it for the GIL; falls
    back to ``thread`` where ``fork`` is unavailable) or ``thread`` (a background thread)."""
    trim_padding: bool = True
    """Cut each micro-batch after its longest sample's last real token instead of keeping every sample's
    ``max_tokens`` (OpenFlamingo pads to ``max_tokens``): the loss is the same, the step shorter. Turn it off for
    fixed shapes (``torch.compile`` recompiles for new lengths)."""

    def __post_init__(self) -> None:
        names = [source.name for source in self.sources]
        _check(len(set(names)) == len(names), f"data.sources names must be unique, got {names}")
        _check(self.mixing in ("all", "sample"), f"data.mixing must be all or sample, got {self.mixing!r}")
        _check(self.synthetic_samples >= 1, "data.synthetic_samples must be at least 1")
        _check(
            self.worker in ("process", "thread"),
            f"data.worker must be process or thread, got {self.worker!r}",
        )
        _check(self.prefetch >= 0, f"data.prefetch must be at least 0, got {self.prefetch}")


@dataclass
class OptimizerConfig:
    """AdamW over the trainable parameters."""

    lr: float = field(default=1e-4, metadata=between(0, 10, above=True))
    """Peak learning rate."""
    weight_decay: float = field(default=0.1, metadata=between(0, 100))
    """Decoupled weight decay of the parameters chosen by ``decay_on``."""
    decay_on: Literal["cross_attn", "cross_attn_matrices", "none"] = "cross_attn"
    """``cross_attn``: every cross-attention parameter (OpenFlamingo); ``cross_attn_matrices``: only its
    weight matrices (no gates, norms or biases)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata=between(0, 1))
    """AdamW betas."""
    eps: float = field(default=1e-8, metadata=between(0, 1))
    """AdamW epsilon."""
    grad_clip: float = field(default=1.0, metadata=between(0, 1e6))
    """Clip the global gradient norm of each optimizer step to this (0: no clipping)."""


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, counted in optimizer steps."""

    warmup_steps: int = field(default=0, metadata=between(0, MAX_STEPS))
    """Linear warm-up from lr/warmup_steps to lr."""
    schedule: Literal["constant", "cosine"] = "constant"
    """After warm-up: ``constant`` or ``cosine`` decay to min_lr_ratio * lr at the last step."""
    min_lr_ratio: float = field(default=0.0, metadata=between(0, 1))
    """Floor of the cosine schedule as a fraction of lr."""


@dataclass
class TrainConfig(OptimizerConfig, ScheduleConfig):
    """The loop: steps, accumulation, precision; includes the optimizer and schedule fields (train.lr, ...)."""

    steps: int = field(default=100, metadata=between(1, MAX_STEPS))
    """Optimizer steps to run."""
    grad_accum: int = field(default=1, metadata=between(1, 65536))
    """Micro-batches per source accumulated into one optimizer step."""
    seed: int = field(default=0, metadata=between(0, MAX_SEED))
    """Seed of the data order and the torch RNG."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """``auto``: bf16 autocast on GPU, fp32 on CPU; ``fp32``; ``bf16`` autocast."""
    device: str = "auto"
    """``auto`` (cuda when available), ``cpu`` or ``cuda``."""
    max_nonfinite_steps: int = field(default=10, metadata=between(1, MAX_STEPS))
    """Stop after this many optimizer steps in a row skipped for a non-finite loss or gradient."""
    vision_cache_mb: int = field(default=0, metadata=between(0, 1 << 20))
    """Keep the frozen vision encoder's output of each image, up to this many megabytes, and reuse it when the
    same pixels come again (0: off). Worth it when a run sees its images several times (small datasets, many
    epochs, no random augmentation); a single pass over web data only pays for the hashing. Not with FSDP."""

    def __post_init__(self) -> None:
        _check(self.steps >= 1, f"train.steps must be at least 1, got {self.steps}")
        _check(self.grad_accum >= 1, f"train.grad_accum must be at least 1, got {self.grad_accum}")
        _check(self.lr > 0, f"train.lr must be positive, got {self.lr}")
        _check(self.warmup_steps >= 0, "train.warmup_steps must be >= 0")
        _check(len(self.betas) == 2, f"train.betas must have two values, got {self.betas}")
        _check(self.schedule in ("constant", "cosine"), "train.schedule must be constant or cosine")
        _check(self.precision in ("auto", "fp32", "bf16"), "train.precision must be auto, fp32 or bf16")
        _check(self.max_nonfinite_steps >= 1, "train.max_nonfinite_steps must be at least 1")
        _check(self.vision_cache_mb >= 0, f"train.vision_cache_mb must be >= 0, got {self.vision_cache_mb}")


@dataclass
class ParallelConfig:
    """Distribution and memory/speed techniques (applied in the order of flamingo.train.parallel)."""

    strategy: Literal["auto", "none", "ddp", "fsdp"] = "auto"
    """``auto``: ddp under torchrun with several ranks, else none; ``fsdp``: FSDP2 fully_shard."""
    activation_checkpointing: bool = False
    """Recompute decoder layers in the backward pass (the cross-attention runs outside)."""
    compile: bool = False
    """torch.compile each decoder layer and cross-attention block."""
    backend: str = "auto"
    """Process-group backend: ``auto`` (nccl on GPU, gloo on CPU), ``gloo`` or ``nccl``."""
    fsdp_reshard_after_forward: bool = True
    """FSDP2: free gathered parameters after forward (less memory, one more all-gather)."""

    def __post_init__(self) -> None:
        _check(self.strategy in ("auto", "none", "ddp", "fsdp"), "parallel.strategy: auto, none, ddp or fsdp")


@dataclass
class CheckpointConfig:
    """Resumable checkpoints under <run_dir>/checkpoints."""

    every: int = field(default=0, metadata=between(0, MAX_STEPS))
    """Save every this many optimizer steps (0: only at the end)."""
    keep_last: int = field(default=3, metadata=between(1, 1_000_000))
    """Checkpoints kept; older ones are deleted."""
    resume: str | None = None
    """``auto``: continue from the latest checkpoint of run_dir if any; or a checkpoint directory."""
    save_backbones: bool | None = None
    """Store the frozen backbones in each checkpoint; None: for tiny models (no other home), not under FSDP."""
    format: Literal["full", "sharded"] = "full"
    """``full``: rank 0 gathers and writes model/ (loadable as is) and optimizer.pt; ``sharded``: every rank writes
    its own shards with torch.distributed.checkpoint (``flamingo export`` makes a model of it)."""
    async_save: bool = False
    """With format=sharded: write checkpoints in the background while training goes on."""

    def __post_init__(self) -> None:
        _check(self.every >= 0, "checkpoint.every must be >= 0")
        _check(self.keep_last >= 1, "checkpoint.keep_last must be at least 1")
        _check(
            self.format in ("full", "sharded"),
            f"checkpoint.format must be full or sharded, got {self.format!r}",
        )
        _check(
            not self.async_save or self.format == "sharded",
            "checkpoint.async_save needs checkpoint.format=sharded",
        )


@dataclass
class LoggingConfig:
    """Metrics: JSONL always; progress bar, TensorBoard and W&B optional."""

    every: int = field(default=1, metadata=between(1, MAX_STEPS))
    """Write metrics every this many optimizer steps."""
    progress: bool = True
    """Show a tqdm progress bar (rank 0)."""
    tensorboard: bool = False
    """Also write TensorBoard events to <run_dir>/tensorboard."""
    wandb: bool = False
    """Also log to Weights & Biases (only if wandb is installed)."""
    wandb_project: str = "flamingo-vlm"
    """W&B project."""
    peak_flops: float | None = field(default=None, metadata=between(0, 1e21, above=True))
    """Device peak FLOP/s for MFU; None: 989e12 (H100 bf16) on GPU, 70e9 on CPU."""
    loader_warn_share: float = field(default=0.25, metadata=between(0, 1))
    """Warn (once, then rarely) when a step spends more than this share of its time waiting for batches: the
    data workers cannot keep up (the share is logged as ``loader_wait_share`` either way)."""

    def __post_init__(self) -> None:
        _check(self.every >= 1, "logging.every must be at least 1")


@dataclass
class RunConfig:
    """A whole training run."""

    run_dir: str = "runs/flamingo"
    """Where metrics, checkpoints, the final model and synthetic data go."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model."""
    data: DataConfig = field(default_factory=DataConfig)
    """The data."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The loop, optimizer and schedule."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Distribution."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoints."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metrics."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# ---------------------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """A :class:`RunConfig` from a YAML file (or the defaults) with ``key.sub=value`` overrides applied.

    The file and the overrides go through the same checks (types, bounds, unknown keys); an error names the
    file, or the override when the value came from one.
    """
    data: dict[str, Any] = {}
    source = str(path) if path else "<defaults>"
    if path is not None:
        path = _preset_or_path(path)
        data = read_mapping(path, "training config")
    origins = {apply_override(data, override): f"override '{override}'" for override in overrides or []}
    _refuse_remote_code_key(data, source)
    return from_dict(RunConfig, data, source, origins=origins)


def _preset_or_path(path: str | Path) -> Path:
    """``path`` if it is a file, else the preset of that name shipped in the wheel (``configs/train/of-3b.yaml``,
    ``of-3b.yaml`` or ``of-3b``), so that the presets work outside a clone of the repository."""
    if Path(path).is_file():
        return Path(path)
    name = Path(path).name if Path(path).suffix in (".yaml", ".yml") else f"{Path(path).name}.yaml"
    here = Path(__file__).resolve()
    for configs in (here.parents[1] / "recipes", here.parents[3] / "configs"):  # the wheel's, a clone's
        if (configs / "train" / name).is_file():
            return configs / "train" / name
    raise MissingFileError(f"{path}: no such config file (presets are in configs/train/)")


def _refuse_remote_code_key(data: Any, source: str, where: str = "") -> None:
    """A config (file or override) never grants running a model's own code: only ``--trust-remote-code`` does."""
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{where}.{key}" if where else str(key)
            if key == "trust_remote_code":
                raise ConfigError(
                    f"{source}: '{path}' cannot be set in a config; pass --trust-remote-code to flamingo train "
                    "(trust_remote_code=True to flamingo.train.trainer.train) if you trust the model's own code"
                )
            _refuse_remote_code_key(value, source, path)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            _refuse_remote_code_key(value, source, f"{where}.{index}")


def apply_override(data: dict[str, Any], override: str) -> str:
    """Set ``a.b.0.c=value`` in nested dicts/lists; the value is parsed as YAML (``[1, 2]``, ``null``, ...).

    Returns the dotted key that was set.
    """
    key, sep, raw = override.partition("=")
    source = f"override '{override}'"
    _check(bool(sep and key.strip()), f"{source}: must look like section.key=value")
    parts = key.strip().split(".")
    try:
        parsed = yaml.safe_load(raw)
    except (yaml.YAMLError, ValueError, RecursionError) as error:
        problem = getattr(error, "problem", None) or (str(error).splitlines() or [type(error).__name__])[0]
        raise ConfigError(f"{source}: the value is not valid YAML ({problem})", source=source) from None
    parsed = valid_text(parsed, source)
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        value = parsed if last else {}
        if isinstance(node, list):
            _check(part.isdigit(), f"{source}: {part!r} in {key} must be a list index")
            index = int(part)
            _check(index <= len(node), f"{source}: index {index} is past the end (length {len(node)})")
            if index == len(node):
                node.append(value)  # a new list entry (for example one more data source)
            elif last:
                node[index] = value
            node = node[index]
        else:
            _check(isinstance(node, dict), f"{source}: {'.'.join(parts[:depth])} is not a section")
            if last:
                node[part] = value
            node = node.setdefault(part, value)
    return ".".join(parts)


def from_dict(
    cls: type, data: Any, source: str, where: str = "", origins: dict[str, str] | None = None
) -> Any:
    """Build dataclass ``cls`` from ``data``, checking keys, types and bounds; errors name ``source`` and the key."""
    return from_mapping(cls, data, source, where=where, origins=origins)


def describe_fields(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """``key: type = default  # doc`` lines for every field, from the field docstrings in this module."""
    docs = _field_docs(cls)
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            lines.append(f"{path}: {docs.get(f.name, '')}")
            lines += describe_fields(hints[f.name], f"{path}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        limits = bounds_text(f.metadata)
        lines.append(f"{path} = {default!r}  # {docs.get(f.name, '')}" + (f" [{limits}]" if limits else ""))
    return lines


def _field_docs(cls: type) -> dict[str, str]:
    """First line of the string literal after each field in the class bodies (the field docstrings)."""
    import ast
    import inspect
    import itertools
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, following in itertools.pairwise(body):
            field_node = isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            if field_node and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                docs[node.target.id] = str(following.value.value).strip().splitlines()[0]
    return docs
