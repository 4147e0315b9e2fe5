"""Where a run reports: log.jsonl and short lines on stdout, learning-curve PNGs (trackers: nlpkit.engine.tracking)."""
from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import torch

from .curves import plot_run


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _mean_all(running: dict[str, list[float]]) -> float:
    values = [v for vs in running.values() for v in vs]
    return sum(values) / len(values) if values else float("nan")


class RunLog:
    """log.jsonl in the run folder (machine-readable) and short lines on stdout (main process only).

    A fresh run starts the file over; a resumed run keeps the records up to its checkpoint's step
    (later ones are replayed) so the log reads like one uninterrupted run.
    """

    def __init__(self, out: Path, main: bool, resume_step: int | None = None, start: bool = True):
        self.out, self.main = out, main
        self.bar: Any = None
        self.file = None
        if start:
            self.start(resume_step)

    def start(self, resume_step: int | None = None) -> None:
        if not self.main:
            return
        path = self.out / "log.jsonl"
        if resume_step is not None and path.exists():
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the last line of a killed writer
                if not isinstance(record.get("step"), int) or record["step"] <= resume_step:
                    kept.append(line + "\n")
            tmp = path.with_name(".log.jsonl.tmp")
            tmp.write_text("".join(kept), encoding="utf-8")
            os.replace(tmp, path)
        self.file = open(path, "a" if resume_step is not None else "w", encoding="utf-8")

    def event(self, record: dict[str, Any]) -> None:
        if self.file:
            self.file.write(json.dumps({"time": time.time(), **record}) + "\n")
            self.file.flush()

    def info(self, message: str, bar: Any = None) -> None:
        if not self.main:
            return
        bar = bar or self.bar
        if bar is not None:
            bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.file:
            self.file.close()
            self.file = None


def write_curves(out: Path, main_scores: dict[str, str], log: RunLog, plot_metrics: dict[str, str] | None = None) -> None:
    """Learning-curve PNGs in <run>/curves, when matplotlib is installed; never fails the run."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.info("learning curves: matplotlib is not installed, no PNGs (pip install 'nlpkit[viz]')")
        return
    try:
        written = plot_run(out / "log.jsonl", out / "curves", main_scores, plot_metrics)
    except Exception as exc:  # a plot must never cost the user a finished run
        log.info(f"learning curves not written: {type(exc).__name__}: {exc}")
        return
    if written:
        log.info(f"learning curves: {', '.join(str(p) for p in written.values())}")
