"""The ONNX format: one graph of backbone + head per encoder task, exported with ``torch.onnx.export`` (the
torch.export-based exporter, dynamic batch and sequence axes), checked with onnxruntime against torch, and run in
place of the head. Shared by ``nlpkit export --format onnx`` and ``runtime="onnxruntime"`` (nlpkit.apps.onnx_runtime),
which caches the graphs it exports here.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

from ...sdk.errors import ConfigError, NlpkitError, NotStandard
from .card import write_card
from .result import TOLERANCE, ExportResult, write_export_info
from .samples import sample_batch, sample_inputs

__all__ = ["TOLERANCE", "OnnxRuntimeHead", "check_onnx", "export_onnx", "export_task_onnx", "require_onnx_extra",
           "sample_batch", "sample_inputs"]


def require_onnx_extra() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"nlpkit export --format onnx needs onnx, onnxruntime and onnxscript ({exc.name} is "
                          "missing): pip install 'nlpkit[onnx]'") from None


class OnnxHead:
    """``torch.nn.Module`` factory: backbone + one head with positional tensor inputs (ONNX has no dicts)."""

    @staticmethod
    def build(model: Any, task_name: str, names: Sequence[str], outputs: Sequence[str]) -> Any:
        import torch

        class _Graph(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.backbone, self.head = model.backbone, model.heads[task_name]

            def forward(self, *tensors):
                out = self.head(self.backbone, dict(zip(names, tensors)))
                return tuple(out[k] for k in outputs)

        return _Graph().eval()


def export_task_onnx(pipe: Any, task: Any, folder: Path) -> dict[str, Any]:
    """Export one encoder task to ``folder/model.onnx`` and check it with onnxruntime."""
    import torch

    batch = sample_batch(task)
    names = [k for k, v in batch.items() if isinstance(v, torch.Tensor)]
    try:
        with torch.inference_mode():
            reference = pipe.model.heads[task.name](pipe.model.backbone, batch)
    except Exception as exc:  # noqa: BLE001 - a head that needs more than its inputs (a masking pretraining head)
        raise NotStandard(f"its head does not run on a plain batch of sample inputs ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); use --format transformers") from None
    outputs = sorted(k for k in reference if k != "loss")
    graph = OnnxHead.build(pipe.model, task.name, names, outputs)
    args = tuple(batch[k] for k in names)
    auto = torch.export.Dim.AUTO
    dynamic = tuple({d: auto for d in range(batch[k].dim())} for k in names)
    folder.mkdir(parents=True)
    path = folder / "model.onnx"
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed" and similar notes
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(graph, args, str(path), input_names=names, output_names=outputs,
                              dynamic_shapes=(dynamic,), dynamo=True, external_data=False, verbose=False)
        except Exception as exc:  # noqa: BLE001 - the exporter's own error, reported per task
            raise NotStandard(f"torch.onnx.export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") \
                from None
        finally:
            quiet.setLevel(level)
    diff = check_onnx(pipe, task, path, names, outputs)
    info = {"task": task.name, "type": task.type_name, "inputs": names, "outputs": outputs,
            "labels": task.state_dict().get("labels"), "max_diff": diff, "tolerance": TOLERANCE}
    (folder / "onnx.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def check_onnx(pipe: Any, task: Any, path: Path, names: Sequence[str], outputs: Sequence[str]) -> float:
    """onnxruntime against torch on the sample batch, on one input alone and on the batch reversed
    (other batch sizes and lengths than the export saw): the largest difference, or an error over 1e-4."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    items = sample_inputs(task)
    worst = 0.0
    for subset in (items, items[:1], list(reversed(items)) * 2):
        batch = sample_batch(task, subset)
        feed = {k: batch[k].numpy() for k in names}
        got = session.run(list(outputs), feed)
        with torch.inference_mode():
            ref = pipe.model.heads[task.name](pipe.model.backbone, batch)
        for k, value in zip(outputs, got):
            expected = ref[k].float().numpy()
            if value.shape != expected.shape:
                raise NlpkitError(f"{task.name}: ONNX output {k} has shape {value.shape}, torch {expected.shape}")
            worst = max(worst, float(abs(value - expected).max()))
    if worst > TOLERANCE:
        raise NlpkitError(f"{task.name}: onnxruntime differs from torch by {worst:.3g} (> {TOLERANCE:g})")
    return worst


class OnnxRuntimeHead:
    """An exported graph used in place of a task's head: ``head(backbone, batch)`` returns the same dict of
    outputs (as torch tensors), so the task's own ``predict_batch`` / ``decode`` run unchanged on top of
    onnxruntime. ``backbone`` is ignored: the graph holds it."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        require_onnx_extra()
        import onnxruntime as ort

        folder = Path(folder)
        self.meta = json.loads((folder / "onnx.json").read_text())
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])

    def __call__(self, backbone: Any, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        feed = {k: batch[k].cpu().numpy() for k in self.meta["inputs"]}
        values = self.session.run(self.meta["outputs"], feed)
        return {k: torch.from_numpy(v) for k, v in zip(self.meta["outputs"], values)}


def export_onnx(pipe: Any, tasks: Sequence[Any], out: Path) -> ExportResult:
    """A graph per encoder task (``<task>/model.onnx`` + ``onnx.json``), the tokenizer and the card; a task that is
    not one graph is named with the reason, and an export with no graph at all is refused."""
    require_onnx_extra()
    result = ExportResult(out, "onnx")
    pipe.model.backbone.tokenizer.save_pretrained(out / "tokenizer")
    for t in tasks:
        if t.generative:
            result.notes[t.name] = "a generation task: its decoding loop (generate) is not one graph; " \
                                   "use the transformers export"
            continue
        try:
            info = export_task_onnx(pipe, t, out / t.name)
        except NotStandard as exc:
            result.notes[t.name] = str(exc)
            continue
        result.written[t.name] = f"{t.name}/model.onnx"
        result.max_diff[t.name] = info["max_diff"]
    if not result.written:
        raise ConfigError("nothing to export as ONNX: " + "; ".join(f"{k}: {v}" for k, v in result.notes.items()))
    notes = [f"`{name}`: `{path}`, inputs/outputs in `{name}/onnx.json`; onnxruntime vs torch: largest "
             f"difference {result.max_diff[name]:.2e}" for name, path in result.written.items()]
    notes += [f"`{name}`: not exported ({why})" for name, why in result.notes.items()]
    write_card(pipe, tasks, out, notes)
    write_export_info(out, result)
    return result
