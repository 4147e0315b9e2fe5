from __future__ import annotations

from typing import Any

from torch import nn

from . import transformers_counterpart as hf


class TokenClassificationHead(nn.Module):
    """A label per token; positions labelled -100 (special tokens, non-first sub-words) carry no loss."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, backbone: nn.Module, batch: dict) -> dict:
        hidden = backbone.encode(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        logits = self.classifier(self.dropout(hidden))
        out = {"logits": logits}
        if "labels" in batch:
            out["loss"] = nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(), batch["labels"].reshape(-1), ignore_index=-100
            )
        return out

    def to_transformers(self, backbone: Any, task: Any) -> tuple[Any, str]:
        """AutoModelForTokenClassification: the same linear layer over every token's state."""
        hf.require_encoder(backbone)
        model = hf.with_backbone("AutoModelForTokenClassification", backbone,
                                 hf.head_config(backbone, **hf.label_config(task)))
        hf.copy_linear(model.classifier, self.classifier)
        return model, "AutoModelForTokenClassification"
