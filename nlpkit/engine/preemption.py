"""Stopping cleanly when asked: SIGTERM (what Slurm, Kubernetes and spot instances send) and Ctrl-C.

The first signal only raises a flag. The loop looks at it after each optimizer step, writes a resumable
checkpoint, says how to resume, and stops with the shell's code for that signal (143 for SIGTERM, 130 for
Ctrl-C). A second signal aborts at once: a user pressing Ctrl-C twice does not want to wait for a save.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _main_process() -> bool:
    """Rank 0, or no launcher: in a run of N processes one of them speaks (they all get the signal)."""
    return os.environ.get("RANK", "0") == "0"


def exit_code(signum: int) -> int:
    """The code a shell reports for a process ended by ``signum``."""
    return 128 + int(signum)


class Preemption:
    """``with Preemption(describe_latest) as p:`` ... ``if p.requested: save and stop``.

    Handlers are only installed on the main thread (Python allows no other); elsewhere the context does
    nothing and signals keep their usual meaning.
    """

    def __init__(self, describe_latest: Callable[[], str] | None = None):
        self.describe_latest = describe_latest
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "Preemption":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous = {}

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:  # the second one: abort now
            self._restore()
            latest = self.describe_latest() if self.describe_latest else ""
            if _main_process():
                print(f"\n{name} again: aborting at once, without a checkpoint of this step. {latest}",
                      file=sys.stderr, flush=True)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(exit_code(signum))
        self.requested = signum
        again = "Ctrl-C" if signum == signal.SIGINT else name
        if _main_process():
            print(f"\n{name} received: finishing this step, then saving a resumable checkpoint "
                  f"({again} again aborts at once)", file=sys.stderr, flush=True)
