"""OpenFlamingo ``checkpoint.pt`` <-> flamingo-vlm, for every file variant the releases and training runs made.

Accepted variants (facts §3): a bare state dict of the trained tensors; a ``model_state_dict`` wrapper
(training checkpoints); wrapper segments ``module.``, ``_orig_mod.``, ``_checkpoint_wrapped_module.``,
``_fsdp_wrapped_module.`` anywhere in a key; v1 duplicates under ``lang_encoder.gated_cross_attn_layers.<i>``;
supersets holding the frozen backbones too. Files are read with ``weights_only=True``: a pickle that would run
code is refused.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from flamingo.errors import UnknownNameError
from flamingo.model.checkpoint import CheckpointError, build_flamingo
from flamingo.model.config import CrossAttnConfig, FlamingoConfig, LMConfig, PerceiverConfig, VisionConfig
from flamingo.model.flamingo import Flamingo
from flamingo.model.presets import OPENFLAMINGO_PRESETS, identify_base_lm

# DDP's ``module.`` leads a key; compile / activation-checkpoint / FSDP1 wrappers can sit at any depth.
_WRAPPERS = re.compile(
    r"^(?:module\.)+|(?<![^.])(?:_orig_mod|_checkpoint_wrapped_module|_fsdp_wrapped_module)\."
)

# (our key pattern, OpenFlamingo key pattern); {p} is the decoder layer list path.
_PERCEIVER = [
    (r"perceiver\.layers\.(\d+)\.attn\.", r"perceiver.layers.\1.0."),
    (r"perceiver\.layers\.(\d+)\.ff\.norm\.", r"perceiver.layers.\1.1.0."),
    (r"perceiver\.layers\.(\d+)\.ff\.fc1\.", r"perceiver.layers.\1.1.1."),
    (r"perceiver\.layers\.(\d+)\.ff\.fc2\.", r"perceiver.layers.\1.1.3."),
]
_BLOCK = [("attn.", "attn."), ("ff.norm.", "ff.0."), ("ff.fc1.", "ff.1."), ("ff.fc2.", "ff.3.")]


def read_openflamingo_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a ``checkpoint.pt`` safely and return its model tensors with wrapper segments removed."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw: Any = load_file(str(path))
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as err:
            raise CheckpointError(
                f"{path}: refused to load. It is not a plain tensor checkpoint (loading it would need to run "
                f"pickled code, which flamingo-vlm never does): {str(err).splitlines()[0]}"
            ) from err
    if isinstance(raw, dict) and "model_state_dict" in raw:
        raw = raw["model_state_dict"]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (an OpenFlamingo state dict)")
    return {_WRAPPERS.sub("", k): v for k, v in raw.items()}


def _module_name(root: torch.nn.Module, target: torch.nn.Module) -> str:
    return next(name for name, module in root.named_modules() if module is target)


def _key_map(model: Flamingo) -> dict[str, str]:
    """Our adapter key -> OpenFlamingo key, for every Perceiver and cross-attention tensor."""
    mapping = {}
    for key in model.adapter_state_dict():
        if key.startswith("perceiver."):
            mapped = key
            for ours, theirs in _PERCEIVER:
                mapped = re.sub("^" + ours, theirs, mapped)
            mapping[key] = mapped
        elif key.startswith("cross_attn."):
            _, index, rest = key.split(".", 2)
            for ours, theirs in _BLOCK:
                if rest.startswith(ours):
                    rest = theirs + rest[len(ours) :]
                    break
            mapping[key] = f"lang_encoder.{model.layers_path}.{index}.gated_cross_attn_layer.{rest}"
    return mapping


def _check_compatible(model: Flamingo, state: dict[str, torch.Tensor], source: str) -> None:
    pattern = re.compile(
        r"^lang_encoder\.(?:.+\.(\d+)\.gated_cross_attn_layer|gated_cross_attn_layers\.(\d+))\.attn\.to_q\.weight$"
    )
    found = {int(m.group(1) or m.group(2)): v.shape for k, v in state.items() if (m := pattern.match(k))}
    if not found:
        raise CheckpointError(
            f"{source}: no gated cross-attention weights found; is this an OpenFlamingo checkpoint?"
        )
    widths = {shape[1] for shape in found.values()}
    width = model.cross_attn[str(model.xattn_indices[0])].attn.to_q.in_features
    layers = sorted(found)
    if widths != {width} or layers != model.xattn_indices:
        needed = identify_base_lm(widths.pop(), layers)
        raise CheckpointError(
            f"{source}: it has cross-attention before LM layers {layers[:6]}{'...' if len(layers) > 6 else ''} "
            f"({len(layers)} blocks) for an LM of width {next(iter(found.values()))[1]}; this model has "
            f"{len(model.xattn_indices)} blocks on an LM of width {width}. {needed}"
        )


def import_openflamingo_state(
    model: Flamingo,
    state: dict[str, torch.Tensor],
    source: str = "checkpoint",
    include_backbones: bool = False,
) -> None:
    """Copy an OpenFlamingo state dict (already read) into ``model``; strict about every adapter tensor."""
    _check_compatible(model, state, source)
    ours = model.adapter_state_dict()
    missing = []
    with torch.no_grad():
        for key, theirs in _key_map(model).items():
            duplicate = re.sub(
                rf"^lang_encoder\.{re.escape(model.layers_path)}\.(\d+)\.gated_cross_attn_layer\.",
                r"lang_encoder.gated_cross_attn_layers.\1.",
                theirs,
            )
            tensor = state.get(theirs, state.get(duplicate))
            if tensor is None:
                missing.append(theirs)
                continue
            if tensor.shape != ours[key].shape:
                raise CheckpointError(
                    f"{source}: {theirs} has shape {tuple(tensor.shape)}, expected {tuple(ours[key].shape)}"
                )
            ours[key].copy_(tensor)
        _import_token_rows(model, state, source, missing)
        if include_backbones:
            _import_backbones(model, state, source)
    if missing:
        raise CheckpointError(f"{source}: missing {len(missing)} tensors, for example {missing[:4]}")


def _import_token_rows(model: Flamingo, state: dict, source: str, missing: list[str]) -> None:
    rows = model._new
    embed_key = f"lang_encoder.{_module_name(model.lm, model.lm.get_input_embeddings())}.weight"
    if embed_key not in state:
        missing.append(embed_key)
        return
    table = state[embed_key]
    if table.shape[0] < rows.stop:
        raise CheckpointError(
            f"{source}: {embed_key} has {table.shape[0]} rows but the tokenizer needs {rows.stop}: the file was "
            "made with another tokenizer"
        )
    model.new_token_embeddings.copy_(table[rows])
    if model.new_token_output is not None:
        head_key = f"lang_encoder.{_module_name(model.lm, model.lm.get_output_embeddings())}.weight"
        if (
            head_key in state
        ):  # untied heads: OpenFlamingo never trained these rows; supersets still carry them
            model.new_token_output.copy_(state[head_key][rows])


def _import_backbones(model: Flamingo, state: dict, source: str) -> None:
    """Frozen weights of a superset file: the vision tower and the LM (decoder layers unwrapped)."""
    vision = {
        k.removeprefix("vision_encoder."): v for k, v in state.items() if k.startswith("vision_encoder.")
    }
    if vision and hasattr(model.vision, "visual"):
        model.vision.visual.load_state_dict(vision, strict=True)
    lm_state = {
        k.removeprefix("lang_encoder.").replace(".decoder_layer.", "."): v
        for k, v in state.items()
        if k.startswith("lang_encoder.") and "gated_cross_attn_layer" not in k
    }
    if lm_state:
        result = model.lm.load_state_dict(lm_state, strict=False)
        if result.missing_keys:
            raise CheckpointError(
                f"{source}: LM weights missing from the superset: {result.missing_keys[:4]}"
            )


def export_openflamingo_state(model: Flamingo) -> dict[str, torch.Tensor]:
    """Our adapters in OpenFlamingo's key layout, with full (resized) embedding matrices carrying the rows."""
    ours = model.adapter_state_dict()
    out = {theirs: ours[key].detach().clone() for key, theirs in _key_map(model).items()}
    embed = model.lm.get_input_embeddings()
    table = embed.weight.detach().clone()
    table[model._new] = model.new_token_embeddings.detach()
    out[f"lang_encoder.{_module_name(model.lm, embed)}.weight"] = table
    if model.new_token_output is not None:
        head = model.lm.get_output_embeddings()
        head_table = head.weight.detach().clone()
        head_table[model._new] = model.new_token_output.detach()
        out[f"lang_encoder.{_module_name(model.lm, head)}.weight"] = head_table
    return out


def openflamingo_config(preset: str, **overrides: Any) -> FlamingoConfig:
    """The architecture of a released OpenFlamingo model (facts §1 and §3)."""
    if preset not in OPENFLAMINGO_PRESETS:
        raise UnknownNameError(
            f"unknown OpenFlamingo preset {preset!r}; choose one of {sorted(OPENFLAMINGO_PRESETS)}"
        )
    spec = OPENFLAMINGO_PRESETS[preset]
    config = FlamingoConfig(
        lm=LMConfig(
            name_or_path=overrides.pop("lm", spec["lm"]),
            tokenizer=overrides.pop("tokenizer", spec["tokenizer"]),
            trust_remote_code=spec.get("trust_remote_code", False),
        ),
        vision=VisionConfig(
            kind="open_clip", name="ViT-L-14", pretrained=overrides.pop("vision_pretrained", "openai")
        ),
        perceiver=PerceiverConfig(),
        cross_attn=CrossAttnConfig(every_n=spec["every_n"]),
    )
    return dataclasses.replace(config, **overrides)


def load_openflamingo(
    preset: str,
    checkpoint: str | Path | None = None,
    lm: str | None = None,
    tokenizer: str | None = None,
    vision_pretrained: str | None = None,
    dtype: torch.dtype | None = None,
) -> Flamingo:
    """Build a released OpenFlamingo model from hub ids (or local paths) and load its ``checkpoint.pt``.

    ``checkpoint`` defaults to the release's file on the hub (downloaded once and cached).
    """
    overrides = {k: v for k, v in (("lm", lm), ("tokenizer", tokenizer)) if v}
    if vision_pretrained:
        overrides["vision_pretrained"] = vision_pretrained
    config = openflamingo_config(preset, **overrides)
    model = build_flamingo(config, dtype=dtype)
    if checkpoint is None:
        from huggingface_hub import hf_hub_download

        checkpoint = hf_hub_download(OPENFLAMINGO_PRESETS[preset]["hub_repo"], "checkpoint.pt")
    import_openflamingo_state(model, read_openflamingo_checkpoint(checkpoint), str(checkpoint))
    return model
