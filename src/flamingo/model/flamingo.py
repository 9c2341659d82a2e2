"""The Flamingo model: a frozen vision encoder and a stock causal LM joined by a Perceiver Resampler and gated
cross-attention blocks.

How it attaches without touching ``transformers``: the LM keeps its own class and modules. Four module hooks
do the rest, each reading a per-call media state that :meth:`Flamingo.forward` / :meth:`Flamingo.generate` set
up and always tear down (a ``ContextVar``, so threads never share it and an exception leaves nothing behind):

1. a forward pre-hook on the LM computes, once per LM call, which image each token sees;
2. a forward pre-hook on decoder layer i applies gated cross-attention block i to the layer's input;
3. a forward hook on the input embedding swaps in the trainable rows of the added tokens;
4. a forward hook on the output head computes the added tokens' logits from those rows (or from separate
   trainable output rows when the head is not tied). Its pre-hook can take the head's input instead: for the
   fused training loss, and for CPU decode steps, whose few rows take another kernel
   (:mod:`flamingo.model.kernels`, where every such hardware-motivated choice lives).

Axis letters: b batch, t image slot, f frame, n patch tokens, l latents, s text length, d width.
"""

from __future__ import annotations

import contextvars
import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.utils import ModelOutput

from flamingo.model.config import FlamingoConfig
from flamingo.model.cross_attention import (
    GatedCrossAttentionBlock,
    MediaRouting,
    fixed_image,
    media_positions,
    plan_routing,
)
from flamingo.model.feature_cache import VisionFeatureCache
from flamingo.model.kernels import added_rows, skinny_head_applies, skinny_linear
from flamingo.model.lm import (
    _get_path,
    cache_length,
    cross_attn_layer_indices,
    decoder_layers_path,
    has_custom_plain_head,
    is_tied,
    lm_width,
)
from flamingo.model.loss import IGNORE_INDEX, linear_cross_entropy
from flamingo.model.perceiver import PerceiverResampler
from flamingo.model.vision import VisionAdapter

# LM families whose causal-LM forward is exactly ``logits = lm_head(final hidden states)`` (no soft-capping, no
# logit scale): their training loss can come from the hidden states without building the logits. Custom LM classes
# say so when they register (``flamingo.model.lm.register_custom_lm(..., plain_head=True)``).
PLAIN_HEAD_TYPES = frozenset(
    {
        "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "phi", "phi3", "olmo", "gpt2", "gptj",
        "falcon", "bloom", "gpt_neox", "opt", "mpt",
    }
)  # fmt: skip


@dataclass
class _MediaState:
    """What the hooks need during one Flamingo call; discarded when the call returns."""

    media: torch.Tensor | None  # (b, t, l, d_vis) resampled latents, or None for text only
    base_offset: torch.Tensor  # (b,) <image> tokens before input_ids when an LM call starts without a cache
    offset: torch.Tensor  # (b,) <image> tokens consumed so far, for LM calls that continue a cache
    cache_kv: bool  # keep each block's media keys/values across LM calls (generation)
    kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    positions: torch.Tensor | None = None  # (b*e, s) media index of each token of the current LM call
    routing: MediaRouting | None = None  # the same, folded to (b, e*s), with the blocks' attention plan
    capture_hidden: bool = False  # take the output head's input and skip the head (fused training loss)
    hidden: torch.Tensor | None = None  # (b, s, d) what the head would have read
    skinny: torch.Tensor | None = None  # (b, s, d) a decode step's head input, computed by skinny_linear
    # generate(): no <image> can be generated, so every decode step of prompt r sees the same image
    fixed_images: bool = False
    decode_routing: MediaRouting | None = None  # the FixedImage plan, made at the first decode step
    selected: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # its keys/values


_ACTIVE: contextvars.ContextVar[dict[int, _MediaState] | None] = contextvars.ContextVar(
    "flamingo_media", default=None
)


@dataclass
class FlamingoOutput(ModelOutput):
    """``logits`` (b, s, vocab); ``loss`` when labels were given; the LM's ``past_key_values``; ``media``."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: Any = None
    media: torch.Tensor | None = None


class Flamingo(nn.Module):
    """Flamingo over any Hugging Face causal LM and any :class:`VisionAdapter`.

    Build with :meth:`from_config` / :meth:`from_pretrained` (``flamingo.model.checkpoint``) rather than by hand:
    they load the backbones, add the special tokens to the tokenizer and resize the LM's embeddings first.
    """

    def __init__(
        self, config: FlamingoConfig, lm: nn.Module, vision: VisionAdapter, tokenizer: Any = None
    ) -> None:
        super().__init__()
        tokens = config.tokens
        if tokens.image_id is None or tokens.first_new_id is None:
            raise ValueError(
                "config.tokens has no ids: prepare the tokenizer with add_special_tokens() first"
            )
        self.config = config
        self.tokenizer = tokenizer
        self.lm = lm
        self.vision = vision
        # A VisionFeatureCache here reuses the frozen encoder's features of images seen before (the trainer's
        # train.vision_cache_mb); it is used while the encoder is in eval mode.
        self.vision_cache: VisionFeatureCache | None = None
        self.perceiver = PerceiverResampler(vision.width, config.perceiver)
        self.layers_path = decoder_layers_path(lm, config.lm.decoder_layers_attr)
        layers = _get_path(lm, self.layers_path)
        self.xattn_indices = cross_attn_layer_indices(len(layers), config.cross_attn.every_n)
        width = lm_width(lm)
        self.cross_attn = nn.ModuleDict(
            {
                str(i): GatedCrossAttentionBlock(width, vision.width, config.cross_attn)
                for i in self.xattn_indices
            }
        )
        config.tokens.tied_output = is_tied(lm)
        self._new = slice(tokens.first_new_id, tokens.first_new_id + tokens.num_new)
        self.new_token_embeddings = nn.Parameter(lm.get_input_embeddings().weight[self._new].detach().clone())
        head = lm.get_output_embeddings()
        untied = head is not None and not config.tokens.tied_output
        self.new_token_output = nn.Parameter(head.weight[self._new].detach().clone()) if untied else None
        self.device_map: dict[str, int | str] | None = None
        """Where each module lives when the model was split over devices (``flamingo.model.dispatch``)."""
        self.segmented_attention: bool | None = None
        """Cross-attention plan under policy ``previous``: None picks per call (see ``plan_routing``; one-token
        decode steps gather each query's own keys); True or False force segmented or dense attention on every
        call (the same result; for tests and benchmarks)."""
        self._hooks: list[Any] = []
        self.attach()

    # ------------------------------------------------------------------ hooks
    def attach(self) -> None:
        """(Re)register the hooks on whatever modules sit in the LM now.

        Call again after replacing decoder layers (for example with activation-checkpoint wrappers) so the
        cross-attention runs outside the replaced module.
        """
        for handle in self._hooks:
            handle.remove()
        layers = _get_path(self.lm, self.layers_path)
        self._hooks = [self.lm.register_forward_pre_hook(self._before_lm, with_kwargs=True)]
        for i in self.xattn_indices:
            hook = _LayerHook(self, str(i))
            self._hooks.append(layers[i].register_forward_pre_hook(hook, with_kwargs=True))
        self._hooks.append(self.lm.get_input_embeddings().register_forward_hook(self._after_embedding))
        head = self.lm.get_output_embeddings()
        if head is not None:
            self._hooks.append(head.register_forward_pre_hook(self._before_head))
            self._hooks.append(head.register_forward_hook(self._after_head))

    def _state(self) -> _MediaState | None:
        return (_ACTIVE.get() or {}).get(id(self))

    def _before_lm(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        state = self._state()
        if state is None or state.media is None:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise ValueError(
                "Flamingo needs input_ids: inputs_embeds alone do not say where <image> tokens are"
            )
        expand = ids.shape[0] // state.offset.shape[0]  # beams / returned sequences / continuations per row
        continuing = cache_length(kwargs.get("past_key_values")) > 0
        segmented = self.segmented_attention
        # A decode step: one query per row sees one image, and planning segments would read sizes back from
        # the device at every new token. Under generate() each prompt's image is fixed (below); in other calls
        # each query gathers its own image's keys (dense for all_previous). Either way a new token's cost does
        # not grow with the number of images in the prompt.
        decoding = segmented is None and ids.shape[1] == 1
        policy = self.config.cross_attn.media_policy
        if decoding and continuing and state.fixed_images and policy == "previous":
            # Under generate() the image each prompt's new tokens see never changes: plan once, then reuse the
            # plan and each block's picked keys/values at every later step (offset stays as it is).
            if state.decode_routing is None:  # state.offset (b,): the images each prompt has seen
                state.decode_routing = MediaRouting(
                    state.offset[:, None], fixed=fixed_image(state.offset, state.media.dtype)
                )
            state.routing = state.decode_routing
            return
        offset = state.offset if continuing else state.base_offset
        offset = offset.repeat_interleave(expand) if expand > 1 else offset
        state.positions = media_positions(ids, self.config.tokens.image_id, offset)
        state.offset = state.positions[::expand, -1]
        b, slots, latents = state.media.shape[:3]
        state.routing = plan_routing(
            state.positions.reshape(b, -1),
            slots,
            latents,
            policy,
            segmented=False if decoding else segmented,
            gather=decoding,
        )

    def _cross_attend(self, key: str, hidden: torch.Tensor) -> torch.Tensor:
        state = self._state()
        block = self.cross_attn[key]
        if state is None or state.media is None:
            return block(hidden, None, None)[0]
        if state.routing is not None and state.routing.fixed is not None:
            # Decode steps under generate(): the block picks each prompt's image from all keys/values once;
            # later steps hand it the picked ones. The full set stays for any later multi-token call.
            hidden, state.selected[key] = block(
                hidden, state.routing, state.media, state.selected.get(key) or state.kv.get(key)
            )
            return hidden
        hidden, kv = block(hidden, state.routing, state.media, state.kv.get(key))
        if state.cache_kv:
            state.kv[key] = kv
        return hidden

    def _after_embedding(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        rel = args[0] - self._new.start
        added = self.new_token_embeddings.shape[0]
        is_new = (rel >= 0) & (rel < added)
        rows = added_rows(rel, self.new_token_embeddings, output.dtype)  # (b, s, d)
        scale = getattr(
            module, "embed_scale", None
        )  # scaled embeddings (Gemma, ...) multiply inside the module
        if scale is not None:
            rows = rows * torch.as_tensor(scale, dtype=output.dtype, device=output.device)
        return torch.where(is_new[..., None], rows, output)

    def _before_head(self, module: nn.Module, args: tuple) -> tuple | None:
        state = self._state()
        if state is None:
            return None
        if state.capture_hidden:
            state.hidden = args[0]
        elif skinny_head_applies(module, args[0]):
            state.skinny = args[0]
        else:
            return None
        return (args[0][..., :0, :], *args[1:])  # the head runs on no position: (b, 0, vocab) logits

    def _after_head(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        hidden = args[0]
        state = self._state()
        if state is not None and state.skinny is not None:
            hidden, state.skinny = state.skinny, None
            output = skinny_linear(hidden, module.weight, module.bias)
        rows = self.new_token_embeddings if self.new_token_output is None else self.new_token_output
        bias = module.bias[self._new] if getattr(module, "bias", None) is not None else None
        new = F.linear(hidden, rows.to(hidden.dtype), bias).to(output.dtype)
        # Written in place: a concatenation would copy the whole (b, s, vocab) logits forward and backward.
        output[..., self._new] = new
        return output

    @contextmanager
    def _media_state(
        self,
        media: torch.Tensor | None,
        offset: torch.Tensor,
        cache_kv: bool,
        capture_hidden: bool = False,
        fixed_images: bool = False,
    ) -> Iterator[_MediaState]:
        state = _MediaState(
            media, offset, offset, cache_kv, capture_hidden=capture_hidden, fixed_images=fixed_images
        )
        token = _ACTIVE.set({**(_ACTIVE.get() or {}), id(self): state})
        try:
            yield state
        finally:
            _ACTIVE.reset(token)

    def fused_loss_supported(self) -> bool:
        """Whether :meth:`forward` can compute a loss without logits (a plain linear head, see
        ``PLAIN_HEAD_TYPES`` or a custom LM registered with ``plain_head=True``)."""
        head = self.lm.get_output_embeddings()
        model_type = getattr(self.lm.config, "model_type", None)
        return isinstance(head, nn.Linear) and (
            model_type in PLAIN_HEAD_TYPES or has_custom_plain_head(model_type)
        )

    # ------------------------------------------------------------------ media
    def encode_media(self, images: torch.Tensor, image_mask: torch.Tensor | None = None) -> torch.Tensor:
        """images (b, t, f, c, h, w) [or (b, t, c, h, w)], image_mask (b, t) -> latents (b, t, l, d_vis).

        Empty slots (``image_mask`` False) are not run through the encoder; their latents are zeros.
        """
        images = _with_frames(images)
        b, t, f = images.shape[:3]
        flat = images.flatten(0, 1) if image_mask is None else images[image_mask.bool()]  # (N, f, c, h, w)
        if flat.shape[0] == 0:
            return images.new_zeros(b, t, self.config.perceiver.num_latents, self.vision.width)
        pixels = flat.flatten(0, 1).to(next(self.perceiver.parameters()).dtype)
        features = self._vision_features(pixels).unflatten(0, (flat.shape[0], f))  # (N, f, n, d)
        latents = self.perceiver(features)  # (N, l, d)
        if image_mask is None:
            return latents.unflatten(0, (b, t))
        out = latents.new_zeros(b, t, *latents.shape[1:])
        out[image_mask.bool()] = latents
        return out

    def _vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (N, c, h, w) -> encoder features (N, n, d_vis), through ``vision_cache`` when one is set."""
        cache = self.vision_cache
        if cache is None or self.vision.training:
            return self.vision(pixels)
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.vision.parameters()):
            raise ValueError(
                "vision_cache holds features of a frozen vision encoder, but this one has trainable parameters: "
                "freeze it or set model.vision_cache = None"
            )
        return cache(self.vision, pixels)

    def _prepare_media(
        self,
        images: torch.Tensor | None,
        image_mask: torch.Tensor | None,
        media: torch.Tensor | None,
        input_ids: torch.Tensor,
        image_offset: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Check that no row has more <image> tokens than images, then encode (unless ``media`` is given).

        The check comes first: it reads one number back from the device, which costs nothing before the
        encoder's kernels are queued and a pipeline stall after them.
        """
        source = media if media is not None else images
        b = input_ids.shape[0] if source is None else source.shape[0]
        offset = torch.zeros(b, dtype=torch.long, device=input_ids.device)
        if image_offset is not None:
            offset = offset + image_offset.to(input_ids.device)
        counts = (input_ids == self.config.tokens.image_id).sum(1)
        expand = input_ids.shape[0] // b
        counts = counts.view(b, expand).max(1).values + offset
        if source is None:
            available = torch.zeros_like(counts)
        elif image_mask is not None:
            available = image_mask.sum(1).to(counts.device)
        else:
            available = torch.full_like(counts, source.shape[1])
        bad = (counts > available).nonzero().flatten().tolist()
        if bad:
            r = bad[0]
            raise ValueError(
                f"row {r} has {counts[r].item()} <image> tokens but {available[r].item()} images: give one image "
                "per <image> token, in the order the tokens appear"
            )
        if media is None and images is not None:
            media = self.encode_media(images, image_mask)
        return media, offset

    # ------------------------------------------------------------------ calls
    def forward(
        self,
        images: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        image_mask: torch.Tensor | None = None,
        media: torch.Tensor | None = None,
        image_offset: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        return_logits: bool = True,
        loss_reduction: str = "mean",
        **lm_kwargs: Any,
    ) -> FlamingoOutput:
        """images (b, t, f, c, h, w) or precomputed ``media`` (b, t, l, d_vis); input_ids (b*e, s).

        ``e > 1`` rows per media row share its images (continuations scored against one prompt).
        ``image_offset`` (b,) counts <image> tokens already in ``past_key_values``. ``labels`` (b, s) gives the
        next-token cross-entropy over labels != -100 (``loss_reduction``: ``mean``, 0 when there are none and
        never NaN, or ``sum``).

        Like a Hugging Face model's, the output holds the logits, with the loss too when ``labels`` are given.
        ``return_logits=False`` (the trainer's call) asks for the loss alone: ``logits`` is then None and, where
        the LM family allows it (``fused_loss_supported()``), the logits are never built: the loss comes straight
        from the final hidden states in chunks (``flamingo.model.loss``), which saves the largest activation of a
        training step and most of its memory traffic.
        """
        if input_ids is None:
            raise ValueError("input_ids is required")
        if labels is None and not return_logits:
            raise ValueError(
                "return_logits=False asks for the loss alone: give labels, or leave return_logits on"
            )
        media, offset = self._prepare_media(images, image_mask, media, input_ids, image_offset)
        fused = labels is not None and not return_logits and self.fused_loss_supported()
        with self._media_state(media, offset, cache_kv=False, capture_hidden=fused) as state:
            out = self.lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                past_key_values=past_key_values,
                use_cache=use_cache,
                **lm_kwargs,
            )
        if fused:
            if state.hidden is None:
                raise RuntimeError(
                    f"{type(self.lm).__name__} never called its output head module; pass return_logits=True (the "
                    "plain loss) and report its model_type so that it leaves PLAIN_HEAD_TYPES"
                )
            head = self.lm.get_output_embeddings()
            rows = self.new_token_embeddings if self.new_token_output is None else self.new_token_output
            loss = linear_cross_entropy(
                state.hidden, labels, head.weight, head.bias, rows, self._new.start, loss_reduction
            )
            return FlamingoOutput(loss=loss, logits=None, past_key_values=out.past_key_values, media=media)
        loss = None if labels is None else next_token_loss(out.logits, labels, loss_reduction)
        logits = out.logits if return_logits else None
        return FlamingoOutput(loss=loss, logits=logits, past_key_values=out.past_key_values, media=media)

    @torch.no_grad()
    def generate(
        self,
        images: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        image_mask: torch.Tensor | None = None,
        media: torch.Tensor | None = None,
        generation_config: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Hugging Face ``generate`` on the LM with images: every argument it takes works here.

        Each image is encoded once; each block's media keys/values are computed once and shared by every step
        and every beam; the LM uses its own KV cache. Stops at ``<|endofchunk|>`` unless ``eos_token_id`` is
        given; ``<image>`` is never generated. Returns what the LM's ``generate`` returns (prompt included).
        """
        if input_ids is None:
            raise ValueError("input_ids is required")
        media, offset = self._prepare_media(images, image_mask, media, input_ids, None)
        tokens = self.config.tokens
        user_eos = kwargs.get("eos_token_id", getattr(generation_config, "eos_token_id", None))
        if user_eos is None:
            kwargs["eos_token_id"] = tokens.eoc_id
        if kwargs.get("pad_token_id", getattr(generation_config, "pad_token_id", None)) is None:
            kwargs["pad_token_id"] = tokens.pad_id
        if generation_config is not None:
            generation_config = copy.deepcopy(generation_config)
        suppress = kwargs.pop("suppress_tokens", None) or getattr(generation_config, "suppress_tokens", None)
        if generation_config is not None:
            generation_config.suppress_tokens = None
        processors = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
        processors.append(SuppressTokens([*(suppress or []), tokens.image_id]))
        kwargs["logits_processor"] = processors
        if kwargs.get("stop_strings") and "tokenizer" not in kwargs:
            kwargs["tokenizer"] = self.tokenizer
        with self._media_state(media, offset, cache_kv=True, fixed_images=True):  # <image> is suppressed
            return self.lm.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=generation_config,
                **kwargs,
            )

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_config(cls, config: FlamingoConfig, trust_remote_code: bool = False, **parts: Any) -> Flamingo:
        """New adapters on the backbones the config names (or those passed as ``lm``/``tokenizer``/``vision``).

        ``trust_remote_code=True`` lets an LM defined by its repository's own code run it; without it such an LM
        is refused before any of that code is imported.
        """
        from flamingo.model.checkpoint import build_flamingo

        return build_flamingo(config, trust_remote_code=trust_remote_code, **parts)

    @classmethod
    def from_pretrained(cls, path_or_id: str, trust_remote_code: bool = False, **kwargs: Any) -> Flamingo:
        """Load a checkpoint directory or hub id written by :meth:`save_pretrained`.

        ``trust_remote_code=True`` lets a checkpoint whose LM is defined by its repository's own code run it;
        without it such a checkpoint is refused before any of that code is imported (a ``trust_remote_code``
        written in the checkpoint's ``config.json`` is never taken as permission). Other keywords: ``revision``,
        ``dtype``, ``device``, ``device_map``, ``max_memory``, ``offload_folder``, ``quantization`` (see
        :func:`flamingo.model.checkpoint.from_pretrained`: the weights are read straight onto their devices).
        """
        from flamingo.model.checkpoint import from_pretrained

        return from_pretrained(path_or_id, trust_remote_code=trust_remote_code, **kwargs)

    def save_pretrained(
        self, directory: str, save_backbones: bool = False, push_to_hub: str | None = None
    ) -> None:
        """Write ``config.json``, ``model.safetensors``, the tokenizer and a model card (``README.md``);
        optionally upload the directory to the hub repository ``push_to_hub``."""
        from flamingo.model.checkpoint import save_pretrained

        path = save_pretrained(self, directory, save_backbones)
        if push_to_hub:
            from flamingo.model.card import push_to_hub as push

            push(path, push_to_hub)

    def push_to_hub(
        self,
        repo_id: str,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        save_backbones: bool = False,
    ) -> Any:
        """Save to a temporary directory (model card included) and upload it to ``repo_id`` in one commit.

        Follows ``huggingface_hub``: the repository is created when missing (``private`` applies then), ``token``
        defaults to the logged-in one, ``revision`` names a branch (created when missing). Returns the commit
        information of ``HfApi.upload_folder``.
        """
        import tempfile

        from flamingo.model.card import push_to_hub as push
        from flamingo.model.card import write_model_card
        from flamingo.model.checkpoint import save_pretrained

        with tempfile.TemporaryDirectory(prefix="flamingo-push-") as tmp:
            path = save_pretrained(self, tmp, save_backbones)
            from flamingo.model.config import FlamingoConfig

            write_model_card(path, FlamingoConfig.load(path / "config.json"), repo_id=repo_id)
            return push(path, repo_id, private, token, revision, commit_message)

    # ------------------------------------------------------------------ parameters
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained tensors only: Perceiver, cross-attention blocks and the added tokens' rows."""
        prefixes = ("perceiver.", "cross_attn.", "new_token_")
        return {k: v for k, v in self.state_dict().items() if k.startswith(prefixes)}

    def adapter_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        prefixes = ("perceiver.", "cross_attn.", "new_token_")
        return ((n, p) for n, p in self.named_parameters() if n.startswith(prefixes))


class _LayerHook:
    """Forward pre-hook of one decoder layer: hidden states in -> gated cross-attention applied."""

    def __init__(self, model: Flamingo, key: str) -> None:
        self.model, self.key = model, key

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (self.model._cross_attend(self.key, args[0]), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = self.model._cross_attend(self.key, kwargs["hidden_states"])
        return args, kwargs


def _with_frames(images: torch.Tensor) -> torch.Tensor:
    if images.ndim == 5:
        return images.unsqueeze(2)  # (b, t, c, h, w) -> (b, t, 1, c, h, w)
    if images.ndim != 6:
        raise ValueError(
            f"images must be (b, t, f, c, h, w) or (b, t, c, h, w), got shape {tuple(images.shape)}"
        )
    return images


class SuppressTokens(LogitsProcessor):
    """Never generate these token ids: their scores become -inf.

    Hugging Face's ``suppress_tokens`` does the same through ``isin`` over the whole vocabulary at every step
    (0.25 ms per step on a CPU at a 32k vocabulary); this writes the few columns.
    """

    def __init__(self, token_ids: list[int]) -> None:
        self.token_ids = sorted(set(token_ids))
        self._index: dict[tuple[torch.device, int], torch.Tensor] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """scores (b, vocab) -> the same with the suppressed columns at -inf (ids beyond vocab are ignored)."""
        key = (scores.device, scores.shape[-1])
        if key not in self._index:
            kept = [i for i in self.token_ids if 0 <= i < key[1]]
            self._index[key] = torch.tensor(kept, dtype=torch.long, device=scores.device)
        return scores.index_fill(-1, self._index[key], float("-inf"))


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits[:, :-1] against labels[:, 1:] over labels != -100: ``mean`` (0, not NaN, if
    none) or ``sum``."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    shift_logits = logits[:, :-1].flatten(0, 1).float()
    shift_labels = labels[:, 1:].flatten().to(logits.device)
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    if reduction == "sum":
        return total
    return total / (shift_labels != IGNORE_INDEX).sum().clamp(min=1)
