"""Learning curves from a run's log.jsonl: training loss and the dev main score against the step.

Kept apart from the trainer so ``nlpkit evaluate`` reports (or a notebook) can draw the same picture
from any run folder. matplotlib is imported only here, and only its object API with the Agg canvas is
used, so plotting never opens a window or changes the caller's pyplot backend.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping


@dataclass
class Curve:
    """One task's series, ready to plot or to print."""

    task: str
    metric: str
    loss_steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    #: the main score, when the plotted metric is another one (perplexity): the best step is the selected one
    select_metric: str | None = None
    selected: list[float] = field(default_factory=list)

    @property
    def best_step(self) -> int | None:
        series = self.selected if self.select_metric else self.score
        finite = [(s, st) for s, st in zip(series, self.eval_steps) if not math.isnan(s)]
        return max(finite, key=lambda p: p[0])[1] if finite else None


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a log.jsonl; a truncated last line (a killed writer) is ignored."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def curves_from_log(records: Iterable[Mapping[str, Any]], main_scores: Mapping[str, str],
                    plot_metrics: Mapping[str, str] | None = None) -> dict[str, Curve]:
    """``main_scores``: task name -> its ``main_score`` (selection, the best step); ``plot_metrics``: task name ->
    the dev metric drawn when it is another one (a task's ``curve_metric``, such as perplexity)."""
    plot_metrics = plot_metrics or {}
    curves = {}
    for name, metric in main_scores.items():
        shown = plot_metrics.get(name) or metric
        curves[name] = Curve(name, shown, select_metric=metric if shown != metric else None)
    for rec in records:
        step = rec.get("step")
        if not isinstance(step, int):
            continue
        for name, curve in curves.items():
            loss = rec.get(f"loss/{name}")
            if isinstance(loss, (int, float)):
                curve.loss_steps.append(step)
                curve.loss.append(float(loss))
            scores = (rec.get("eval") or {}).get(name, {})
            value = scores.get(curve.metric)
            if isinstance(value, (int, float)):
                curve.eval_steps.append(step)
                curve.score.append(float(value))
                if curve.select_metric:
                    chosen = scores.get(curve.select_metric)
                    curve.selected.append(float(chosen) if isinstance(chosen, (int, float)) else math.nan)
    return curves


def plot_curve(curve: Curve, path: str | Path, title: str | None = None) -> Path:
    """One PNG: loss on the left axis, the dev score on the right, the best step marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    handles = []
    if curve.loss:
        handles += ax.plot(curve.loss_steps, curve.loss, color="tab:blue", label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss", color="tab:blue")
    ax.grid(alpha=0.3)
    if curve.score:
        ax2 = ax.twinx()
        handles += ax2.plot(curve.eval_steps, curve.score, "o-", color="tab:orange", label=f"dev {curve.metric}")
        ax2.set_ylabel(f"dev {curve.metric}", color="tab:orange")
        best = curve.best_step
        if best is not None:
            ax.axvline(best, color="gray", linestyle="--", linewidth=1)
            handles.append(ax.plot([], [], color="gray", linestyle="--", label=f"best (step {best})")[0])
    if handles:
        ax.legend(handles=handles, loc="best", fontsize="small")
    ax.set_title(title or f"{curve.task}: learning curve")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_tasks(curves: Mapping[str, Curve], path: str | Path, selected: int | None = None) -> Path:
    """A multi-task run's dev curves in one PNG, one panel per task (their scores have different scales),
    sharing the step axis: each task's own best step is a dot, the step the selection picked a dashed
    line. A task whose curve peaks long before the selected step is the one the others crowd out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [c for c in curves.values() if c.score]
    fig = Figure(figsize=(7, 2.2 + 1.8 * len(shown)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(shown), 1, sharex=True, squeeze=False)[:, 0]
    for ax, curve in zip(axes, shown):
        ax.plot(curve.eval_steps, curve.score, "o-", markersize=3, color="tab:orange")
        best = curve.best_step
        if best is not None:
            at = curve.eval_steps.index(best)
            ax.plot([best], [curve.score[at]], "o", color="tab:green", markersize=8,
                    label=f"own best: step {best}, {curve.score[at]:.4g}")
        if selected is not None:
            ax.axvline(selected, color="gray", linestyle="--", linewidth=1, label=f"selected: step {selected}")
        ax.set_ylabel(f"{curve.task}\ndev {curve.metric}")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("optimizer step (of the run)")
    fig.suptitle("dev curves per task")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


#: the one-PNG view of a multi-task run's dev curves, beside the per-task PNGs
ALL_TASKS_PNG = "all-tasks.png"


def plot_run(log_path: str | Path, out_dir: str | Path, main_scores: Mapping[str, str],
             plot_metrics: Mapping[str, str] | None = None) -> dict[str, Path]:
    """A ``<task>.png`` per task in ``out_dir`` from a run's log.jsonl, and for several tasks with dev scores
    ``all-tasks.png`` as well; returns task (or "all tasks") -> file."""
    records = read_log(log_path)
    curves = curves_from_log(records, main_scores, plot_metrics)
    written = {name: plot_curve(c, Path(out_dir) / f"{_safe(name)}.png") for name, c in curves.items()
               if c.loss or c.score}
    if sum(1 for c in curves.values() if c.score) > 1:
        selected = [r["step"] for r in records if isinstance(r.get("step"), int) and "selection_score" in r]
        scores = [r["selection_score"] for r in records if isinstance(r.get("step"), int) and "selection_score" in r]
        best = max(zip(scores, selected), key=lambda p: p[0])[1] if selected else None
        written["all tasks"] = plot_tasks(curves, Path(out_dir) / ALL_TASKS_PNG, best)
    return written


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name) or "task"
