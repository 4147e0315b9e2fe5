"""The optimizer and the learning-rate schedule."""
from __future__ import annotations

import math

import torch


#: from-scratch presets whose default learning rate is below the 1e-3 of the small ones. The 6-layer, 512-wide
#: `small` (a post-LayerNorm BERT) does not train at 1e-3 with batch 32: TREC-6 dev accuracy 33.4 after 3 epochs
#: (every prediction one class), against 80.6 at 1e-4 and 83.5 at 3e-4; SST-2 stayed at the majority class.
PRESET_LR = {"small": 3e-4, "small-decoder": 3e-4}


#: LoRA's updates are low-rank and start at zero, so they take a larger step than full fine-tuning: 2e-4 is
#: the rate of the QLoRA paper's small models and of peft's and TRL's examples
PEFT_LR = 2e-4


def default_lr(spec: str, peft: bool = False) -> float:
    from .backbone import PRESETS

    if spec in PRESETS:
        return PRESET_LR.get(spec, 1e-3)
    return PEFT_LR if peft else 1e-4


def no_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Biases and normalisation weights (LayerNorm, RMSNorm: 1-D, or named *norm*) are not decayed:
    shrinking them towards 0 changes what the layer computes instead of regularising it."""
    return param.ndim < 2 or "norm" in name.lower()


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and normalisation weights."""
    decay, plain = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (plain if no_decay(name, param) else decay).append(param)
    groups = [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0})
              if g["params"]]
    # fused: one kernel over all parameters, on CPU and GPU. MiniLM on 2 CPU cores trained 1.14x faster
    # (median samples/s) than with foreach at the same dev F1: docs/performance.md, measured with
    # benchmarks/train_throughput.py --ab nlpkit_optimizer=foreach
    for kind in ({"fused": True}, {"foreach": True}, {}):
        try:
            return torch.optim.AdamW(groups, lr=lr, **kind)
        except (TypeError, RuntimeError):
            continue
    raise AssertionError("unreachable: plain AdamW always constructs")


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup: int, total: int):
    """Linear warm-up over ``warmup`` steps, then linear/cosine decay to 0 at ``total`` (or constant).

    The factor of step k is applied to optimizer step k+1, so the first update already moves (lr/warmup)
    and the last one uses a small positive rate.
    """

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

