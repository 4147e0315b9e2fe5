"""Where a run's wall time goes: read, tokenizer, encode, model build, first step, steps, evaluation, saving.

A quick run is mostly set-up, so the trainer times each phase and writes the seconds into metrics.json
(``phases``) and one log line. Phases nest: time spent in an inner phase (the tokenizer, trained while
the backbone is built) is not counted again in the outer one (model build), so the phases add up to
the run's wall time, less what is in ``other``.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

#: the process's start, as near as nlpkit can see it: nlpkit/__init__ imports this module before anything heavy
PROCESS_START = time.perf_counter()
_FIRST = False  # set by the CLI: its run counts from the process start


def count_from_process_start() -> None:
    """The next run's clock starts at PROCESS_START, so that imports and argument parsing show as ``other``."""
    global _FIRST
    _FIRST = True


class PhaseClock:
    """Exclusive seconds per named phase."""

    def __init__(self, start: float | None = None) -> None:
        self.start = PROCESS_START if start is None else start
        self.seconds: dict[str, float] = {}
        self._inner: list[float] = []  # per open phase: seconds spent in the phases nested inside it

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        self.seconds.setdefault(name, 0.0)  # listed in the order the phases begin
        self._inner.append(0.0)
        try:
            yield
        finally:
            spent = time.perf_counter() - began
            self.add(name, spent - self._inner.pop())
            if self._inner:
                self._inner[-1] += spent

    @classmethod
    def for_run(cls) -> "PhaseClock":
        """A CLI run counts from the process start (imports show as "other"); a run started from Python (a notebook,
        a sweep) counts from now."""
        global _FIRST
        clock = cls(PROCESS_START if _FIRST else time.perf_counter())
        _FIRST = False
        return clock

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, seconds)

    def summary(self) -> dict[str, float]:
        """Seconds per phase, in the order first timed, with ``other`` (imports, launch, the rest) and ``total``
        since the process started."""
        total = time.perf_counter() - self.start
        out = {k: round(v, 3) for k, v in self.seconds.items()}
        out["other"] = round(max(0.0, total - sum(self.seconds.values())), 3)
        out["total"] = round(total, 3)
        return out

    def line(self) -> str:
        parts = self.summary()
        total = parts.pop("total")
        shown = ", ".join(f"{k} {v:.1f}s" for k, v in parts.items() if v >= 0.05)
        return f"time: {shown} (total {total:.1f}s)"
