from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ..errors import NotStandard
from . import transformers_counterpart as hf
from .classification import pool


class MultipleChoiceHead(nn.Module):
    """One score per (context, choice) encoding, softmax over the choices of each example.

    The batch holds every choice of every example as its own row (``input_ids`` of shape
    (total choices, length)) and ``choice_mask`` (examples, most choices) says which slots are real, so
    examples with different numbers of choices share a batch without dummy encodings.
    """

    def __init__(self, hidden_size: int, dropout: float = 0.1, pooling: Literal["cls", "mean", "last"] = "cls"):
        super().__init__()
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.scorer = nn.Linear(hidden_size, 1)

    def forward(self, backbone: nn.Module, batch: dict) -> dict:
        hidden = backbone.encode(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        # "pool_mask" (optional) limits mean pooling to some tokens, e.g. the option's segment
        pooled = pool(hidden, batch.get("pool_mask", batch["attention_mask"]), self.pooling)
        scores = self.scorer(self.dropout(torch.tanh(self.dense(self.dropout(pooled))))).squeeze(-1).float()
        mask = batch["choice_mask"].bool()
        logits = torch.full(mask.shape, -1e4, dtype=scores.dtype, device=scores.device)
        logits[mask] = scores  # rows are flattened example by example, choice by choice (row-major)
        out = {"logits": logits}
        if "labels" in batch:
            out["loss"] = nn.functional.cross_entropy(logits, batch["labels"])
        return out

    def to_transformers(self, backbone: Any, task: Any) -> tuple[Any, str]:
        """AutoModelForMultipleChoice, where both this head and the task's ``pooling`` option read the first token
        (the option names what the user chose: "option" pooling is a mean over a segment in the head)."""
        hf.require_encoder(backbone)
        if self.pooling != "cls" or getattr(task.options, "pooling", "cls") != "cls":
            raise NotStandard(f"the multiple-choice head pools by {getattr(task.options, 'pooling', self.pooling)!r}; "
                              "AutoModelForMultipleChoice pools the first token (train with --option pooling=cls "
                              "for a standard export)")
        model = hf.with_backbone("AutoModelForMultipleChoice", backbone, hf.head_config(backbone, num_labels=1))
        hf.pooler_and_classifier(model, self.dense, self.scorer)
        return model, "AutoModelForMultipleChoice"
