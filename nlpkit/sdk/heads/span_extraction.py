from __future__ import annotations

from typing import Any

from torch import nn

from . import transformers_counterpart as hf


class SpanExtractionHead(nn.Module):
    """Start and end logits over the tokens of each sequence (extractive QA).

    Padding positions get a very low logit so that probabilities and the arg-max only ever range over
    real tokens; the loss is the mean of the start and end cross-entropies, as in BERT's SQuAD head.
    A label outside the sequence (``-100`` or any index >= length) is ignored.
    """

    def __init__(self, hidden_size: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.qa_outputs = nn.Linear(hidden_size, 2)

    def forward(self, backbone: nn.Module, batch: dict) -> dict:
        hidden = backbone.encode(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        logits = self.qa_outputs(self.dropout(hidden)).float()
        logits = logits.masked_fill(batch["attention_mask"].unsqueeze(-1) == 0, -1e4)
        start_logits, end_logits = logits[..., 0], logits[..., 1]
        out = {"start_logits": start_logits, "end_logits": end_logits}
        if "start_positions" in batch:
            length = start_logits.size(1)
            starts = batch["start_positions"].clone()
            ends = batch["end_positions"].clone()
            starts[(starts < 0) | (starts >= length)] = -100
            ends[(ends < 0) | (ends >= length)] = -100
            loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
            out["loss"] = (loss_fn(start_logits, starts) + loss_fn(end_logits, ends)) / 2
        return out

    def to_transformers(self, backbone: Any, task: Any) -> tuple[Any, str]:
        """AutoModelForQuestionAnswering: its ``qa_outputs`` is this head's start/end layer."""
        hf.require_encoder(backbone)
        model = hf.with_backbone("AutoModelForQuestionAnswering", backbone, hf.head_config(backbone, num_labels=2))
        hf.copy_linear(model.qa_outputs, self.qa_outputs)
        return model, "AutoModelForQuestionAnswering"
