"""A tiny causal LM with "smeared keys", as a stock Hugging Face model of its own type.

Two layers of width 64 learn in-context copying (induction heads) in a few hundred steps only when each
attention head's key mixes in the previous position's key through one learned scalar (Olsson et al. 2022,
"In-context learning and induction heads", section on smeared keys): ``k'_t = k_t + g_h * k_{t-1}``. The cache
holds the raw keys, so cached decoding smears exactly like a full forward pass.

Importing this module registers the model with ``AutoConfig`` / ``AutoModelForCausalLM`` and with Flamingo's
LM registry. Its saved config names this module (``flamingo.model.lm.LM_MODULE_KEY``), so
``Flamingo.from_pretrained`` imports it, and nothing else of the quickstart, when it loads a checkpoint that
stores this LM (``save_backbones=True``) or an LM directory written by the quickstart.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from flamingo.model.lm import LM_MODULE_KEY, register_custom_lm

MODEL_TYPE = "flamingo_quickstart_lm"


class SmearLMConfig(PretrainedConfig):
    """Architecture of :class:`SmearLMForCausalLM`."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        vocab_size: int = 1024,
        hidden_size: int = 64,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        intermediate_size: int = 256,
        max_position_embeddings: int = 512,
        smear_keys: bool = True,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.smear_keys = smear_keys
        self.initializer_range = initializer_range
        kwargs[LM_MODULE_KEY] = __name__  # a saved LM names the module to import before loading it
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


class SmearAttention(nn.Module):
    """Causal self-attention whose keys mix in the previous position's key (one scalar per head)."""

    def __init__(self, config: SmearLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.dim_head = config.hidden_size // config.num_attention_heads
        self.layer_idx = layer_idx
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.smear = nn.Parameter(torch.zeros(self.heads)) if config.smear_keys else None

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, key_padding: torch.Tensor | None, cache: Any
    ) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)  # (b, h, s, dh)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # raw keys of every position so far
        if self.smear is not None:
            if key_padding is not None:  # a padding position's key must not leak into the next one
                k = k * key_padding[:, None, :, None].to(k.dtype)
            previous = F.pad(k, (0, 0, 1, 0))[:, :, :-1]  # (b, h, s_k, dh), zeros before the first token
            k = k + self.smear.view(1, -1, 1, 1).to(k.dtype) * previous
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (b, h, s, dh)
        return self.out(y.transpose(1, 2).reshape(b, s, d))


class SmearDecoderLayer(nn.Module):
    """Pre-norm block: attention then an MLP, each residual."""

    def __init__(self, config: SmearLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size)
        self.attn = SmearAttention(config, layer_idx)
        self.norm2 = nn.LayerNorm(config.hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(config.hidden_size, config.intermediate_size),
            nn.GELU(),
            nn.Linear(config.intermediate_size, config.hidden_size),
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        mask: torch.Tensor,
        key_padding: torch.Tensor | None = None,
        cache: Any = None,
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states), mask, key_padding, cache)
        return hidden_states + self.mlp(self.norm2(hidden_states))


class SmearLMModel(nn.Module):
    """Embeddings (tokens + learned positions), the decoder layers and the final norm."""

    def __init__(self, config: SmearLMConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList(SmearDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size)


def _positions_and_masks(
    attention_mask: torch.Tensor | None, b: int, s: int, past: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Position ids (b, s), the boolean attention mask (b, 1, s, past + s) and the key padding (b, past + s)."""
    total = past + s
    if attention_mask is None:
        positions = torch.arange(past, total, device=device).expand(b, s)
        key_padding = None
    else:
        key_padding = attention_mask[:, -total:].bool()
        positions = (key_padding.long().cumsum(-1) - 1).clamp(min=0)[:, -s:]
    query_at = torch.arange(past, total, device=device)[:, None]  # (s, 1)
    causal = torch.arange(total, device=device)[None, :] <= query_at  # (s, total)
    mask = causal[None, None].expand(b, 1, s, total)
    if key_padding is not None:
        # Padded queries still see themselves, so no row of the softmax is empty (no NaN).
        itself = torch.arange(total, device=device)[None, :] == query_at
        mask = mask & (key_padding[:, None, None, :] | itself[None, None])
    return positions, mask, key_padding


class SmearLMForCausalLM(PreTrainedModel, GenerationMixin):
    """The causal LM: ``forward`` returns logits (and a loss with ``labels``); ``generate`` uses a DynamicCache."""

    config_class = SmearLMConfig
    base_model_prefix = "model"
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # noqa: RUF012 (transformers API)
    _supports_cache_class = True

    def __init__(self, config: SmearLMConfig) -> None:
        super().__init__(config)
        self.model = SmearLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, SmearAttention) and module.smear is not None:
            nn.init.zeros_(module.smear)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """input_ids (b, s); attention_mask (b, past + s) with 1 for real tokens; labels (b, s), -100 ignored."""
        if input_ids is None:
            raise ValueError("SmearLMForCausalLM needs input_ids")
        b, s = input_ids.shape
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        positions, mask, key_padding = _positions_and_masks(attention_mask, b, s, past, input_ids.device)
        hidden = self.model.embed_tokens(input_ids) + self.model.embed_positions(positions)
        for layer in self.model.layers:
            hidden = layer(hidden, mask, key_padding, past_key_values if use_cache else None)
        logits = self.lm_head(self.model.norm(hidden))  # (b, s, vocab)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
            )
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=past_key_values if use_cache else None
        )


def register() -> None:
    """Make the model type known to ``AutoConfig``, ``AutoModelForCausalLM`` and Flamingo (idempotent)."""
    register_custom_lm(SmearLMConfig, SmearLMForCausalLM, plain_head=True)


register()
