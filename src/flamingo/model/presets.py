"""The six released OpenFlamingo models as data (see docs/openflamingo-compat.md, "Released models"). All
use CLIP ViT-L/14 (openai) with the legacy open_clip token semantics, a 6-layer Perceiver with 64 latents, and
8x64-head cross-attention.

``remote_code``: the LM is only defined by Python files in its hub repository (MPT-1B RedPajama's
``mosaic_gpt``), so loading it needs the caller's ``trust_remote_code=True`` / ``--trust-remote-code``.
``revision`` pins those repositories to one commit, so the code that runs is the code that was reviewed, not
whatever the repository holds later: both hashes are the head of the repository's ``main`` branch as published
(its last changes are from mid-2023).
"""

from __future__ import annotations

OPENFLAMINGO_PRESETS: dict[str, dict] = {
    "OpenFlamingo-3B-vitl-mpt1b": {
        "lm": "anas-awadalla/mpt-1b-redpajama-200b",
        "tokenizer": "anas-awadalla/mpt-1b-redpajama-200b",
        "every_n": 1,
        "remote_code": True,
        "revision": "50d6bc94e17812873f39c36c5f815263fa71fb80",
        "hub_repo": "openflamingo/OpenFlamingo-3B-vitl-mpt1b",
        "width": 2048,
        "layers": 24,
    },
    "OpenFlamingo-3B-vitl-mpt1b-langinstruct": {
        "lm": "anas-awadalla/mpt-1b-redpajama-200b-dolly",
        "tokenizer": "anas-awadalla/mpt-1b-redpajama-200b-dolly",
        "every_n": 1,
        "remote_code": True,
        "revision": "f0a13e41fcee2217cd701219ffa1eaef7fe955ea",
        "hub_repo": "openflamingo/OpenFlamingo-3B-vitl-mpt1b-langinstruct",
        "width": 2048,
        "layers": 24,
    },
    "OpenFlamingo-4B-vitl-rpj3b": {
        "lm": "togethercomputer/RedPajama-INCITE-Base-3B-v1",
        "tokenizer": "togethercomputer/RedPajama-INCITE-Base-3B-v1",
        "every_n": 2,
        "hub_repo": "openflamingo/OpenFlamingo-4B-vitl-rpj3b",
        "width": 2560,
        "layers": 32,
    },
    "OpenFlamingo-4B-vitl-rpj3b-langinstruct": {
        "lm": "togethercomputer/RedPajama-INCITE-Instruct-3B-v1",
        "tokenizer": "togethercomputer/RedPajama-INCITE-Instruct-3B-v1",
        "every_n": 2,
        "hub_repo": "openflamingo/OpenFlamingo-4B-vitl-rpj3b-langinstruct",
        "width": 2560,
        "layers": 32,
    },
    "OpenFlamingo-9B-vitl-mpt7b": {
        "lm": "mosaicml/mpt-7b",
        "tokenizer": "mosaicml/mpt-7b",
        "every_n": 4,
        "hub_repo": "openflamingo/OpenFlamingo-9B-vitl-mpt7b",
        "width": 4096,
        "layers": 32,
    },
    "OpenFlamingo-9B-deprecated": {
        "lm": "decapoda-research/llama-7b-hf",
        "tokenizer": "decapoda-research/llama-7b-hf",
        "every_n": 4,
        "hub_repo": "openflamingo/OpenFlamingo-9B-deprecated",
        "width": 4096,
        "layers": 32,
    },
}


def identify_base_lm(width: int, xattn_layers: list[int]) -> str:
    """A sentence naming the released model(s) whose LM width and cross-attention layout match a file."""
    matches = []
    for name, spec in OPENFLAMINGO_PRESETS.items():
        layout = [i for i in range(spec["layers"]) if (i + 1) % spec["every_n"] == 0]
        if spec["width"] == width and layout == xattn_layers:
            matches.append(f"{name} (LM {spec['lm']}, cross_attn.every_n={spec['every_n']})")
    if matches:
        return (
            "This file fits " + "; ".join(matches) + ": build that architecture (flamingo.model.convert."
            "load_openflamingo(preset, checkpoint))."
        )
    every_n = xattn_layers[0] + 1 if xattn_layers else 1
    return f"Use a base LM of width {width} and cross_attn.every_n={every_n}."
