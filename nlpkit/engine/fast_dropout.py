"""Dropout with cheaper masks on CPU (``performance.fast_dropout``, on by default).

On CPU, torch draws a dropout mask element by element from its Mersenne Twister (``bernoulli_``): about
7 ns per element here, so the 20 masks of a MiniLM step took 16% of a bf16 step, as long as a third of
its matmuls (docs/performance.md). Here the keep/drop bits come from numpy's SFC64 generator in bulk
(16 random bits per element, compared with ``round(p * 65536)``; the kept values are scaled by the exact
inverse of the keep rate, so the expectation is unchanged): on a (32, 40, 384) bf16 tensor 0.9 ms
to draw and apply, against 3.6-4.2 ms for ``F.dropout``.

Same function, different random numbers: each mask's generator is seeded from torch's own CPU generator,
so a run is still reproducible from ``trainer.seed``, exact resume still restores it (torch's RNG state is
in the checkpoint), and gradient checkpointing's recomputation (which restores torch's RNG state) draws
the same mask again. GPUs keep torch's fused dropout, which is already cheap there.

Two places draw masks: ``nn.Dropout`` modules (hidden states, embeddings, heads), which become
:class:`FastDropout`, and the attention probabilities, which SDPA drops inside its kernel. For the
latter, training on CPU switches the attention to ``nlpkit_sdpa``: SDPA itself whenever dropout is off
(evaluation, decoders without attention dropout), else the same computation as SDPA's math path
with this module's mask.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

#: random bits per element: p is honoured to 1/65536
_LEVELS = 1 << 16
ATTENTION = "nlpkit_sdpa"


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> torch.Tensor:
    """A bool tensor, True where an element is kept (probability 1 - p to 1/65536)."""
    seed = int(torch.empty((), dtype=torch.int64).random_())  # one draw from torch's generator
    bits = np.random.Generator(np.random.SFC64(seed)).integers(0, _LEVELS, size=int(np.prod(shape)), dtype=np.uint16)
    mask = torch.empty(shape, dtype=torch.bool)  # torch owns the mask autograd keeps; numpy's bits are freed now
    np.greater_equal(bits, _threshold(p), out=mask.numpy().reshape(-1))
    return mask


def _threshold(p: float) -> int:
    return min(_LEVELS - 1, round(p * _LEVELS))


def keep_scale(p: float) -> float:
    """1 / the exact keep rate of :func:`keep_mask`."""
    return _LEVELS / (_LEVELS - _threshold(p))


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:
        mask = keep_mask(x.shape, p)
        ctx.save_for_backward(mask)
        ctx.scale = keep_scale(p)
        return x.mul(mask).mul_(ctx.scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (mask,) = ctx.saved_tensors
        return grad.mul(mask).mul_(ctx.scale), None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with this module's mask on CPU."""
    if not training or p <= 0:
        return x
    if p >= 1 or x.device.type != "cpu":
        return nn.functional.dropout(x, p, training)
    return _Dropout.apply(x, p)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU masks come from :func:`keep_mask` (no state: checkpoints are unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)


def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """A transformers attention function: SDPA, except when it would draw a dropout mask on CPU."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    special = (kwargs.get("position_bias") is not None or getattr(module, "num_key_value_groups", 1) > 1
               or (causal and attention_mask is None and query.shape[2] > 1))
    if dropout <= 0 or not module.training or query.device.type != "cpu" or special:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    # in the inputs' dtype: CPU softmax accumulates in fp32 for bf16 too, and autograd then keeps bf16
    # probabilities (half the memory of an fp32 copy)
    scores = torch.matmul(query, key.transpose(-1, -2)).mul_(scale)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # True = attend (transformers' sdpa masks)
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask.to(scores.dtype)
    probs = _Dropout.apply(scores.softmax(-1).to(value.dtype), dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the same masks SDPA gets


def install(model: nn.Module) -> int:
    """Swap every plain ``nn.Dropout`` of ``model`` for :class:`FastDropout` and SDPA attention for
    ``nlpkit_sdpa``; returns the number of dropout layers swapped."""
    swapped = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p, child.inplace))
                swapped += 1
    for sub in model.modules():
        config = getattr(sub, "config", None)
        if getattr(config, "_attn_implementation", None) == "sdpa" and hasattr(sub, "set_attn_implementation"):
            _register()
            sub.set_attn_implementation(ATTENTION)
    return swapped


def uninstall(model: nn.Module) -> None:
    """Back to torch's dropout and SDPA (before saving a model others load, or for evaluation elsewhere)."""
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is FastDropout:
                setattr(parent, name, nn.Dropout(child.p, child.inplace))
    for sub in model.modules():
        config = getattr(sub, "config", None)
        if getattr(config, "_attn_implementation", None) == ATTENTION and hasattr(sub, "set_attn_implementation"):
            sub.set_attn_implementation("sdpa")
