"""A run's task data: tasks built from their entries, splits read, and the endless batch streams the loop
draws from (one per task, plus the sampler that picks which task comes next).

Everything here is deterministic given the seed, so every process of a distributed run, and a resumed run,
sees the same batches: (epoch, position) per stream and the sampler's state are all a resume needs.
"""
from __future__ import annotations

import copy
import random
from typing import Any, Sequence

from ..sdk.data import LengthGroupedBatches, carve_dev_split, require_examples, sample_examples
from ..sdk.errors import ConfigError
from ..sdk.registry import get_task_class
from ..sdk.task import Task
from .config import DataSettings, TaskEntry
from .tables import FINGERPRINT_VERSION, example_json, legacy_fingerprint, load_examples, texts_fingerprint


def build_task(entry: TaskEntry) -> Task:
    cls = get_task_class(entry.type)
    return cls(entry.name, entry.options)


def read_splits(task: Task, entry: TaskEntry, splits: Sequence[str] = ("train", "dev"),
                settings: DataSettings = DataSettings()) -> dict[str, Sequence[dict]]:
    """Read the entry's files (or the task's embedded data when none are given): memory-mapped tables, from the
    cache when a file was read before (nlpkit.engine.tables)."""
    files = dict(entry.data) or task.default_data()
    if not files:
        raise ConfigError(f"task {entry.name!r}: no data given (use --data train=PATH) and the task has no embedded default")
    unknown = sorted(set(files) - {"train", "dev", "test"})
    if unknown:
        raise ConfigError(f"task {entry.name!r}: unknown data split(s) {unknown}; use train, dev or test")
    data = {}
    for split in splits:
        if split in files:
            examples = read_any(task, files[split], settings)
            require_examples(examples, files[split])
            data[split] = examples
    if "train" in splits and "train" not in data:
        raise ConfigError(f"task {entry.name!r}: no training data (use --data train=PATH)")
    fraction = getattr(task.options, "dev_split", 0.0)
    if fraction and "train" in data:
        if "dev" in files:
            raise ConfigError(f"task {entry.name!r}: dev_split={fraction} carves a dev set from the training data, "
                              "but a dev file is given too; use one or the other")
        data["train"], data["dev"] = carve_dev_split(data["train"], fraction, task.options.dev_split_seed,
                                                     files["train"])
    keep = getattr(task.options, "max_train_examples", None)
    if keep and "train" in data and keep < len(data["train"]):
        data["train"] = sample_examples(data["train"], keep, task.options.dev_split_seed)
    return data


def read_any(task: Task, path: str, settings: DataSettings = DataSettings()) -> Sequence[dict]:
    """A local file in the task's formats, a Parquet/Arrow file or saved ``datasets`` folder, or
    ``hub:DATASET:SPLIT`` (the last three through the task's read_hub)."""
    return load_examples(task, path, settings)


class TaskSampler:
    """Which task the next batch comes from. Seeded identically on every process.

    proportional: each pass interleaves every task's batches once, in random order (p ∝ batches);
    temperature: draws with p ∝ n^(1/T); annealed (Stickland & Murray 2019): p ∝ n^α with α moving
    linearly from 1 (proportional) at the first draw to 0.2 (close to uniform) at the last of ``total``
    draws; round-robin: tasks in turn.
    """

    #: annealed sampling's exponent at the end of training (the paper's 1 - 0.8)
    ANNEAL_TO = 0.2

    def __init__(self, names: Sequence[str], sizes: Sequence[int], kind: str, temperature: float, seed: int,
                 total: int | None = None):
        self.names, self.sizes, self.kind = list(names), list(sizes), kind
        self.rng = random.Random(seed)
        weights = [n ** (1.0 / temperature) for n in sizes]
        self.probs = [w / sum(weights) for w in weights]
        self.total = total
        self.queue: list[str] = []
        self.turn = 0  # draws so far (round-robin's position; annealed's progress)

    def probabilities(self, draw: int | None = None) -> list[float]:
        """Each task's chance at draw ``draw`` (default: the next); proportional's is its long-run share."""
        if self.kind == "round-robin":
            return [1.0 / len(self.names)] * len(self.names)
        if self.kind == "annealed":
            progress = min(1.0, (self.turn if draw is None else draw) / max(1, (self.total or 1) - 1))
            alpha = 1.0 - (1.0 - self.ANNEAL_TO) * progress
            weights = [n ** alpha for n in self.sizes]
            return [w / sum(weights) for w in weights]
        if self.kind == "temperature":
            return list(self.probs)
        return [n / sum(self.sizes) for n in self.sizes]

    def __next__(self) -> str:
        if len(self.names) == 1:
            return self.names[0]
        turn, self.turn = self.turn, self.turn + 1
        if self.kind == "round-robin":
            return self.names[turn % len(self.names)]
        if self.kind in ("temperature", "annealed"):
            return self.rng.choices(self.names, weights=self.probabilities(turn))[0]
        if not self.queue:
            self.queue = [n for n, size in zip(self.names, self.sizes) for _ in range(size)]
            self.rng.shuffle(self.queue)
        return self.queue.pop()

    def plan(self, steps: int, per_step: int = 1) -> dict[str, int]:
        """How many of the next ``steps`` optimizer steps (of ``per_step`` draws each) each task will be in:
        a copy of this sampler draws them, so the count is exact, not an expectation."""
        twin = copy.deepcopy(self)
        counts = {n: 0 for n in self.names}
        for _ in range(steps):
            for name in {next(twin) for _ in range(per_step)}:
                counts[name] += 1
        return counts

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), "queue": list(self.queue), "turn": self.turn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rng = state["rng"]
        self.rng.setstate((rng[0], tuple(rng[1]), rng[2]))
        self.queue, self.turn = list(state["queue"]), state["turn"]


class TaskStream:
    """Endless global batches of one task: (epoch, position) is all that is needed to resume."""

    def __init__(self, task: Task, features: list[dict], batch_size: int, seed: int, group: bool, world: int):
        self.task, self.features, self.world = task, features, world
        self.sampler = LengthGroupedBatches(task.feature_lengths(features), batch_size, seed, group=group)
        self.epoch, self.position = 0, 0
        self._batches: list[Any] | None = None

    def _current(self) -> list[Any]:
        if self._batches is None:
            # a global batch smaller than the number of processes would leave a process idle
            self._batches = [b for b in self.sampler.batch_arrays(self.epoch) if len(b) >= self.world]
        return self._batches

    def __len__(self) -> int:
        return max(1, len(self._current()))

    def next_indices(self) -> list[int]:
        batches = self._current()
        if self.position >= len(batches):
            self.epoch, self.position, self._batches = self.epoch + 1, 0, None
            batches = self._current()
        idx = batches[self.position]
        self.position += 1
        return idx.tolist()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._batches = state["epoch"], state["position"], None


def data_fingerprint(examples: Sequence[dict], saved: str | None = None) -> str:
    """Identifies the training data a checkpoint's data position refers to.

    A table of examples or a lazy collection (a pretraining ``TextCorpus``) says itself what it is made of,
    through ``fingerprint()``, instead of being read again here. ``saved``: the fingerprint a checkpoint being
    resumed holds; one written before FINGERPRINT_VERSION is answered in its own form (a pass over the data),
    so that a run trained by an older nlpkit still resumes, and the checkpoints it goes on writing match."""
    if callable(getattr(examples, "fingerprint", None)):
        now = str(examples.fingerprint())
    else:
        now = texts_fingerprint(map(example_json, examples))
    versioned = now.startswith(FINGERPRINT_VERSION + ":")
    if versioned and saved is not None and not saved.startswith(FINGERPRINT_VERSION + ":"):
        return legacy_fingerprint(examples)
    return now


def describe_batch(stream: "TaskStream", idx: Sequence[int], examples: Sequence[dict], path: str,
                   position: tuple[int, int] | None = None) -> str:
    """Where a batch came from, in words a user can act on: its position and its examples' lines.

    ``position`` is the stream's (epoch, position) after the batch was drawn, when this is asked later."""
    lines, records, numbers = [], [], []
    for i in idx:
        ex_index = stream.features[i].get("example_index", i)
        ex = examples[ex_index] if 0 <= ex_index < len(examples) else {}
        lines.append(ex.get("line"))
        records.append(ex.get("record"))
        numbers.append(ex_index + 1)
    if all(v is not None for v in lines):
        kind, values = "lines", lines
    elif all(v is not None for v in records):
        kind, values = "records", records
    else:
        kind, values = "examples", numbers
    shown = ", ".join(str(v) for v in values[:8]) + (f" and {len(values) - 8} more" if len(values) > 8 else "")
    epoch, batch = position if position is not None else (stream.epoch, stream.position)
    return f"batch {batch} of epoch {epoch + 1}: {kind} {shown} of {path}"


