"""``EvalModel`` over the reference ``open_flamingo`` package (open-flamingo==2.0.1), behaving as its
evaluation wrapper does, so a reference OpenFlamingo model can be evaluated by our evaluator and serve as the
baseline of ``bench/bench_eval.py``.

Behaviour reproduced from reading ``open_flamingo/eval/evaluate.py`` and the documented wrapper interface
(``eval_model.py``; the wheel leaves out ``eval/models/``):

* generation: batches in the given order (no sorting), every image preprocessed and encoded again for every
  prompt (no feature cache), left padding, ``Flamingo.generate`` (which repeats the images for each beam);
* rank classification: the prompt batch is run once with ``use_cache=True``, then each class name is fed one
  token at a time against that cache, one class name after another, and the mean log-probability is kept.

Two deliberate differences, both needed under transformers 5 and neither changing the cost: a batch whose
attention mask is all ones gets one left pad column (its LM forward requires a mask that ``generate`` drops
otherwise), and the prompt cache is cropped back after each class name (transformers 5 caches grow in place,
so without it every class name would see the previous ones).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from flamingo.eval.models import EvalModel, GenerateRequest, ImageLike, RankRequest, load_image
from flamingo.prompts import check_prompt


class OpenFlamingoEvalModel(EvalModel):
    """The reference ``open_flamingo.Flamingo`` behind our ``EvalModel`` interface."""

    def __init__(
        self,
        model: Any,
        image_processor: Callable[[Any], torch.Tensor],
        tokenizer: Any,
        batch_size: int = 8,
        name: str = "open_flamingo",
    ) -> None:
        self.model = model.eval()
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.batch_size = batch_size
        self.name = name

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ inputs
    def _prepare_images(self, rows: Sequence[Sequence[ImageLike]]) -> torch.Tensor | None:
        """Every image of every row preprocessed into (b, t, 1, c, h, w), zeros for missing slots."""
        slots = max((len(r) for r in rows), default=0)
        if slots == 0:
            return None
        batch = None
        for i, row in enumerate(rows):
            for j, image in enumerate(row):
                pixels = self.image_processor(load_image(image))
                if batch is None:
                    batch = torch.zeros((len(rows), slots, 1, *pixels.shape), dtype=pixels.dtype)
                batch[i, j, 0] = pixels
        return batch.to(self.device)

    def _prepare_text(self, prompts: Sequence[str], pad_mask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(list(prompts), padding="longest", return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if pad_mask and bool(mask.all()):  # transformers 5: see the module docstring
            ids = torch.cat([torch.full_like(ids[:, :1], self.tokenizer.pad_token_id), ids], dim=1)
            mask = torch.cat([torch.zeros_like(mask[:, :1]), mask], dim=1)
        return ids.to(self.device), mask.to(self.device)

    # ------------------------------------------------------------------ generation
    @torch.inference_mode()
    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        outputs: list[str] = []
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start : start + self.batch_size]
            for r in batch:
                check_prompt(r.prompt, len(r.images), self.image_token)
            images = self._prepare_images([r.images for r in batch])
            ids, mask = self._prepare_text([r.prompt for r in batch], pad_mask=True)
            first = batch[0]
            out = self.model.generate(
                images,
                ids,
                mask,
                min_new_tokens=first.min_new_tokens,
                max_new_tokens=first.max_new_tokens,
                num_beams=first.num_beams,
                length_penalty=first.length_penalty,
            )
            outputs.extend(self.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True))
        return outputs

    # ------------------------------------------------------------------ scoring
    def _forward(self, ids: torch.Tensor, mask: torch.Tensor | None, cache: Any) -> Any:
        return self.model(
            vision_x=None,
            lang_x=ids,
            attention_mask=mask,
            clear_conditioned_layers=False,
            past_key_values=cache,
            use_cache=True,
        )

    @torch.inference_mode()
    def _rank_batch(self, requests: Sequence[RankRequest], class_names: Sequence[str]) -> torch.Tensor:
        """(b, c) mean log-probabilities, class name by class name and token by token from the prompt cache."""
        images = self._prepare_images([r.images for r in requests])
        ids, mask = self._prepare_text([r.prompt for r in requests], pad_mask=False)
        self.model.cache_media(input_ids=ids, vision_x=images)
        try:
            prompt = self._forward(ids, mask, None)
            cache, prompt_len = prompt.past_key_values, ids.shape[1]
            columns = []
            for name in class_names:
                tokens = self.tokenizer(name, add_special_tokens=False, return_tensors="pt")["input_ids"]
                tokens = tokens.to(self.device).repeat(len(requests), 1)  # (b, n)
                logits = [prompt.logits]
                for j in range(tokens.shape[1]):
                    out = self._forward(tokens[:, j : j + 1], None, cache)
                    cache = out.past_key_values
                    logits.append(out.logits)
                cache.crop(prompt_len - cache.get_seq_length())  # transformers 5: see the module docstring
                logp = F.log_softmax(torch.cat(logits, dim=1).float(), dim=-1)
                picked = logp[:, -tokens.shape[1] - 1 : -1].gather(2, tokens[:, :, None])[..., 0]
                columns.append(picked.mean(dim=1))
        finally:
            self.model.uncache_media()
        return torch.stack(columns, dim=1).cpu()

    def rank_classification(self, requests: Sequence[RankRequest]) -> torch.Tensor:
        rows = []
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start : start + self.batch_size]
            names = batch[0].class_names
            if any(list(r.class_names) != list(names) for r in batch):
                raise ValueError("the reference scores one list of class names per batch.")
            rows.append(self._rank_batch(batch, names))
        return torch.cat(rows) if rows else torch.empty(0, 0)

    def loglikelihood(
        self, context: str, images: Sequence[ImageLike], continuations: Sequence[str], reduce: str = "sum"
    ) -> torch.Tensor:
        mean = self._rank_batch([RankRequest(context, list(images), continuations)], continuations)[0]
        if reduce == "mean":
            return mean
        counts = [len(self.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in continuations]
        return mean * torch.tensor(counts, dtype=mean.dtype)

    # ------------------------------------------------------------------ embeddings
    @torch.inference_mode()
    def embed_images(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """The open_clip vision tower's pooled embedding of each image (n, d)."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            pixels = torch.stack(
                [self.image_processor(load_image(im)) for im in images[start : start + self.batch_size]]
            )
            chunks.append(self.model.vision_encoder(pixels.to(self.device))[0].float().cpu())
        return torch.cat(chunks)
