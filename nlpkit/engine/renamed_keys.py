"""Run-config keys that moved, and the one table that carries the old names for a release.

``trainer:`` used to hold every knob of a run; its keys now sit in sections named after the component that
reads them (precision, multitask, checkpoint, logging, performance). Recipes, ``--set`` overrides, dicts given
to ``nlpkit.train`` and the configs saved in run folders by older versions still say ``trainer.sampler``;
``upgrade`` moves such keys to their new place before the config is type-checked, so every way into a
``RunConfig`` accepts them, and ``notice`` words the one-line deprecation warning.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

from ..sdk.errors import ConfigError
from ..sdk.options import show

log = logging.getLogger("nlpkit.config")

#: old dotted key -> new dotted key. The old names are accepted (with a warning) in this release only;
#: configs saved by older runs are upgraded through it silently.
RENAMED: dict[str, str] = {
    "trainer.precision": "precision.compute",
    "trainer.sampler": "multitask.sampler",
    "trainer.temperature": "multitask.temperature",
    "trainer.schedule_per_task": "multitask.schedule_per_task",
    "trainer.optimizer_state": "multitask.optimizer_state",
    "trainer.head_lr_scale": "multitask.head_lr_scale",
    "trainer.task_weighting": "multitask.task_weighting",
    "trainer.best_per_task": "multitask.best_per_task",
    "trainer.keep_last": "checkpoint.keep_last",
    "trainer.save_every": "checkpoint.save_every",
    "trainer.save_minutes": "checkpoint.save_minutes",
    "trainer.resume": "checkpoint.resume",
    "trainer.log_every": "logging.log_every",
    "trainer.report_to": "logging.report_to",
    "trainer.tensorboard": "logging.tensorboard",
    "trainer.plots": "logging.plots",
    "trainer.progress": "logging.progress",
    "trainer.group_by_length": "performance.group_by_length",
    "trainer.compile": "performance.compile",
    "trainer.fast_dropout": "performance.fast_dropout",
    "trainer.heap_reuse": "performance.heap_reuse",
    "trainer.gradient_checkpointing": "performance.gradient_checkpointing",
}

#: the sections that hold what ``trainer:`` held before the split (the resume check compares them all)
RUN_SECTIONS = ("trainer", "precision", "multitask", "checkpoint", "logging", "performance")

Renames = list[tuple[str, str]]


def upgrade(data: dict[str, Any]) -> Renames:
    """Move every old key of ``data`` to its new place; return the (old, new) pairs moved.

    ``data``'s top level is changed in place; the sections are replaced by copies, never edited, because
    callers reuse the dicts they pass (a test's trainer settings for two runs). A key given under both
    names is a mistake naming both: which one was meant cannot be known.
    """
    moved: Renames = []
    for old, new in RENAMED.items():
        old_section, old_key = old.split(".")
        new_section, new_key = new.split(".")
        source = data.get(old_section)
        if not isinstance(source, dict) or old_key not in source:
            continue  # a section of the wrong shape is reported by the type check, naming it
        target = data.get(new_section)
        if target is None:
            target = {}
        if not isinstance(target, dict):
            raise ConfigError(f"{new_section}: expected a mapping, got {show(target)}")
        if new_key in target:
            raise ConfigError(f"{old} and {new} are the same key under its old and its new name; "
                              f"give it once, as {new}")
        source = dict(source)
        data[old_section] = source
        data[new_section] = {**target, new_key: source.pop(old_key)}
        moved.append((old, new))
    return moved


def new_name(key: str) -> tuple[str, tuple[str, str] | None]:
    """A dotted key (``trainer.sampler`` or ``trainer.sampler.x``) under its new name, and the rename used."""
    parts = key.split(".")
    head = ".".join(parts[:2])
    if head not in RENAMED:
        return key, None
    return ".".join([RENAMED[head], *parts[2:]]), (head, RENAMED[head])


def notice(moved: Iterable[tuple[str, str]]) -> str:
    """One line naming each old key and its new name (duplicates said once)."""
    pairs = list(dict.fromkeys(moved))
    said = ", ".join(f"{old} is now {new}" for old, new in pairs)
    return f"renamed config keys: {said}; the old names still work in this release and go in the next"


def warn(moved: Iterable[tuple[str, str]], source: str | None = None) -> None:
    """The deprecation notice, once per config, on the ``nlpkit.config`` logger.

    A logging warning, not a DeprecationWarning: the old names are written in recipe files and on command
    lines, not in Python code, and Python hides DeprecationWarnings raised inside a library by default,
    so the people who must rename the keys would never see one. The CLI shows warnings on stderr.
    """
    moved = list(moved)
    if moved:
        log.warning(f"{source}: {notice(moved)}" if source else notice(moved))


def as_written(message: str, moved: Iterable[tuple[str, str]]) -> str:
    """An error about a moved key, named as the user wrote it (``trainer.keep_last: must be >= 1``)."""
    for old, new in moved:
        if message.startswith(f"{new}:"):
            return old + message[len(new):]
    return message
