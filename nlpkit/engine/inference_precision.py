"""Cheaper inference for a loaded checkpoint: bf16 autocast, or int8 weights for its Linear layers.

fp32 stays the default of ``nlpkit.load`` and ``nlpkit predict``, so that predictions equal what
``nlpkit evaluate`` scored. ``precision="bf16"`` (or ``"auto"``: bf16 where the hardware multiplies it
natively) and ``quantize="int8"`` trade a little agreement for speed;
benchmarks/predict_throughput.py measures both against fp32, speed and agreement side by side.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, ContextManager

import torch

from ..sdk.errors import ConfigError
from .distributed import cpu_bf16

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
    native, why = cpu_bf16()
    return ("bf16" if native else "fp32"), f"auto: {why}"


def settle(precision: str, quantize: str | None, device: torch.device) -> str:
    """The precision predictions run in ("fp32" or "bf16"), or a ConfigError for a setting that cannot run;
    checked before any weights are read."""
    if quantize is not None and quantize not in QUANTIZE:
        raise ConfigError(f"quantize must be one of {', '.join(QUANTIZE)} or None, got {quantize!r}")
    chosen, _ = resolve(precision, device)
    if not quantize:
        return chosen
    if device.type != "cpu":
        raise ConfigError(f"quantize int8 runs on CPU only (PyTorch's dynamic quantization); device is {device}")
    if precision == "bf16":
        raise ConfigError("quantize int8 computes in fp32 around its int8 weights (PyTorch's dynamic kernels take "
                          "fp32 inputs): use it with precision fp32 or auto, not bf16")
    return "fp32"  # "auto" with int8


def autocast(precision: str, device: torch.device) -> Callable[[], ContextManager]:
    """A factory of the context that predictions run in."""
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def quantize_int8(model: torch.nn.Module) -> None:
    """Dynamic int8 quantization of every nn.Linear in place (weights int8, activations quantized per batch), on a
    CPU model (see settle): PyTorch's quantized kernels (fbgemm/oneDNN) are CPU kernels. Embeddings and
    LayerNorm stay fp32, so the model shrinks by its Linear weights only."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch.ao's deprecation notices; the kernels are what we measure
        warnings.simplefilter("ignore")
        quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
