"""Precision, in one place: what "auto" picks for training and for inference, and the inference helpers.

One rule decides whether a device multiplies bf16 natively (``native_bf16``); both "auto"s read it:

| device                                  | native bf16 | training "auto"           | inference "auto" |
|-----------------------------------------|-------------|---------------------------|------------------|
| CUDA GPU, compute capability 8.0+; ROCm | yes         | bf16 autocast             | bf16 autocast    |
| CUDA GPU below 8.0 (V100, T4)           | no          | fp16 with loss scaling    | fp32             |
| CPU with AMX-BF16 or AVX512-BF16        | yes         | bf16 autocast             | bf16 autocast    |
| any other CPU                           | no          | fp32                      | fp32             |

``torch.cuda.is_bf16_supported()`` alone is not the rule: by default it also answers True on capability 7.x,
where bf16 is emulated and far slower than fp16. On a CPU without native instructions bf16 autocast is emulated
too, slower than fp32. ``NLPKIT_CPU_BF16=0|1`` overrides the CPU detection (the test suite sets 0, so that its
numbers do not depend on the machine). A precision given to ``accelerate launch`` is honoured in training.

Training names precisions as Accelerate does ("no" for fp32; the trainer prints fp32). Inference keeps fp32 the
default of ``nlpkit.load`` and ``nlpkit predict``, so that predictions equal what ``nlpkit evaluate`` scored;
``precision="bf16"``/``"auto"`` and ``quantize="int8"`` trade a little agreement for speed
(benchmarks/predict_throughput.py measures both against fp32).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Callable, ContextManager

import torch

from ..sdk.errors import ConfigError

#: /proc/cpuinfo flags of x86 CPUs that multiply bf16 natively (AMX tiles; AVX-512 BF16 dot products)
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
#: what nlpkit.load / nlpkit predict accept
PRECISIONS = ("fp32", "bf16", "auto")
QUANTIZE = ("int8",)


# ---- the rule ----------------------------------------------------------------------------------------
def cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags, or None where the system does not list them (macOS, Windows)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.partition(":")[2].split())
    except OSError:
        return None
    return None


def cpu_bf16(flags: set[str] | None = None) -> tuple[bool, str]:
    """(the CPU multiplies bf16 natively, why)."""
    forced = os.environ.get("NLPKIT_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1", f"NLPKIT_CPU_BF16={forced}"
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return False, "this system does not list CPU flags"
    found = [f for f in CPU_BF16_FLAGS if f in flags]
    if found:
        return True, f"the CPU has native bf16 ({', '.join(found)})"
    return False, "the CPU has no native bf16 (neither amx_bf16 nor avx512_bf16)"


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(``device`` multiplies bf16 natively, why): the one rule both "auto"s read."""
    if device.type != "cuda":
        return cpu_bf16()
    if getattr(torch.version, "hip", None):
        return True, "ROCm GPU"
    major, minor = torch.cuda.get_device_capability(device.index if device.index is not None
                                                    else torch.cuda.current_device())
    if major >= 8:
        return True, f"GPU compute capability {major}.{minor} has bf16 units"
    return False, f"GPU compute capability {major}.{minor} has no bf16 units"


# ---- training --------------------------------------------------------------------------------------
def choose_precision(cpu: bool = False) -> tuple[str, str]:
    """(Accelerate's ``mixed_precision``, why) for the training precision "auto"."""
    on_gpu = not cpu and torch.cuda.is_available()
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launcher == "bf16" or launcher == "fp16" and on_gpu:
        return launcher, "accelerate launch asked for it"
    if launcher == "fp16":
        raise ConfigError("accelerate launch asked for fp16, which needs a GPU; on CPU use bf16 or no mixed precision")
    native, why = native_bf16(torch.device("cuda" if on_gpu else "cpu"))
    if native:
        return "bf16", why
    return ("fp16", f"{why} (fp16 with loss scaling)") if on_gpu else ("no", why)


def auto_precision(cpu: bool = False) -> str:
    """Accelerate's ``mixed_precision`` for the training precision "auto" (see choose_precision)."""
    return choose_precision(cpu)[0]


def training_precision(asked: str, cpu: bool = False) -> tuple[str, str, str | None]:
    """(Accelerate's ``mixed_precision``, why, a warning for the run log or None) for ``precision.compute``.

    "auto" follows the rule; an explicit choice is kept unless the device cannot honour it: fp16 autocast does
    nothing on a CPU (Accelerate accepts it and trains in fp32 anyway: say so instead of pretending), and a GPU
    without bf16 gets fp16."""
    if asked == "auto":
        precision, why = choose_precision(cpu)
        return precision, f"auto: {why}; --precision fp32 or bf16 to choose", None
    cuda = torch.cuda.is_available() and not cpu
    if asked == "fp16" and not cuda:
        return "no", "asked for", "precision.compute fp16 needs a CUDA GPU; training in fp32 (bf16 works on CPU)"
    if asked == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        return "fp16", "asked for", "precision.compute bf16 is not supported by this GPU; using fp16"
    return ("no" if asked == "fp32" else asked), "asked for", None


def display_name(mixed_precision: str) -> str:
    """Accelerate calls full precision "no"; logs and metrics say fp32, the name users pass."""
    return "fp32" if mixed_precision == "no" else str(mixed_precision)


# ---- inference -------------------------------------------------------------------------------------
def resolve(precision: str, device: torch.device) -> tuple[str, str]:
    """("fp32" or "bf16", why) for predictions on ``device``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision, "asked for"
    native, why = native_bf16(device)
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
