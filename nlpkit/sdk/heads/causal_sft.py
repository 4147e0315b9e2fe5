"""Causal-LM supervised fine-tuning: text-to-text tasks on a decoder-only backbone (Llama, Qwen, Gemma, GPT-2).

The model reads one sequence, ``prompt + target``, and learns to continue the prompt with the target:
the loss is the next-token cross-entropy on the target tokens only (the response-only loss that TRL,
LLaMA-Factory and axolotl default to), so the prompt costs attention but no LM-head work. The head owns
no weights: the decoder stack is ``backbone.encode`` and the vocabulary projection ``backbone.lm_logits``
(the model's own head, its soft-capping included), applied only at the positions that predict a target
token: with a 262k vocabulary (Gemma 3), (batch, length, vocab) logits over the prompt would be most of
the memory a step needs.

Batches come from ``TextGenerator.collate``: ``input_ids``/``attention_mask`` hold the prompt with
either padding side, ``labels`` the target ids ending in EOS, right-padded with -100. Decoding is
transformers' ``generate`` on left-padded prompts (the real tokens moved to the right end, whatever
padding came in), which stops at EOS.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError


def left_pad(input_ids: torch.Tensor, attention_mask: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same rows with their real tokens moved to the right end (in order) and ``pad`` before them."""
    order = torch.argsort(attention_mask.long(), dim=1, stable=True)  # padding first, then the real tokens
    mask = attention_mask.gather(1, order)
    return input_ids.gather(1, order).masked_fill(mask == 0, pad), mask


def join_prompt_and_target(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, pad: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row ``[real prompt tokens, real target tokens]``, right-padded: (ids, attention mask, labels with
    -100 on the prompt and on padding). Right padding puts every real token at position = its index, the
    position ids a model makes when it is given none, so either padding side of the prompt gives the same."""
    target_mask = (labels != -100).long()
    ids = torch.cat([input_ids, labels.masked_fill(target_mask == 0, pad)], 1)
    mask = torch.cat([attention_mask.long(), target_mask], 1)
    marks = torch.cat([torch.full_like(input_ids, -100), labels], 1)
    order = torch.argsort(1 - mask, dim=1, stable=True)  # real tokens first, in order: prompt then target
    width = int(mask.sum(1).max())
    mask = mask.gather(1, order)[:, :width]
    ids = ids.gather(1, order)[:, :width].masked_fill(mask == 0, pad)
    marks = marks.gather(1, order)[:, :width].masked_fill(mask == 0, -100)
    return ids, mask, marks


class CausalSftHead(nn.Module):
    """Response-only next-token loss in ``forward``; left-padded ``generate`` that stops at EOS.

    ``stop_ids``: the ids that end an output (the tokenizer's EOS and the model's other end-of-turn ids);
    the first one is the EOS that the targets end with.
    """

    def __init__(self, backbone: Any, label_smoothing: float = 0.0, stop_ids: Sequence[int] | None = None):
        super().__init__()
        tok = backbone.tokenizer
        eos = tok.eos_token_id
        self.stop_ids = sorted({int(t) for t in (stop_ids or [eos]) if t is not None})
        if not self.stop_ids:
            raise ConfigError(f"backbone {backbone.spec!r}: its tokenizer has no EOS token; generation needs one")
        self.pad = int(tok.pad_token_id if tok.pad_token_id is not None else self.stop_ids[0])
        self.label_smoothing = label_smoothing
        config = backbone.model.config
        #: GPT-2's learned position table ends here; rotary models can go further, but not as trained
        self.positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    # ---- training ---------------------------------------------------------------------------------
    def forward(self, backbone: nn.Module, batch: dict) -> dict:
        labels = batch.get("labels")
        if labels is None:
            raise ValueError("the causal-LM fine-tuning head needs labels in training; use generate() to predict")
        ids, mask, marks = join_prompt_and_target(batch["input_ids"], batch["attention_mask"], labels, self.pad)
        hidden = backbone.encode(ids, mask)
        return {"loss": target_loss(backbone, hidden, marks, self.label_smoothing)}

    # ---- decoding ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, backbone: nn.Module, batch: dict, *, num_beams: int = 1, max_new_tokens: int = 128,
                 length_penalty: float = 1.0, no_repeat_ngram_size: int = 0, early_stopping: bool = True) -> torch.Tensor:
        """The new ids (batch, steps) after each prompt; a row that ended ends in EOS then padding."""
        from transformers import GenerationConfig, LogitsProcessorList

        ids, mask = left_pad(batch["input_ids"], batch["attention_mask"], self.pad)
        width = int(mask.sum(1).max())
        ids, mask = ids[:, ids.size(1) - width:], mask[:, mask.size(1) - width:]
        if self.positions and width + max_new_tokens > self.positions:
            raise ConfigError(f"a {width}-token prompt + max_new_tokens={max_new_tokens} exceed the backbone's "
                              f"{self.positions} positions; lower max_new_tokens or max_length")
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams,
                                  eos_token_id=self.stop_ids, pad_token_id=self.pad)
        if num_beams > 1:  # beam-only flags; transformers warns when they come with greedy search
            config.length_penalty, config.early_stopping = length_penalty, early_stopping
        processors = LogitsProcessorList([NewTokensNoRepeat(no_repeat_ngram_size, width)] if no_repeat_ngram_size
                                         else [])
        out = backbone.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                      logits_processor=processors)
        return out[:, width:]


def target_loss(backbone: Any, hidden: torch.Tensor, marks: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean next-token cross-entropy (fp32) over the marked tokens: position t predicts token t+1, and only the
    positions whose next token is a target are projected onto the vocabulary."""
    targets = marks[:, 1:]
    keep = targets != -100
    if not bool(keep.any()):
        return hidden.sum() * 0.0  # nothing to learn in this batch (cannot happen with EOS-ended targets)
    logits = backbone.lm_logits(hidden[:, :-1][keep]).float()
    return F.cross_entropy(logits, targets[keep], label_smoothing=label_smoothing)


class NewTokensNoRepeat:
    """transformers' n-gram blocking over the generated tokens only: a decoder-only model's ``input_ids``
    include the prompt, and blocking the source's n-grams would forbid copying a name or a number from it."""

    def __init__(self, size: int, prompt_width: int):
        from transformers import NoRepeatNGramLogitsProcessor

        self.inner = NoRepeatNGramLogitsProcessor(size)
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.inner(input_ids[:, self.prompt_width:], scores)
