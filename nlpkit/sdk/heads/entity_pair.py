from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import NotStandard
from . import transformers_counterpart as hf
from .classification import pool


class EntityPairHead(nn.Module):
    """One label per marked entity pair, from the hidden states at given positions (the entity-start
    markers), concatenated.

    The "entity start" representation of Baldini Soares et al. (2019): the marker tokens see the
    whole sentence and know which entity they open, so their states carry the pair's roles, which a
    pooled [CLS] vector does not. ``batch["entity_positions"]`` is (batch, num_entities) token indices.

    On a decoder a marker sees only what comes before it (the first entity's marker knows nothing of the
    second), so ``representation="last"`` reads the last real token instead, which saw both marked entities.
    """

    def __init__(self, hidden_size: int, num_labels: int, num_entities: int = 2, dropout: float = 0.1,
                 representation: str = "entity-start"):
        super().__init__()
        self.num_entities = num_entities
        self.representation = representation
        self.dropout = nn.Dropout(dropout)
        width = hidden_size if representation == "last" else num_entities * hidden_size
        self.dense = nn.Linear(width, hidden_size)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, backbone: nn.Module, batch: dict) -> dict:
        hidden = backbone.encode(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        if self.representation == "last":
            pair = pool(hidden, batch["attention_mask"], "last")
        else:
            positions = batch["entity_positions"]  # (batch, num_entities)
            index = positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1))
            pair = hidden.gather(1, index).reshape(hidden.size(0), -1)  # (batch, num_entities * hidden)
        logits = self.classifier(self.dropout(torch.tanh(self.dense(self.dropout(pair)))))
        out = {"logits": logits}
        if "labels" in batch:
            out["loss"] = nn.functional.cross_entropy(logits.float(), batch["labels"])
        return out

    def to_transformers(self, backbone: Any, task: Any) -> tuple[Any, str]:
        """Always NotStandard: the export writes this head's tensors beside the backbone instead, and says why."""
        hf.require_encoder(backbone)
        raise NotStandard("the entity-pair head reads the states of two entity-marker tokens; no standard "
                          "transformers head does that")
