"""Run a task's head over examples and score the predictions; shared by training, `evaluate` and `predict`.

In a distributed run each process takes every N-th batch and the raw outputs are gathered and put
back in feature order before decoding, so every example is scored exactly once.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..sdk.data import sorted_batches
from ..sdk.errors import PluginError
from .config import DataSettings
from .tables import encode_split, rows_at


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def predict_features(task: Any, model: Any, features: Sequence[dict], batch_size: int, accelerator: Any = None,
                     progress: bool = False, desc: str = "", autocast: Callable[[], Any] | None = None) -> list[Any]:
    """One raw output per feature, in feature order. ``autocast``: the context of a loaded model's predictions
    (nlpkit.engine.precision); during training the accelerator's."""
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    batches = sorted_batches(task.feature_lengths(features), batch_size)
    mine = batches[rank::world]
    head, backbone = model.heads[task.name], model.backbone
    results: list[tuple[int, Any]] = []
    was_training = model.training
    model.eval()
    iterator = mine
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(mine, desc=desc or f"predict {task.name}", leave=False, unit="batch")
    if accelerator is not None:
        context = accelerator.autocast()
    else:
        context = autocast() if autocast is not None else _null()
    with torch.inference_mode(), context:
        for idx in iterator:
            batch = to_device(task.collate(rows_at(features, idx)), device)
            outputs = task.predict_batch(head, backbone, batch)
            if len(outputs) != len(idx):
                raise RuntimeError(f"task {task.name!r}: predict_batch returned {len(outputs)} outputs for {len(idx)} features")
            results.extend(zip(idx, outputs))
    if was_training:
        model.train()
    if world > 1:
        from accelerate.utils import gather_object

        results = gather_object(results)
    results.sort(key=lambda pair: pair[0])
    if [i for i, _ in results] != list(range(len(features))):
        raise RuntimeError(f"task {task.name!r}: evaluation lost or duplicated features")
    return [out for _, out in results]


def evaluate(task: Any, model: Any, examples: Sequence[dict], batch_size: int, accelerator: Any = None,
             features: Sequence[dict] | None = None, progress: bool = False,
             autocast: Callable[[], Any] | None = None, data: DataSettings | None = None
             ) -> tuple[list[Any], dict[str, Any]]:
    """(predictions, metrics) for one task on labelled examples (a table's features come from the data cache)."""
    if features is None:
        features, _ = encode_split(task, examples, "eval", data or DataSettings())
    outputs = predict_features(task, model, features, batch_size, accelerator, progress, f"eval {task.name}", autocast)
    predictions = task.decode(examples, features, outputs)
    return predictions, checked_scores(task, task.score(predictions, examples))


def checked_scores(task: Any, scores: Any) -> dict[str, Any]:
    """A plugin's score() must hold its main_score as a number: model selection and early stopping read it.
    Said here, naming the plugin, instead of as a KeyError deep in the trainer."""
    import numbers

    main = getattr(task, "main_score", None)
    if not isinstance(scores, dict):
        raise PluginError(f"task {task.name!r} ({type(task).__name__}): score() returned {type(scores).__name__}, "
                          "not a dict of metric -> value")
    if main not in scores:
        raise PluginError(f"task {task.name!r} ({type(task).__name__}): score() returned {sorted(map(str, scores))}, "
                          f"without its main_score {main!r}")
    value = scores[main]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PluginError(f"task {task.name!r} ({type(task).__name__}): score()[{main!r}] is {value!r}, not a number")
    return scores


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
