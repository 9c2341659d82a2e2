"""Which parameters train: the Flamingo recipe freezes both backbones (applied by the trainer, not the model)."""

from __future__ import annotations

from flamingo.model.flamingo import Flamingo
from flamingo.model.lora import lora_state_dict


def freeze_backbones(model: Flamingo, train_new_token_rows: bool = True, train_lora: bool = False) -> int:
    """Freeze the LM and vision encoder; train the Perceiver, the cross-attention blocks, (optionally) the
    added tokens' embedding rows and (``train_lora``) the LM's LoRA matrices when it has them. Returns the
    number of trainable parameters."""
    model.requires_grad_(False)
    for name, param in model.adapter_parameters():
        param.requires_grad_(train_new_token_rows or not name.startswith("new_token_"))
    for param in lora_state_dict(model).values():
        param.requires_grad_(train_lora)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
