"""OpenFlamingo ``checkpoint.pt`` <-> flamingo-vlm, for every file variant the releases and training runs made.

Accepted variants (see docs/openflamingo-compat.md, "Released models and their checkpoint files"): a bare
state dict of the trained tensors; a ``model_state_dict`` wrapper (training checkpoints); wrapper segments
``module.``, ``_orig_mod.``, ``_checkpoint_wrapped_module.``, ``_fsdp_wrapped_module.`` anywhere in a key; v1
duplicates under ``lang_encoder.gated_cross_attn_layers.<i>``; supersets holding the frozen backbones too. Files
are read with ``weights_only=True``: a pickle that would run code is refused.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch

from flamingo.errors import UnknownNameError
from flamingo.model.checkpoint import CheckpointError, build_flamingo
from flamingo.model.config import CrossAttnConfig, FlamingoConfig, LMConfig, PerceiverConfig, VisionConfig
from flamingo.model.files import load_weights_file
from flamingo.model.flamingo import Flamingo
from flamingo.model.lm import is_tied
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

# Module names of the input embedding and the output head that differ between transformers generations, by
# ``config.model_type``: {name under 4.x: name under 5.x}. Found by comparing the state-dict keys of every family
# in flamingo.model.lm.DECODER_LAYERS under transformers 4.57 and 5.x: only GPT-NeoX (Pythia, RedPajama-INCITE,
# hence the 4B releases) renamed one. Every other family keeps its names (LLaMA-likes ``model.embed_tokens`` /
# ``lm_head``; GPT-2, GPT-J, MPT ``transformer.wte`` / ``lm_head``; Falcon, BLOOM
# ``transformer.word_embeddings`` / ``lm_head``; OPT ``model.decoder.embed_tokens`` / ``lm_head``; GPT-NeoX's
# input ``gpt_neox.embed_in``); the remote-code MPT-1B and MPT-7B have no separate head.
RENAMED_LM_MODULES: dict[str, dict[str, str]] = {"gpt_neox": {"embed_out": "lm_head"}}
KEY_GENERATIONS = ("4.x", "5.x")
# Duplicate module lists the reference registers besides the decoder layers: their tensors are the same ones.
_DUPLICATE_LISTS = ("lang_encoder.old_decoder_blocks.", "lang_encoder.gated_cross_attn_layers.")


def read_openflamingo_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a ``checkpoint.pt`` safely and return its model tensors with wrapper segments removed."""
    path = Path(path)
    raw: Any = load_weights_file(path)  # a pickle that would run code is refused, a cut file named
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


def _renames(model: Flamingo) -> dict[str, str]:
    """{module name in a file of either generation: this LM's module name} for the modules that were renamed."""
    out = {}
    for old, new in RENAMED_LM_MODULES.get(getattr(model.lm.config, "model_type", None), {}).items():
        live = next((name for name in (old, new) if _has_module(model.lm, name)), None)
        if live is not None:
            out.update({old: live, new: live})
    return out


def _has_module(root: torch.nn.Module, name: str) -> bool:
    return any(module_name == name for module_name, _ in root.named_modules())


def _to_live_names(model: Flamingo, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the LM keys of either transformers generation renamed to this LM's module names."""
    renames = _renames(model)
    if not renames:
        return state
    out = {}
    for key, tensor in state.items():
        for theirs, live in renames.items():
            if key.startswith(f"lang_encoder.{theirs}."):
                key = f"lang_encoder.{live}." + key[len(f"lang_encoder.{theirs}.") :]
                break
        if key in out:
            raise CheckpointError(f"the file holds {key} under both transformers generations' names")
        out[key] = tensor
    return out


def lm_key_names(model: Flamingo, key_names: str = "4.x") -> dict[str, str | None]:
    """Module names of the LM's input embedding and untied output head under transformers ``key_names``.

    Returns ``{"input": ..., "output": ...}`` (``output`` is None when the head is tied to the input).
    """
    if key_names not in KEY_GENERATIONS:
        raise ValueError(f"key_names={key_names!r}: use one of {KEY_GENERATIONS}")
    renamed = RENAMED_LM_MODULES.get(getattr(model.lm.config, "model_type", None), {})
    to_generation = renamed if key_names == "5.x" else {new: old for old, new in renamed.items()}
    names: dict[str, str | None] = {}
    for role, module in (
        ("input", model.lm.get_input_embeddings()),
        ("output", model.lm.get_output_embeddings()),
    ):
        if role == "output" and model.new_token_output is None:
            names[role] = None
            continue
        live = _module_name(model.lm, module)
        names[role] = to_generation.get(live, live)
    return names


def import_openflamingo_state(
    model: Flamingo,
    state: dict[str, torch.Tensor],
    source: str = "checkpoint",
    include_backbones: bool = False,
) -> None:
    """Copy an OpenFlamingo state dict (already read) into ``model``; strict about every adapter tensor.

    LM key names of transformers 4.x and 5.x are both accepted (see ``RENAMED_LM_MODULES``). Every tensor of the
    file must have a place in the model: a tensor that belongs to no part of it (an output head under a name this
    converter does not know, say) raises :class:`CheckpointError` naming the keys, instead of being skipped.
    With ``include_backbones`` the frozen vision and LM tensors of a superset file are loaded too; without it they
    are checked to have a place but left as the model has them.
    """
    _check_compatible(model, state, source)
    state = _to_live_names(model, state)
    ours = model.adapter_state_dict()
    missing: list[str] = []
    placed: set[str] = set()
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
            placed.update((theirs, duplicate))
        placed.update(_import_token_rows(model, state, source, missing))
        if include_backbones:
            placed.update(_import_backbones(model, state, source))
    if missing:
        raise CheckpointError(f"{source}: missing {len(missing)} tensors, for example {missing[:4]}")
    _check_all_placed(model, state, placed, source)


def _check_all_placed(model: Flamingo, state: dict, placed: set[str], source: str) -> None:
    """Every tensor left over must be a frozen backbone tensor with a known place, or a duplicate."""
    lm_keys = set(model.lm.state_dict())
    stray = []
    for key in state.keys() - placed:
        if key.startswith("vision_encoder.") or key.startswith(_DUPLICATE_LISTS):
            continue
        if key.startswith("lang_encoder.") and _lm_key(key) in lm_keys:
            continue
        stray.append(key)
    if stray:
        names = lm_key_names(model, "4.x")
        head = f" and output head {names['output']}" if names["output"] else ""
        raise CheckpointError(
            f"{source}: {len(stray)} tensors have no place in this model: {sorted(stray)[:4]}. This LM "
            f"({type(model.lm).__name__}) has its input embedding at {names['input']}{head} (transformers "
            f"4.x names; {sorted(_renames(model)) or 'no'} renamed ones accepted); a file made with another LM "
            "or an unknown head name cannot be read without losing those weights"
        )


def _lm_key(key: str) -> str:
    """A file's ``lang_encoder.`` key as a key of the plain LM (the reference wraps each decoder layer)."""
    return key.removeprefix("lang_encoder.").replace(".decoder_layer.", ".")


def _import_token_rows(model: Flamingo, state: dict, source: str, missing: list[str]) -> set[str]:
    rows = model._new
    embed_key = f"lang_encoder.{_module_name(model.lm, model.lm.get_input_embeddings())}.weight"
    if embed_key not in state:
        missing.append(embed_key)
        return set()
    table = state[embed_key]
    if table.shape[0] < rows.stop:
        raise CheckpointError(
            f"{source}: {embed_key} has {table.shape[0]} rows but the tokenizer needs {rows.stop}: the file was "
            "made with another tokenizer"
        )
    model.new_token_embeddings.copy_(table[rows])
    placed = {embed_key}
    if model.new_token_output is not None:
        head_key = f"lang_encoder.{_module_name(model.lm, model.lm.get_output_embeddings())}.weight"
        # Untied heads: OpenFlamingo never trained these rows. Its release filter keeps parameters named
        # "...embed...", so GPT-NeoX files hold the head (``embed_out`` under 4.x) with the rows it was
        # evaluated with; LLaMA's ``lm_head`` is only in supersets.
        if head_key in state:
            head = state[head_key]
            if head.shape[0] < rows.stop:
                raise CheckpointError(
                    f"{source}: {head_key} has {head.shape[0]} rows but the tokenizer needs {rows.stop}"
                )
            model.new_token_output.copy_(head[rows])
            placed.add(head_key)
    return placed


def _import_backbones(model: Flamingo, state: dict, source: str) -> set[str]:
    """Frozen weights of a superset file: the vision tower and the LM (decoder layers unwrapped)."""
    placed = set()
    vision = {
        k.removeprefix("vision_encoder."): v for k, v in state.items() if k.startswith("vision_encoder.")
    }
    if vision and hasattr(model.vision, "visual"):
        model.vision.visual.load_state_dict(vision, strict=True)
        placed.update(f"vision_encoder.{k}" for k in vision)
    lm_keys = {
        k: _lm_key(k)
        for k in state
        if k.startswith("lang_encoder.")
        and "gated_cross_attn_layer" not in k
        and not k.startswith(_DUPLICATE_LISTS)
    }
    if lm_keys:
        result = model.lm.load_state_dict({ours: state[k] for k, ours in lm_keys.items()}, strict=False)
        tied = (
            {_module_name(model.lm, model.lm.get_output_embeddings()) + ".weight"}
            if is_tied(model.lm)
            else set()
        )
        absent = [k for k in result.missing_keys if k not in tied]
        if absent:
            raise CheckpointError(f"{source}: LM weights missing from the superset: {absent[:4]}")
        unexpected = set(result.unexpected_keys)
        placed.update(k for k, ours in lm_keys.items() if ours not in unexpected)
    return placed


def export_openflamingo_state(model: Flamingo, key_names: str = "4.x") -> dict[str, torch.Tensor]:
    """Our adapters in OpenFlamingo's key layout, with full (resized) embedding matrices carrying the rows.

    ``key_names`` picks the transformers generation whose LM module names the file uses: ``"4.x"`` (default,
    what the released files and open-flamingo==2.0.1 under transformers 4.x read; GPT-NeoX's head is
    ``embed_out``) or ``"5.x"`` (``lm_head``).
    """
    names = lm_key_names(model, key_names)
    ours = model.adapter_state_dict()
    out = {theirs: ours[key].detach().clone() for key, theirs in _key_map(model).items()}
    table = model.lm.get_input_embeddings().weight.detach().clone()
    table[model._new] = model.new_token_embeddings.detach()
    out[f"lang_encoder.{names['input']}.weight"] = table
    if model.new_token_output is not None:
        head_table = model.lm.get_output_embeddings().weight.detach().clone()
        head_table[model._new] = model.new_token_output.detach()
        out[f"lang_encoder.{names['output']}.weight"] = head_table
    return out


def openflamingo_config(preset: str, **overrides: Any) -> FlamingoConfig:
    """The architecture of a released OpenFlamingo model (see docs/openflamingo-compat.md, sections
    "Architecture" and "Released models").

    A preset whose LM is defined by its repository's own code says so (``lm.trust_remote_code``, which only
    marks the need: the caller's ``trust_remote_code=True`` is the permission) and pins that repository to a
    commit (``lm.revision``); an ``lm`` override drops the pin, which belongs to the preset's repository.
    """
    if preset not in OPENFLAMINGO_PRESETS:
        raise UnknownNameError(
            f"unknown OpenFlamingo preset {preset!r}; choose one of {sorted(OPENFLAMINGO_PRESETS)}"
        )
    spec = OPENFLAMINGO_PRESETS[preset]
    lm_name = overrides.pop("lm", spec["lm"])
    tokenizer = overrides.pop("tokenizer", spec["tokenizer"])
    pinned = lm_name == spec["lm"] and tokenizer == spec["tokenizer"]
    config = FlamingoConfig(
        lm=LMConfig(
            name_or_path=lm_name,
            tokenizer=tokenizer,
            revision=spec.get("revision") if pinned else None,
            trust_remote_code=spec.get("remote_code", False) and lm_name == spec["lm"],
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
    trust_remote_code: bool = False,
) -> Flamingo:
    """Build a released OpenFlamingo model from hub ids (or local paths) and load its ``checkpoint.pt``.

    ``checkpoint`` defaults to the release's file on the hub (downloaded once and cached). The MPT-1B presets'
    LM runs code from its hub repository (at a pinned commit): they need ``trust_remote_code=True``, and are
    refused before anything is downloaded or imported without it.
    """
    overrides = {k: v for k, v in (("lm", lm), ("tokenizer", tokenizer)) if v}
    if vision_pretrained:
        overrides["vision_pretrained"] = vision_pretrained
    config = openflamingo_config(preset, **overrides)
    model = build_flamingo(config, dtype=dtype, trust_remote_code=trust_remote_code, where=preset)
    if checkpoint is None:
        from huggingface_hub import hf_hub_download

        checkpoint = hf_hub_download(OPENFLAMINGO_PRESETS[preset]["hub_repo"], "checkpoint.pt")
    import_openflamingo_state(model, read_openflamingo_checkpoint(checkpoint), str(checkpoint))
    return model
