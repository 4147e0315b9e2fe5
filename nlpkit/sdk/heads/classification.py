from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ..errors import NotStandard
from . import transformers_counterpart as hf


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """First-token ([CLS]), last-real-token or mask-aware mean pooling of (batch, length, hidden) states.

    "last" is how a decoder reads a sequence: only its last token has seen all of it. It is the rightmost
    position the mask marks (the argmax of position x mask), so it is right with either padding side.
    """
    if how == "cls":
        return hidden[:, 0]
    if how == "last":
        positions = torch.arange(1, hidden.size(1) + 1, device=hidden.device)
        last = (attention_mask.to(positions.dtype) * positions).argmax(-1)
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def resolve_pooling(choice: str, backbone_kind: str, encoder_default: str = "cls") -> str:
    """A task's ``pooling: auto``: the last real token on a decoder (the only one that saw the whole input),
    ``encoder_default`` otherwise; any other choice is kept."""
    if choice != "auto":
        return choice
    return "last" if backbone_kind == "decoder" else encoder_default


class SequenceClassificationHead(nn.Module):
    """One label per sequence (softmax + cross-entropy) or several (sigmoid + binary cross-entropy)."""

    def __init__(
        self,
        hidden_size: int,
        num_labels: int,
        dropout: float = 0.1,
        pooling: Literal["cls", "mean", "last"] = "cls",
        multi_label: bool = False,
    ):
        super().__init__()
        self.pooling = pooling
        self.multi_label = multi_label
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, backbone: nn.Module, batch: dict) -> dict:
        hidden = backbone.encode(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        pooled = pool(hidden, batch["attention_mask"], self.pooling)
        logits = self.classifier(self.dropout(torch.tanh(self.dense(self.dropout(pooled)))))
        out = {"logits": logits}
        if "labels" in batch:
            if self.multi_label:
                out["loss"] = nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["labels"].float())
            else:
                out["loss"] = nn.functional.cross_entropy(logits.float(), batch["labels"])
        return out

    def to_transformers(self, backbone: Any, task: Any) -> tuple[Any, str]:
        """AutoModelForSequenceClassification, where this head pools the first token as that class does."""
        hf.require_encoder(backbone)
        if self.pooling != "cls":
            raise NotStandard(f"the classification head pools by {self.pooling!r}; standard classes pool the first "
                              "token ([CLS])")
        problem = "multi_label_classification" if self.multi_label else "single_label_classification"
        config = hf.head_config(backbone, problem_type=problem, **hf.label_config(task))
        model = hf.with_backbone("AutoModelForSequenceClassification", backbone, config)
        hf.pooler_and_classifier(model, self.dense, self.classifier)
        return model, "AutoModelForSequenceClassification"
