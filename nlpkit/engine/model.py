"""The model: one shared backbone and a head per task instance, keyed by the instance's name."""
from __future__ import annotations

import torch
from torch import nn

from . import adapters
from .backbone import Backbone


class MultiTaskModel(nn.Module):
    def __init__(self, backbone: Backbone, heads: dict[str, nn.Module]):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)

    def forward(self, task: str, batch: dict) -> dict:
        return self.heads[task](self.backbone, batch)

    def saved_names(self) -> set[str] | None:
        """The state-dict names a checkpoint of this model holds; None for all of them (the model owns what it
        saves: an adapter-only backbone keeps its base out of the file, see nlpkit.engine.adapters)."""
        return adapters.saved_names(self)

    def tensors_to_save(self) -> dict[str, torch.Tensor] | None:
        """What an unsharded checkpoint writes when not every tensor is saved; None: the whole state dict."""
        return adapters.tensors_to_save(self)
