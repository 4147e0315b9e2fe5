"""``nlpkit export RUN --format transformers|onnx OUT`` (``export(...)`` in Python): hand a trained model to another
stack.

transformers
    Where a task's head computes the same function as a standard ``AutoModelFor*`` head, OUT is a plain
    Hugging Face folder (``from_pretrained`` and ``pipeline()`` load it): the backbone weights are
    copied as they are and each head puts its weights onto the standard head (``head.to_transformers``,
    nlpkit.sdk.heads). The mapping is checked numerically on sample inputs (outputs within 1e-4) before
    anything is written, so an export never silently changes predictions. A plugin whose own head is a standard head in disguise hands over the
    standard model itself (``Task.export_model``), checked the same way against the plugin's own logits
    (``Task.export_logits``) at every real position. Where no standard class computes the same function
    (relation extraction's entity-pair head, the tied decoder built on an encoder, mean pooling, several
    tasks at once), OUT holds the backbone as a Hugging Face folder plus the heads in safetensors, and the
    model card says why.

onnx
    ``torch.onnx.export`` (the torch.export-based exporter) of backbone + head for each encoder task,
    with dynamic batch and sequence axes; every graph is run with onnxruntime on sample inputs and must
    match torch within 1e-4, or the export fails.

Every export carries a model card (README.md): tasks, labels, training data, dev metrics, config,
nlpkit version and the base model's license where it is known.

The modules: card (model card), transformers (standard classes and their checks), raw (backbone + heads, the
fallback), onnx (graphs, also used by the onnxruntime runtime), merge (--merge of peft adapters), samples (the inputs
every check runs on), result (ExportResult, nlpkit_export.json).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...sdk.errors import ConfigError
from .card import base_model_license, card_markdown, model_card
from .merge import MERGE_TOLERANCE
from .onnx import export_onnx, require_onnx_extra
from .result import TOLERANCE, ExportResult
from .transformers import PIPELINES, export_transformers, standard_model

if TYPE_CHECKING:  # annotations only: importing the Pipeline would load torch for `nlpkit tasks`
    from ..predict import Pipeline

__all__ = ["FORMATS", "MERGE_TOLERANCE", "PIPELINES", "TOLERANCE", "ExportResult", "base_model_license",
           "card_markdown", "export", "model_card", "require_onnx_extra", "standard_model"]

FORMATS = ("transformers", "onnx")


def export(source: str | Path | Pipeline, fmt: str, out: str | Path, task: str | None = None,
           merge: bool = False) -> ExportResult:
    """Write ``out`` (which must not exist, or be an empty folder) in ``fmt`` for the checkpoint.

    ``source``: a run or checkpoint folder, loaded here on the CPU in fp32; or a ``Pipeline`` already loaded that
    way (``nlpkit.load(DIR, device="cpu")``), exported as it is without reading the weights again.
    ``merge``: a peft checkpoint's adapters are folded into the base weights first, so OUT is a plain model
    that transformers loads without peft (checked: every task predicts what the adapter model predicts). A
    loaded Pipeline is merged in place: afterwards it predicts from the merged weights."""
    from .merge import merge_adapters

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not empty; give a new folder")
    pipe, where = _pipeline(source)
    tasks = [pipe.task(task)] if task else list(pipe.tasks)
    merged = merge_adapters(pipe, tasks) if merge else None
    if getattr(pipe.model.backbone, "peft", None) is not None:
        raise ConfigError(f"{where}: this checkpoint holds {pipe.model.backbone.peft.method} adapters over its "
                          "base model; add --merge to fold them into the weights (a plain transformers model)")
    tmp = out.with_name(f".{out.name}.export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        result = (export_transformers if fmt == "transformers" else export_onnx)(pipe, tasks, tmp)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.out = out
    if merged is not None:
        result.max_diff.update({f"{name} (merge)": diff for name, diff in merged.items()})
    return result


def _pipeline(source: Any) -> tuple[Any, Any]:
    """(the loaded checkpoint, how error messages name it). Every check compares the export with fp32 torch
    outputs on CPU tensors, so a Pipeline loaded for another device, precision or runtime is refused rather than
    quietly exported from weights that are not the checkpoint's."""
    from ..predict import Pipeline, load

    if not isinstance(source, Pipeline):
        return load(source, device="cpu"), source
    settings = {"device": str(source.device), "precision": source.precision,
                "quantize": "int8" if source.quantized else None, "runtime": source.runtime}
    wanted = {"device": "cpu", "precision": "fp32", "quantize": None, "runtime": "torch"}
    other = {k: v for k, v in settings.items() if v != wanted[k]}
    if other:
        raise ConfigError(f"export reads the fp32 torch model on the CPU; this pipeline was loaded with "
                          f"{', '.join(f'{k}={v!r}' for k, v in other.items())}: load it with "
                          f"nlpkit.load(DIR, device='cpu') or pass its folder {str(source.path)!r}")
    return source, source.path
