"""Use a trained checkpoint from Python: ``nlpkit.load(DIR).predict([...])`` and ``.evaluate(...)``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..engine import build, checkpoint
from ..engine import precision as precisions
from ..engine.config import DataSettings
from ..engine.evaluation import evaluate as _evaluate
from ..engine.evaluation import predict_features
from ..engine.task_data import read_any
from ..sdk.errors import NlpkitError, UnknownTaskError


class Pipeline:
    """A loaded checkpoint: the model, its tasks (with their label maps) and the saved metadata."""

    def __init__(self, model: Any, tasks: Sequence[Any], meta: dict[str, Any], path: Path, device: torch.device,
                 precision: str = "fp32", quantized: bool = False):
        self.model, self.tasks, self.meta, self.path, self.device = model, list(tasks), meta, path, device
        self.precision, self.quantized = precision, quantized  # what predictions run in (nlpkit.engine.precision)
        self._autocast = precisions.autocast(precision, device)
        self.runtime = "torch"
        self._runner: Any = model  # what computes predictions: the torch model, or nlpkit.apps.onnx_runtime.OnnxModel

    def use_onnxruntime(self) -> None:
        """Compute predictions with onnxruntime from now on (nlpkit.apps.onnx_runtime)."""
        from . import onnx_runtime

        self._runner = onnx_runtime.build(self, self.path, self.tasks)
        self.runtime = "onnxruntime"

    def _runner_for(self, task: Any) -> Any:
        if self.runtime == "onnxruntime":
            self._runner.require(task.name)
        return self._runner

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str | None = None) -> Any:
        if name is None:
            if len(self.tasks) == 1:
                return self.tasks[0]
            raise NlpkitError(f"this checkpoint has several tasks ({', '.join(self.task_names)}); choose one with --task NAME (task=... in Python)")
        for t in self.tasks:
            if t.name == name:
                return t
        raise UnknownTaskError(f"this checkpoint has no task {name!r}; it has: {', '.join(self.task_names)}")

    def predict(self, inputs: Sequence[str | dict] | str | dict, task: str | None = None, batch_size: int = 64,
                **options: Any) -> list[Any]:
        """Predictions for raw inputs (texts, or records with the task's fields), one per input.

        Extra keyword options (e.g. ``num_beams``) are set on the task's options for this call.
        """
        _check_batch_size(batch_size)
        single = isinstance(inputs, (str, dict))
        items = [inputs] if single else list(inputs)
        t = self.task(task)
        saved = t.options
        if options:
            from ..sdk import options as _options

            t.options = _options.replace(t.options, options, f"tasks.{t.name}.options")
        try:
            examples = [t.parse_input(item) for item in items]
            if not examples:
                return []
            features = t.encode(examples)
            outputs = predict_features(t, self._runner_for(t), features, batch_size, autocast=self._autocast)
            predictions = t.decode(examples, features, outputs)
        finally:
            t.options = saved
        return predictions[0] if single else predictions

    def evaluate(self, path: str, task: str | None = None, batch_size: int = 64, progress: bool = False,
                 examples: Sequence[dict] | None = None, data: DataSettings | None = None) -> dict[str, Any]:
        """Metrics of one task on a labelled file in any format the task reads (or on ``examples``). The file is
        read into a memory-mapped table and encoded once; ``data`` says where those are cached (nlpkit.engine.tables)."""
        _check_batch_size(batch_size)
        t = self.task(task)
        data = data or DataSettings()
        if examples is None:
            examples = read_any(t, path, data)
        from ..sdk.data import require_examples

        require_examples(examples, path)
        t.check(examples, path)
        _, metrics = _evaluate(t, self._runner_for(t), examples, batch_size, progress=progress, autocast=self._autocast,
                               data=data)
        return metrics

    def format(self, prediction: Any, task: str | None = None) -> str:
        return self.task(task).format_prediction(prediction)


def _check_batch_size(batch_size: Any) -> None:
    """The Python API's twin of the CLI's positive_int: 0 or -1 would fail deep in batching."""
    from ..sdk.errors import ConfigError

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a whole number >= 1, got {batch_size!r}")


def load(path: str | Path, device: str | None = None, tasks: Sequence[str] | None = None, precision: str = "fp32",
         quantize: str | None = None, runtime: str = "torch") -> Pipeline:
    """Load a checkpoint folder (or a run folder, whose best model is used). Never touches the network.

    ``precision``: "fp32" (default: the predictions ``nlpkit evaluate`` scored), "bf16" autocast, or "auto"
    (bf16 where the GPU or CPU multiplies it natively). ``quantize="int8"``: dynamic int8 Linear layers (CPU).
    Both are faster and agree slightly less with fp32; benchmarks/predict_throughput.py measures how much.
    ``runtime="onnxruntime"``: the same fp32 predictions computed by onnxruntime on CPU, from a graph exported
    and checked against torch on first use and cached (nlpkit.apps.onnx_runtime); a task with no single graph
    (generation) is refused with the reason when asked to predict.
    """
    from . import onnx_runtime

    dev = torch.device(device or ("cpu" if runtime == "onnxruntime" else "cuda" if torch.cuda.is_available() else "cpu"))
    chosen = precisions.settle(precision, quantize, dev)  # before the weights are read
    onnx_runtime.check(runtime, precision, quantize, dev)
    folder = checkpoint.resolve(path)
    model, task_objs, meta = build.load(folder, only=tasks)
    model.to(dev)
    if quantize:
        precisions.quantize_int8(model)
    pipe = Pipeline(model, task_objs, meta, folder, dev, chosen, bool(quantize))
    if runtime == "onnxruntime":
        pipe.use_onnxruntime()
    return pipe
