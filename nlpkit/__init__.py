"""nlpkit: fine-tune one shared transformer backbone on many NLP tasks through a task registry.

Heavy libraries (torch, transformers) are imported only when a function that needs them is called,
so ``nlpkit --help`` and ``nlpkit tasks`` start fast.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _moved
from ._version import __version__
from .engine import \
    phases  # noqa: F401  before anything heavy: its clock marks the process start (metrics.json "phases")
from .sdk.errors import ConfigError, DataError, NlpkitError, NotStandard, UnknownTaskError
from .sdk.registry import get_task_class, list_tasks, register_task
from .sdk.task import Task, TaskOptions

_moved.install()  # nlpkit.data, nlpkit.trainer, ...: the paths before nlpkit.sdk / engine / apps

if TYPE_CHECKING:
    from .apps.predict import Pipeline
    from .engine.trainer import TrainResult


def train(config: Any, tasks: Any = None) -> "TrainResult":
    """Train from a RunConfig or a plain dict with the same keys as a recipe file; the result holds the run folder,
    the final metrics, and the model and tasks in memory (``result.model``, ``result.tasks``)."""
    from .engine.trainer import train as _train

    return _train(config, tasks)


def load(path: Any, device: str | None = None, tasks: Any = None, precision: str = "fp32",
         quantize: str | None = None, runtime: str = "torch") -> "Pipeline":
    """A trained checkpoint, ready to predict; precision "bf16"/"auto" and quantize "int8" trade a little agreement
    with fp32 for speed, runtime "onnxruntime" keeps fp32 predictions and runs faster on CPU (see
    nlpkit.apps.predict.load)."""
    from .apps.predict import load as _load

    return _load(path, device=device, tasks=tasks, precision=precision, quantize=quantize, runtime=runtime)


__all__ = [
    "Task",
    "TaskOptions",
    "register_task",
    "get_task_class",
    "list_tasks",
    "train",
    "load",
    "NlpkitError",
    "DataError",
    "ConfigError",
    "UnknownTaskError",
    "NotStandard",
    "__version__",
]
