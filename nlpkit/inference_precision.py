"""Cheaper inference for a loaded checkpoint: bf16 autocast, or int8 weights for its Linear layers.

fp32 stays the default of ``nlpkit.load`` and ``nlpkit predict``, so that predictions equal what
``nlpkit evaluate`` scored. ``precision="bf16"`` (or ``"auto"``: bf16 where the hardware multiplies it
natively) and ``quantize="int8"`` trade a little agreement for speed;
benchmarks/predict_throughput.py measures both against fp32, speed and agreement side by side.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, ContextManager

import torch

from .errors import ConfigError

PRECISIONS = ("fp32", "bf16", "auto")
QUANTIZE = ("int8",)


def resolve(precision: str, device: torch.device) -> tuple[str, str]:
    """("fp32" or "bf16", why)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision, "asked for"
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported() and torch.cuda.get_device_capability(device)[0] >= 8
        return ("bf16" if ok else "fp32"), "auto: GPU " + ("with" if ok else "without") + " bf16 units"
    from .distributed import cpu_bf16

    native, why = cpu_bf16()
    return ("bf16" if native else "fp32"), f"auto: {why}"


def autocast(precision: str, device: torch.device) -> Callable[[], ContextManager]:
    """A factory of the context that predictions run in."""
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def quantize_int8(model: torch.nn.Module, device: torch.device) -> int:
    """Dynamic int8 quantization of every nn.Linear in place (weights int8, activations quantized per batch);
    returns how many layers were converted. CPU only: PyTorch's quantized kernels (fbgemm/oneDNN) are CPU
    kernels. Embeddings and LayerNorm stay fp32, so the model shrinks by its Linear weights only."""
    if device.type != "cpu":
        raise ConfigError(f"quantize int8 runs on CPU only (PyTorch's dynamic quantization); this model is on {device}")
    from torch.ao.quantization import quantize_dynamic

    before = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    with warnings.catch_warnings():  # torch.ao's deprecation notices; the kernels are what we measure
        warnings.simplefilter("ignore")
        quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return before


def describe(precision: str, quantized: Any) -> str:
    return precision + (", int8 Linear weights" if quantized else "")
