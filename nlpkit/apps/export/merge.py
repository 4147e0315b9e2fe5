"""``--merge``: a peft checkpoint's adapters folded into the base weights, so that the export is a plain model that
transformers loads without peft. The merge is checked like every export: each task predicts on its sample inputs
what it predicted with the adapters (numbers within MERGE_TOLERANCE, tokens and labels equal), else nothing is
written."""
from __future__ import annotations

from typing import Any, Sequence

from ...sdk.errors import ConfigError, NlpkitError
from .samples import sample_batch

#: a merged model must predict what the adapter model predicted, this closely (probabilities, scores)
MERGE_TOLERANCE = 1e-4


def merge_adapters(pipe: Any, tasks: Sequence[Any]) -> dict[str, float]:
    """Fold the adapters into the weights and check each task's predictions on its sample inputs before and
    after (generated token ids must be equal). Returns the largest difference per task."""
    import torch

    from ...engine import adapters

    if getattr(pipe.model.backbone, "peft", None) is None:
        raise ConfigError("--merge: this checkpoint has no adapters to merge (it was not trained with --peft)")
    backbone = pipe.model.backbone

    def outputs() -> dict[str, Any]:
        with torch.no_grad():
            return {t.name: t.predict_batch(pipe.model.heads[t.name], backbone, sample_batch(t)) for t in tasks}

    before = outputs()
    adapters.merge(backbone)
    after = outputs()
    diffs = {name: difference(before[name], after[name]) for name in before}
    bad = {name: d for name, d in diffs.items() if not d <= MERGE_TOLERANCE}
    if bad:
        raise NlpkitError(f"--merge: the merged model does not predict what the adapters did (largest differences "
                          f"{bad}, tolerance {MERGE_TOLERANCE:g}); nothing was written")
    return diffs


def difference(a: Any, b: Any) -> float:
    """Largest absolute difference of two predict_batch outputs (nested lists, tuples, dicts, tensors);
    anything unequal that is not a number (a token, a label) counts as infinite."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        if a.shape != b.shape:
            return float("inf")
        if not a.is_floating_point():
            return 0.0 if torch.equal(a, b) else float("inf")
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
            return max((difference(a[k], b[k]) for k in a), default=0.0)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
            return max((difference(x, y) for x, y in zip(a, b)), default=0.0)
        return 0.0 if a == b else float("inf")
    if isinstance(a, int) and isinstance(b, int):
        return 0.0 if a == b else float("inf")  # an index, a token id: must be equal
    return abs(float(a) - float(b))
