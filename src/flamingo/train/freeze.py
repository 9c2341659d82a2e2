"""Which parameters train: the Flamingo recipe freezes both backbones (applied by the trainer, not the model)."""

from __future__ import annotations

from flamingo.model.flamingo import Flamingo


def freeze_backbones(model: Flamingo, train_new_token_rows: bool = True) -> int:
    """Freeze the LM and vision encoder; train the Perceiver, the cross-attention blocks and (optionally) the
    added tokens' embedding rows. Returns the number of trainable parameters."""
    model.requires_grad_(False)
    for name, param in model.adapter_parameters():
        param.requires_grad_(train_new_token_rows or not name.startswith("new_token_"))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
