"""``nlpkit.load(DIR, runtime="onnxruntime")``: a checkpoint's predictions computed by onnxruntime.

The task plugin still parses, encodes, batches (sorted by length) and decodes; only the backbone + head
forward pass runs as the graph ``nlpkit export --format onnx`` writes. That graph is checked against torch
when it is exported (largest difference under 1e-4, nlpkit.apps.export.onnx.TOLERANCE), so predictions agree with
the torch runtime's, and onnxruntime's fused CPU kernels (attention, LayerNorm, GELU) make it faster in
fp32 (benchmarks/predict_throughput.py measures both side by side).

Exporting takes seconds, so each checkpoint's graphs are kept in ``$NLPKIT_CACHE/onnx`` (else
``~/.cache/nlpkit/onnx``) under a fingerprint of the checkpoint's files and the library versions: a
changed checkpoint or a new torch gets a new export, never a stale graph.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .._version import __version__
from ..sdk.cache import cache_root
from ..sdk.errors import ConfigError, NotStandard
from .export import onnx as onnx_export
from .export.onnx import OnnxRuntimeHead, require_onnx_extra

RUNTIMES = ("torch", "onnxruntime")
#: bump when the exported graph's contract changes, so old cache entries are not reused
CACHE_FORMAT = 1


def check(runtime: str, precision: str, quantize: str | None, device: torch.device) -> None:
    """A ConfigError for a combination that cannot run, before any weights are read."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "torch":
        return
    require_onnx_extra()
    if device.type != "cpu":
        raise ConfigError(f"runtime onnxruntime runs nlpkit's exported graph on CPU (onnxruntime's CPU provider); "
                          f"device is {device}: use runtime torch there")
    if precision != "fp32" or quantize:
        raise ConfigError("runtime onnxruntime runs the exported fp32 graph: use it with precision fp32 and no "
                          f"quantize (got precision {precision!r}, quantize {quantize!r})")


def cache_dir() -> Path:
    return cache_root("onnx")


def fingerprint(folder: Path) -> str:
    """Every file of the checkpoint (names and bytes) and the versions that shape the exported graph."""
    import onnxruntime


    digest = hashlib.sha256(f"{CACHE_FORMAT} {__version__} {torch.__version__} {onnxruntime.__version__}".encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:24]


class OnnxModel:
    """Stands where the torch model stands in ``predict_features``: ``heads[name](backbone, batch)`` runs
    the task's graph (nlpkit.apps.export.onnx.OnnxRuntimeHead); there is no backbone module to hand over."""

    training = False
    backbone = None

    def __init__(self, heads: dict[str, Any], not_exported: dict[str, str], folders: dict[str, Path]):
        self.heads, self.not_exported, self.folders = heads, not_exported, folders

    def parameters(self) -> Iterator[torch.Tensor]:
        yield torch.empty(0)  # predict_features reads the device from here: the CPU

    def eval(self) -> "OnnxModel":
        return self

    def train(self, mode: bool = True) -> "OnnxModel":
        return self

    def require(self, task: str) -> None:
        if task in self.not_exported:
            raise ConfigError(f"task {task!r} cannot run under runtime onnxruntime: {self.not_exported[task]}; "
                              "load the checkpoint with runtime torch for it")


def build(pipe: Any, folder: Path, tasks: Sequence[Any]) -> OnnxModel:
    """Export (or find in the cache) one graph per task and open an onnxruntime session on each."""
    root = cache_dir() / fingerprint(folder)
    heads: dict[str, Any] = {}
    missing: dict[str, str] = {}
    folders: dict[str, Path] = {}
    for task in tasks:
        if task.generative:
            missing[task.name] = "a generation task's decoding loop is not one graph"
            continue
        target = root / task.name
        if not (target / "model.onnx").is_file():
            print(f"onnxruntime: exporting task {task.name} to {target} (once: later loads of this checkpoint "
                  "reuse it)", file=sys.stderr, flush=True)
            try:
                _export_into(pipe, task, target, onnx_export.export_task_onnx)
            except NotStandard as exc:
                missing[task.name] = str(exc)
                continue
        heads[task.name] = OnnxRuntimeHead(target, threads=torch.get_num_threads())
        folders[task.name] = target
    return OnnxModel(heads, missing, folders)


def _export_into(pipe: Any, task: Any, target: Path, export_task_onnx: Any) -> None:
    """Export into a scratch folder beside the target and rename it into place, so a crash or a second
    process never leaves a half-written graph where the cache is read."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{task.name}-", dir=target.parent))
    try:
        export_task_onnx(pipe, task, scratch / "graph")
        try:
            os.replace(scratch / "graph", target)
        except OSError:  # another process put its (identical) export there first
            if not (target / "model.onnx").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
