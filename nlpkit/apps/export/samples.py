"""The inputs an export is checked on: a task's ``sample_inputs``, else the first examples of its default dev data.
Every check (the standard model's logits, its generated texts, the ONNX graph, a merge of adapters) runs nlpkit and
the exported model on these, so an export that would change a prediction fails before anything is written."""
from __future__ import annotations

from typing import Any, Sequence

from ...sdk.errors import NotStandard

#: what a collated batch carries for the loss only: an exported model is called without them
_LABEL_KEYS = ("labels", "start_positions", "end_positions")


def sample_inputs(task: Any) -> list[Any]:
    if task.sample_inputs:
        return list(task.sample_inputs)
    dev = (task.default_data() or {}).get("dev")
    if dev:
        return [{k: v for k, v in ex.items() if k not in ("line", "path")} for ex in task.read(dev)[:2]]
    raise NotStandard(f"task type {task.type_name!r} has no sample inputs to check an export with "
                      "(Task.sample_inputs, or default dev data)")


def sample_batch(task: Any, items: Sequence[Any] | None = None) -> dict[str, Any]:
    """A collated batch (tensors, no labels) of the task's sample inputs."""
    items = list(items) if items is not None else sample_inputs(task)
    batch = task.collate(task.encode([task.parse_input(item) for item in items]))
    return {k: v for k, v in batch.items() if k not in _LABEL_KEYS}
