"""How much each task's loss counts in a multi-task run.

Every batch holds one task, so a task's weight scales its updates relative to the other tasks' (through
AdamW's shared moments and the gradient clipping, which both see every task's gradients).

- ``fixed``: the task entry's ``weight`` (default 1).
- ``uncertainty`` (Kendall, Gal & Cipolla 2018): the loss is L_t / σ_t² + log σ_t² per task with a
  learned σ_t. For a fixed L_t that objective is smallest at σ_t² = L_t, so the weight of task t is
  1 / (its typical loss). We use that optimum directly, with σ_t² the running mean of the task's recent
  losses, instead of learning σ_t by gradient descent: no extra parameters in the model or the
  checkpoint, and no lag while σ_t catches up. The weights are then scaled to average 1 over the tasks
  (times the entries' ``weight``), so the gradient clipping threshold keeps its meaning.
"""
from __future__ import annotations

from typing import Mapping

#: the running mean's decay per batch of that task (about the last 50 batches count)
DECAY = 0.98


class TaskWeighting:
    def __init__(self, kind: str, weights: Mapping[str, float], loss_means: dict[str, float]):
        """``loss_means`` is the LoopState's dict (saved in step checkpoints, so a resumed run continues
        with the same weights)."""
        self.kind, self.weights, self.means = kind, dict(weights), loss_means

    def observe(self, task: str, loss: float) -> None:
        """A batch's (finite) loss, before its backward."""
        if self.kind != "uncertainty":
            return
        old = self.means.get(task)
        self.means[task] = loss if old is None else DECAY * old + (1 - DECAY) * loss

    def __call__(self, task: str) -> float:
        if self.kind != "uncertainty" or not self.means.get(task):
            return self.weights[task]
        inverse = {t: 1.0 / max(m, 1e-8) for t, m in self.means.items()}
        mean_inverse = sum(inverse.values()) / len(inverse)
        return self.weights[task] * inverse[task] / mean_inverse
