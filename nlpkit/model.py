"""The model: one shared backbone and a head per task instance, keyed by the instance's name."""
from __future__ import annotations

from torch import nn

from .backbone import Backbone


class MultiTaskModel(nn.Module):
    def __init__(self, backbone: Backbone, heads: dict[str, nn.Module]):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)

    def forward(self, task: str, batch: dict) -> dict:
        return self.heads[task](self.backbone, batch)
