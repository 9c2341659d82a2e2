"""Vision adapters: any CLIP-like encoder behind one narrow interface.

An adapter maps pixels ``(N, c, h, w)`` to patch features ``(N, n, d_vis)`` and owns the preprocessing that
turns PIL images into those pixels. ``Flamingo`` handles the ``(b, t, f)`` axes and skips empty slots.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from flamingo.errors import MissingFileError
from flamingo.model.config import VisionConfig

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class VisionAdapter(nn.Module):
    """Interface: ``forward(pixels (N, c, h, w)) -> (N, n, width)`` and ``preprocess(images) -> pixels``."""

    width: int
    image_size: int

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        raise NotImplementedError

    def save_backbone(self, directory: Path) -> dict[str, Any]:
        """Write the frozen encoder into ``directory``; return the VisionConfig fields that point at it."""
        raise NotImplementedError


def _clip_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """Resize shortest side (bicubic), centre crop, RGB, [0, 1], normalise: the CLIP/OpenFlamingo recipe."""
    from torchvision.transforms import v2 as T

    return T.Compose(
        [
            T.Lambda(lambda im: im.convert("RGB")),
            T.PILToTensor(),
            T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.CenterCrop(image_size),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean, std),
        ]
    )


def _batched_plan(transform: Any) -> tuple[list[Callable], list[Callable], Any] | None:
    """For a torchvision ``Compose`` (v1) ending in ``ToTensor`` (open_clip's ``MaybeToTensor`` is one) and an
    optional ``Normalize``: (steps before, the tensor steps, the ``Normalize`` or None); else None."""
    from torchvision.transforms import Compose, Normalize, ToTensor

    if not isinstance(transform, Compose):
        return None
    steps = list(transform.transforms)
    # Exactly torchvision's ToTensor or open_clip's MaybeToTensor (the same for pictures): a subclass of
    # ToTensor may do anything.
    index = next(
        (
            i
            for i, step in enumerate(steps)
            if type(step) is ToTensor or type(step).__qualname__ == "MaybeToTensor"
        ),
        None,
    )
    if index is None:
        return None
    tail = steps[index + 1 :]
    if len(tail) > 1 or (tail and type(tail[0]) is not Normalize):
        return None
    return steps[:index], steps[index:], tail[0] if tail else None


def apply_transform(transform: Callable, images: Sequence[Image.Image]) -> torch.Tensor:
    """``transform`` applied to every image, stacked: ``(N, c, h, w)``.

    When ``transform`` is open_clip's kind of pipeline (picture steps, then ``ToTensor`` and ``Normalize``) and
    the picture steps give RGB pictures of one size, the conversion to floats and the normalisation run once on
    the whole ``(N, h, w, 3)`` uint8 batch instead of once per picture: the same element-wise operations, so the
    pixels are bit-identical, at a quarter of the cost on small pictures (the per-picture calls were most of the
    training loader's image time).
    """
    plan = _batched_plan(transform) if len(images) else None
    if plan is None:
        return torch.stack([transform(im) for im in images])
    before, tensor_steps, normalize = plan
    pictures = []
    for picture in images:
        for step in before:
            picture = step(picture)
        pictures.append(picture)
    if (
        not all(isinstance(p, Image.Image) and p.mode == "RGB" for p in pictures)
        or len({p.size for p in pictures}) != 1
    ):
        out = []
        for picture in pictures:
            for step in tensor_steps:
                picture = step(picture)
            out.append(picture)
        return torch.stack(out)
    import numpy as np

    width, height = pictures[0].size
    out = torch.empty(len(pictures), 3, height, width, dtype=torch.get_default_dtype())
    mean = std = None
    if normalize is not None:
        mean = torch.as_tensor(normalize.mean, dtype=out.dtype).view(-1, 1, 1)
        std = torch.as_tensor(normalize.std, dtype=out.dtype).view(-1, 1, 1)
    # Chunks of about 2**18 values stay in cache: one pass over a whole batch of large pictures is slower
    # than picture by picture.
    chunk = max(1, 2**18 // (3 * height * width))
    for start in range(0, len(pictures), chunk):
        part = pictures[start : start + chunk]
        batch = torch.from_numpy(np.stack([np.asarray(p, dtype=np.uint8) for p in part]))  # (n, h, w, 3)
        view = out[start : start + len(part)]
        view.copy_(batch.permute(0, 3, 1, 2)).div_(255)  # what to_tensor does
        if mean is not None:
            view.sub_(mean).div_(std)  # what Normalize does
    return out


class OpenClipAdapter(VisionAdapter):
    """An open_clip vision tower. ``legacy_tokens`` reproduces open_clip < 2.23: the last block's patch tokens,
    class token dropped, without ``ln_post`` or projection (what the released OpenFlamingo weights saw)."""

    def __init__(self, visual: nn.Module, config: VisionConfig, transform: Callable | None = None) -> None:
        super().__init__()
        self.visual = visual
        self.legacy_tokens = config.legacy_tokens
        self.width = int(visual.transformer.width)
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, tuple | list) else size)
        self.transform = transform or _clip_transform(self.image_size, OPENAI_MEAN, OPENAI_STD)

    @classmethod
    def from_config(cls, config: VisionConfig) -> OpenClipAdapter:
        import open_clip

        if config.model_cfg is not None:
            _register_open_clip_config(config.name, config.model_cfg)
        weights_file = config.pretrained if _is_weights_file(config.pretrained) else None
        tag = None if weights_file else config.pretrained
        # open_clip warns "no pretrained weights" when it does not load them itself; we load them next.
        with quiet_random_init_warning(config.name, quiet=weights_file is not None):
            model, _, transform = open_clip.create_model_and_transforms(config.name, pretrained=tag)
        if weights_file:
            load_open_clip_weights(model, Path(weights_file), config.name)
        return cls(model.visual, config, transform)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> pixels (N, 3, image_size, image_size)."""
        return apply_transform(self.transform, images)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (N, 3, H, W) -> (N, n, width)."""
        if self.legacy_tokens:
            out = self.visual.forward_intermediates(
                pixels, indices=1, intermediates_only=True, output_fmt="NLC", normalize_intermediates=False
            )
            return out["image_intermediates"][-1]
        was = self.visual.output_tokens
        self.visual.output_tokens = True
        try:
            _, tokens = self.visual(pixels)
        finally:
            self.visual.output_tokens = was
        return tokens

    def save_backbone(self, directory: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        state = {f"visual.{k}": v.contiguous() for k, v in self.visual.state_dict().items()}
        save_file(state, str(directory / "open_clip_visual.safetensors"))
        return {"pretrained": "open_clip_visual.safetensors"}


class _NoRandomInitWarning(logging.Filter):
    """Drops open_clip's ``No pretrained weights loaded for model '<name>'`` record of one model name."""

    def __init__(self, model_name: str) -> None:
        super().__init__()
        self.prefix = f"No pretrained weights loaded for model '{model_name}'"

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@contextmanager
def quiet_random_init_warning(model_name: str, quiet: bool = True) -> Iterator[None]:
    """Inside: open_clip's warning that ``model_name`` was created with random weights is dropped (only that
    message; ``quiet=False`` keeps it). For the places that create a model and then load or train its weights
    themselves, where the warning would only alarm. open_clip logs it on the root logger, whose own filters see
    exactly the records logged on it."""
    if not quiet:
        yield
        return
    drop = _NoRandomInitWarning(model_name)
    logging.root.addFilter(drop)
    try:
        yield
    finally:
        logging.root.removeFilter(drop)


def _is_weights_file(pretrained: str | None) -> bool:
    return bool(pretrained) and (
        pretrained.endswith((".safetensors", ".pt", ".pth", ".bin")) or Path(pretrained).is_file()
    )


_EXPECTED_LAYOUTS = (
    "an open_clip model state dict as open_clip saves it (keys visual.* beside the text tower's, optionally "
    "under 'state_dict' and prefixed 'module.'), a bare vision tower (model.visual.state_dict()), or "
    "flamingo-vlm's own open_clip_visual.safetensors (keys visual.* only)"
)


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` file, unwrapped as open_clip does:
    a ``state_dict`` entry is taken when present and a leading ``module.`` removed. Pickles that would run code
    are refused (``weights_only=True``)."""
    from flamingo.model.files import load_weights_file

    if not path.is_file():
        raise MissingFileError(
            f"vision weights {path} not found: check vision.pretrained in the model config"
        )
    raw: Any = load_weights_file(path)
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not raw:
        raise ValueError(
            f"vision weights {path}: expected a state dict (a dict of tensors), got {type(raw).__name__}"
        )
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def _describe_layout(keys: set[str]) -> str:
    """What a set of state-dict keys that fits no accepted layout looks like, in words."""
    if any(k.startswith(("vision_model.", "model.vision_model.")) for k in keys):
        return (
            "a Hugging Face CLIP/SigLIP checkpoint (keys vision_model.*; use vision.kind: hf with its folder)"
        )
    if any(k.startswith(("perceiver.", "lang_encoder.")) for k in keys):
        return "an OpenFlamingo checkpoint (use flamingo convert from-openflamingo)"
    if any(k.startswith("visual.") for k in keys):
        return "an open_clip model state dict"
    return f"an unknown layout (keys such as {sorted(keys)[:3]})"


def load_open_clip_weights(model: nn.Module, path: Path, name: str) -> None:
    """Load ``path`` into the vision tower of the open_clip ``model`` (architecture ``name``), strictly.

    Accepted: every whole-model file open_clip's own ``pretrained=FILE`` accepts, a bare vision tower
    (``model.visual.state_dict()``) and :meth:`OpenClipAdapter.save_backbone`'s file (keys ``visual.*``). A file
    that fits none raises ``ValueError`` saying which layout it looked like and what was expected.
    """
    import inspect

    import open_clip

    state = read_weights_file(path)
    keys = set(state)
    visual = model.visual
    visual_keys = set(visual.state_dict())
    prefixed = {k for k in keys if k.startswith("visual.")}
    if (
        prefixed
        and prefixed != keys
        and "weights_only" in inspect.signature(open_clip.load_checkpoint).parameters
    ):
        layout = "an open_clip model state dict"
        try:  # open_clip's own loader: its conversions (older layouts, resized position tables) included
            open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
            return
        except RuntimeError as err:
            raise ValueError(
                f"vision weights {path} look like {layout} but do not fit open_clip model {name!r}: "
                f"{str(err).splitlines()[-1].strip()[:300]}. Check vision.name"
            ) from err
    if prefixed:
        layout = "flamingo-vlm's vision tower file" if prefixed == keys else "an open_clip model state dict"
        state = {k.removeprefix("visual."): v for k, v in state.items() if k in prefixed}
    elif keys & visual_keys:
        layout = "a bare vision tower state dict"
    else:
        raise ValueError(
            f"vision weights {path} look like {_describe_layout(keys)}, which flamingo-vlm cannot load into "
            f"open_clip model {name!r}. Expected {_EXPECTED_LAYOUTS}"
        )
    try:
        result = visual.load_state_dict(state, strict=False)
        problem = f"missing {result.missing_keys[:4]}, unexpected {result.unexpected_keys[:4]}"
        fits = not result.missing_keys and not result.unexpected_keys
    except RuntimeError as err:  # a shape mismatch
        problem, fits = str(err).splitlines()[-1].strip()[:300], False
    if not fits:
        raise ValueError(
            f"vision weights {path} look like {layout} but do not fit open_clip model {name!r}: {problem}. "
            f"Check vision.name; expected {_EXPECTED_LAYOUTS}"
        )


def _register_open_clip_config(name: str, model_cfg: dict[str, Any]) -> None:
    """Make a custom architecture dict known to open_clip under ``name`` through its public registry.

    open_clip reads architectures from JSON files named after the model and rescans every registered file on
    each addition, so the file must outlive the call. It goes to a folder named by a hash of its content under
    :func:`_open_clip_config_root`: a process that is killed leaves nothing new behind, and the same
    architecture registered again (in any process) reuses its file.
    """
    import hashlib
    import json
    import os

    import open_clip

    text = json.dumps(model_cfg, sort_keys=True)
    digest = hashlib.sha256(f"{name}\n{text}".encode()).hexdigest()[:16]
    folder = _open_clip_config_root() / digest
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"{name}.json"
    if not path.is_file() or path.read_text() != text:
        partial = folder / f".{name}.{os.getpid()}.tmp"  # written whole, then renamed: readers never see half
        partial.write_text(text)
        os.replace(partial, path)
    open_clip.add_model_config(path)


def _open_clip_config_root() -> Path:
    """``<tmp>/flamingo-open-clip-<uid>``, private to this user; a fresh private folder (removed at exit)
    instead when that path exists but is not this user's own directory."""
    import atexit
    import os
    import shutil
    import stat
    import tempfile

    global _OPEN_CLIP_CONFIG_DIR
    if _OPEN_CLIP_CONFIG_DIR is not None:
        return _OPEN_CLIP_CONFIG_DIR
    uid = os.getuid() if hasattr(os, "getuid") else 0
    root = Path(tempfile.gettempdir()) / f"flamingo-open-clip-{uid}"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(root)
        shared_safely = stat.S_ISDIR(info.st_mode) and info.st_uid == uid and not info.st_mode & 0o022
    except OSError:
        shared_safely = False
    if not shared_safely:
        root = Path(tempfile.mkdtemp(prefix="flamingo-open-clip-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    _OPEN_CLIP_CONFIG_DIR = root
    return root


_OPEN_CLIP_CONFIG_DIR: Path | None = None


class HFVisionAdapter(VisionAdapter):
    """A Hugging Face vision tower (``CLIPVisionModel``, ``SiglipVisionModel``, ...): ``last_hidden_state``,
    class token dropped when the model has one. For CLIP this equals OpenFlamingo's legacy tokens."""

    def __init__(self, model: nn.Module, processor: Any | None = None) -> None:
        super().__init__()
        self.model = model
        cfg = model.config
        self.width = int(cfg.hidden_size)
        self.image_size = int(cfg.image_size)
        self.has_cls = cfg.model_type in ("clip_vision_model", "clip")
        mean = getattr(processor, "image_mean", None) or OPENAI_MEAN
        std = getattr(processor, "image_std", None) or OPENAI_STD
        self.transform = _clip_transform(self.image_size, mean, std)

    @classmethod
    def from_config(
        cls, config: VisionConfig, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> HFVisionAdapter:
        """Load the tower ``config.name`` names; with ``device``/``dtype``, ``transformers`` reads each weight
        straight onto ``device`` in ``dtype`` (no full-precision copy on the CPU first)."""
        from transformers import AutoImageProcessor, AutoModel

        placement: dict[str, Any] = {}
        if dtype is not None:
            placement["dtype"] = dtype
        if device is not None:
            placement["device_map"] = {"": device}
        # A vision tower never runs code from its repository: one that would need it fails in transformers.
        model = AutoModel.from_pretrained(
            config.name, revision=config.revision, trust_remote_code=False, **placement
        )
        if hasattr(model, "vision_model") and not hasattr(model.config, "image_size"):
            model = model.vision_model  # a full CLIP/SigLIP checkpoint: keep the vision tower only
        try:
            processor = AutoImageProcessor.from_pretrained(
                config.name, revision=config.revision, trust_remote_code=False
            )
        except (OSError, ValueError):
            processor = None
        return cls(model, processor)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> pixels (N, 3, image_size, image_size)."""
        return apply_transform(self.transform, images)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.model(pixel_values=pixels).last_hidden_state  # (N, 1 + n or n, width)
        return hidden[:, 1:] if self.has_cls else hidden

    def save_backbone(self, directory: Path) -> dict[str, Any]:
        self.model.save_pretrained(directory)
        return {"name": directory.name}


def build_vision_adapter(config: VisionConfig) -> VisionAdapter:
    """The adapter registry: ``config.kind`` picks the family."""
    builders: dict[str, Callable[[VisionConfig], VisionAdapter]] = {
        "open_clip": OpenClipAdapter.from_config,
        "hf": HFVisionAdapter.from_config,
    }
    return builders[config.kind](config)


def empty_vision_adapter(config: VisionConfig) -> VisionAdapter:
    """The adapter ``config`` describes with every tensor on the meta device (no memory, no weights read): for
    planning where a model goes before loading it. Hugging Face towers read only their ``config.json``."""
    if config.kind == "hf":
        from transformers import AutoConfig, AutoModel

        tower_config = AutoConfig.from_pretrained(
            config.name, revision=config.revision, trust_remote_code=False
        )
        with torch.device("meta"):
            model = AutoModel.from_config(tower_config)
        if hasattr(model, "vision_model") and not hasattr(model.config, "image_size"):
            model = model.vision_model
        return HFVisionAdapter(model)
    return _empty_open_clip(config)


def _empty_open_clip(config: VisionConfig) -> OpenClipAdapter:
    import open_clip

    if config.model_cfg is not None:
        _register_open_clip_config(config.name, config.model_cfg)
    # Built under the meta device: open_clip's random initialisation allocates nothing and costs no time.
    with quiet_random_init_warning(config.name), torch.device("meta"):
        model, _, transform = open_clip.create_model_and_transforms(
            config.name, pretrained=None, device="meta"
        )
    return OpenClipAdapter(model.visual, config, transform)


def load_vision_adapter(
    config: VisionConfig, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> VisionAdapter:
    """The adapter with its weights read straight onto ``device`` in ``dtype`` (None: as stored).

    Hugging Face towers load through ``transformers``; an open_clip tower whose weights are a ``.safetensors``
    file in flamingo-vlm's layout (keys ``visual.*``, as :meth:`OpenClipAdapter.save_backbone` writes) or a bare
    tower is built on the meta device and each tensor read from the file onto ``device``. Other open_clip
    weights (a pretrained tag, a ``.pt`` file, a whole CLIP state dict) are loaded as open_clip loads them, then
    moved.
    """
    device = torch.device(device)
    if config.kind == "hf":
        return HFVisionAdapter.from_config(config, device=device, dtype=dtype)
    path = Path(config.pretrained) if config.pretrained else None
    if path is not None and path.suffix == ".safetensors" and path.is_file():
        adapter = _empty_open_clip(config)
        state = _read_tower_safetensors(path, set(adapter.visual.state_dict()), device, dtype)
        if state is not None:
            adapter.visual.load_state_dict(state, strict=True, assign=True)
            return adapter
    adapter = build_vision_adapter(config)
    return adapter.to(device=device, dtype=dtype) if dtype is not None else adapter.to(device)


def _read_tower_safetensors(
    path: Path, wanted: set[str], device: torch.device, dtype: torch.dtype | None
) -> dict[str, torch.Tensor] | None:
    """The tensors of a vision tower file, each read onto ``device`` (floating ones cast to ``dtype``); None when
    the file's keys are not exactly the tower's (``visual.`` prefixed or bare), so the caller loads it the way
    open_clip does instead."""
    from flamingo.model.files import check_safetensors, read_safetensors, safetensors_header

    check_safetensors(path)
    keys = list(safetensors_header(path))
    prefix = "visual." if keys and all(k.startswith("visual.") for k in keys) else ""
    if {k.removeprefix(prefix) for k in keys} != wanted:
        return None
    state = read_safetensors(path, keys, lambda _: device, dtype)
    return {k.removeprefix(prefix): v for k, v in state.items()}
