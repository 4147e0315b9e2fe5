"""The optimizer and the learning-rate schedule."""
from __future__ import annotations

import math

import torch

from .backbone import PRESETS

#: from-scratch presets whose default learning rate is below the 1e-3 of the small ones. The 6-layer, 512-wide
#: `small` (a post-LayerNorm BERT) does not train at 1e-3 with batch 32: TREC-6 dev accuracy 33.4 after 3 epochs
#: (every prediction one class), against 80.6 at 1e-4 and 83.5 at 3e-4; SST-2 stayed at the majority class.
PRESET_LR = {"small": 3e-4, "small-decoder": 3e-4}


#: LoRA's updates are low-rank and start at zero, so they take a larger step than full fine-tuning: 2e-4 is
#: the rate of the QLoRA paper's small models and of peft's and TRL's examples
PEFT_LR = 2e-4


def default_lr(spec: str, peft: bool = False) -> float:
    if spec in PRESETS:
        return PRESET_LR.get(spec, 1e-3)
    return PEFT_LR if peft else 1e-4


def no_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Biases and normalisation weights (LayerNorm, RMSNorm: 1-D, or named *norm*) are not decayed:
    shrinking them towards 0 changes what the layer computes instead of regularising it."""
    return param.ndim < 2 or "norm" in name.lower()


#: multitask.head_lr_scale's default in a multi-task run. Measured on MiniLM-L6, 5 epochs per task
#: (benchmarks/multitask_quality.py, docs/multitask.md): jointly, heads at 10x moved the smaller task from
#: -3.07 to -1.62 points of its single-task dev score (SemEval beside CoNLL-2003) and from -1.35 to -0.22
#: (WNUT-17 beside CoNLL-2003), while in single-task runs the same 10x changed SemEval by -0.56 and
#: CoNLL by +0.47: it is a multi-task remedy, not a better single-task setting.
MULTITASK_HEAD_LR_SCALE = 10.0


def resolve_head_lr_scale(setting: float | None, n_tasks: int) -> float:
    if setting is not None:
        return setting
    return MULTITASK_HEAD_LR_SCALE if n_tasks > 1 else 1.0


def is_head(name: str) -> bool:
    """A task head's parameter (MultiTaskModel.heads), as opposed to the shared backbone's."""
    return name.startswith("heads.") or ".heads." in name


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, head_lr_scale: float = 1.0,
                   tasks: list[str] | None = None) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and normalisation weights; the heads' learning rate is
    ``head_lr_scale`` times the backbone's (a new head starts from random weights, the backbone does not).
    ``tasks`` (two or more): one AdamW state per task (PerTaskAdamW)."""
    buckets: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        head = head_lr_scale != 1.0 and is_head(name)
        buckets.setdefault((no_decay(name, param), head), []).append(param)
    groups = [{"params": params, "weight_decay": 0.0 if plain else weight_decay,
               "lr": lr * (head_lr_scale if head else 1.0)}
              for (plain, head), params in sorted(buckets.items())]
    if tasks and len(tasks) > 1:
        return PerTaskAdamW(groups, tasks, lr)
    return adamw(groups, lr)


def adamw(groups: list[dict], lr: float) -> torch.optim.AdamW:
    # fused: one kernel over all parameters, on CPU and GPU. MiniLM on 2 CPU cores trained 1.14x faster
    # (median samples/s) than with foreach at the same dev F1: docs/performance.md, measured with
    # benchmarks/train_throughput.py --ab nlpkit_optimizer=foreach
    for kind in ({"fused": True}, {"foreach": True}, {}):
        try:
            return torch.optim.AdamW(groups, lr=lr, **kind)
        except (TypeError, RuntimeError):
            continue
    raise AssertionError("unreachable: plain AdamW always constructs")


class PerTaskAdamW(torch.optim.Optimizer):
    """One AdamW state (moments, step count) per task over the same parameters.

    With one shared state, every task's gradients enter the same moving averages: a task whose
    gradients are larger sets the step size of the others' updates on the shared backbone, and its
    momentum carries into their steps. With a state per task, each task's updates follow the AdamW
    dynamics of its own gradients only, as in its single-task run; the weights stay shared. Costs two
    fp32 tensors per trainable parameter per extra task. ``use(task)`` picks the state of the next step.
    """

    def __init__(self, groups: list[dict], tasks: list[str], lr: float):
        super().__init__(groups, {"lr": lr, "weight_decay": 0.0})
        self.inner = {t: adamw([{**g, "params": list(g["params"])} for g in self.param_groups], lr) for t in tasks}
        self.active = tasks[0]

    def use(self, task: str) -> None:
        self.active = task

    @torch.no_grad()
    def step(self, closure=None):
        inner = self.inner[self.active]
        for mine, theirs in zip(self.param_groups, inner.param_groups):  # the schedule sets the rate on ours
            theirs["lr"] = mine["lr"]
        return inner.step(closure)

    def state_dict(self) -> dict:
        return {"per_task": {t: o.state_dict() for t, o in self.inner.items()},
                "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]}

    def load_state_dict(self, state_dict: dict) -> None:
        if "per_task" not in state_dict:
            raise ValueError("this optimizer state holds one AdamW state, not one per task "
                             "(multitask.optimizer_state was 'shared' when it was saved)")
        for t, o in self.inner.items():
            o.load_state_dict(state_dict["per_task"][t])
        for mine, saved in zip(self.param_groups, state_dict.get("param_groups", [])):
            mine.update({k: v for k, v in saved.items() if k != "params"})


def schedule_factor(kind: str, step: int, warmup: int, total: int) -> float:
    """The learning-rate multiplier of update ``step + 1``: linear warm-up over ``warmup`` steps, then
    linear/cosine decay to 0 at ``total`` (or constant). So the first update already moves (lr/warmup)
    and the last one uses a small positive rate."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup: int, total: int):
    """One schedule counted in the run's optimizer steps, as a torch LambdaLR."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule_factor(kind, step, warmup, total))


RUN = "*"  #: the one clock of a schedule counted in the run's steps


class TaskSchedule:
    """The learning rate of each update, counted in the steps of the task(s) that update trains.

    In a multi-task run a task makes only part of the run's steps. Counted in run steps (one clock for
    all), a task drawn rarely early on would meet its warm-up and decay at other points of its own
    training than it does alone; counted per task, each task's k-th update gets the rate its k-th update
    gets in a single-task run of the same length, whatever the sampler. With one clock (``totals`` =
    {RUN: steps}) this is exactly ``make_scheduler``.

    ``prepare(tasks)`` sets the rate just before ``optimizer.step()`` (the step's tasks are known only
    once its batches are drawn); ``step(tasks)`` counts the update. A step whose micro-batches come from
    several tasks takes the mean of their rates.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, warmups: dict[str, int], totals: dict[str, int]):
        self.optimizer, self.kind = optimizer, kind
        self.warmups, self.totals = dict(warmups), dict(totals)
        self.done = {name: 0 for name in totals}
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.prepare([])

    def _clock(self, task: str) -> str:
        return task if task in self.totals else RUN

    def factor(self, task: str) -> float:
        c = self._clock(task)
        return schedule_factor(self.kind, self.done[c], self.warmups[c], self.totals[c])

    def prepare(self, tasks: list[str]) -> float:
        clocks = sorted({self._clock(t) for t in tasks}) or sorted(self.totals)[:1]
        f = sum(self.factor(c) for c in clocks) / len(clocks)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f
        return f

    def step(self, tasks: list[str]) -> None:
        for c in {self._clock(t) for t in tasks}:
            self.done[c] += 1

    def state_dict(self) -> dict[str, dict[str, int]]:
        return {"done": dict(self.done)}

    def load_state_dict(self, state: dict) -> None:
        if "done" in state:
            self.done.update(state["done"])
        else:  # a LambdaLR's state (checkpoints of nlpkit before per-task schedules): one clock
            for c in self.done:
                self.done[c] = int(state.get("last_epoch", 0))

