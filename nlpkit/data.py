"""Pieces that several plugins share: opening (gzipped) files, padding, length-grouped batching."""
from __future__ import annotations

import gzip
import io
import json
import random
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .errors import DataError


def open_text(path: str | Path, encoding: str = "utf-8") -> io.TextIOBase:
    """Open a text file, transparently un-gzipping ``.gz``; a missing file is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found" if not path.exists() else "not a file", str(path))
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, errors="strict", newline="")
    return open(path, encoding=encoding, newline="")


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record) for every non-blank line; bad JSON names the line."""
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", str(path), lineno) from None
            if not isinstance(record, dict):
                raise DataError("expected a JSON object per line", str(path), lineno)
            yield lineno, record


HUB_PREFIX = "hub:"


def is_hub(path: str) -> bool:
    return str(path).startswith(HUB_PREFIX)


def load_hub_split(spec: str) -> Any:
    """``hub:DATASET[:CONFIG]:SPLIT`` -> the rows of that split (a datasets.Dataset).

    Needs the optional ``datasets`` package and network access (or a local datasets cache).
    """
    parts = spec[len(HUB_PREFIX):].split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise DataError(f"expected hub:DATASET:SPLIT or hub:DATASET:CONFIG:SPLIT "
                        f"(e.g. hub:eriktks/conll2003:train, hub:nyu-mll/glue:sst2:train), got {spec!r}")
    name, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
    try:
        import datasets
    except ImportError:
        raise DataError("reading hub datasets needs the 'datasets' package: pip install 'nlpkit[hub]'", spec) from None
    try:
        rows = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # offline, unknown id, ...
        raise DataError(f"could not load hub dataset {name!r} (config {config}, split {split}): "
                        f"{type(exc).__name__}: {str(exc)[:300]}", spec) from None
    return rows


def carve_dev_split(examples: Sequence[Any], fraction: float, seed: int, path: str | Path = "train"
                    ) -> tuple[list[Any], list[Any]]:
    """(train, dev): a seeded random ``fraction`` of the examples held out as dev, both in file order.

    Depends only on the number of examples, the fraction and the seed, so the same file always gives
    the same split, whatever the training seed.
    """
    n = len(examples)
    k = max(1, round(n * fraction))
    if k >= n:
        raise DataError(f"dev_split={fraction} of {n} examples leaves nothing to train on", str(path))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    return ([ex for i, ex in enumerate(examples) if i not in held],
            [ex for i, ex in enumerate(examples) if i in held])


def require_examples(examples: Sequence[Any], path: str | Path) -> None:
    if not examples:
        raise DataError("no examples found (the file is empty or holds only blank lines)", str(path))


def pad(sequences: Sequence[Sequence[int]], value: int, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Right-pad to the longest sequence of this batch (dynamic padding)."""
    longest = max(len(s) for s in sequences)
    out = torch.full((len(sequences), longest), value, dtype=dtype)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.as_tensor(s, dtype=dtype)
    return out


def pad_encodings(features: Sequence[dict], pad_id: int, keys: Sequence[str] = ("input_ids",)) -> dict[str, torch.Tensor]:
    """input_ids (+ token_type_ids) padded, with the matching attention mask."""
    batch = {}
    for key in keys:
        if key in features[0]:
            batch[key] = pad([f[key] for f in features], pad_id if key == "input_ids" else 0)
    lengths = torch.tensor([len(f["input_ids"]) for f in features])
    batch["attention_mask"] = (torch.arange(batch["input_ids"].size(1))[None, :] < lengths[:, None]).long()
    return batch


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Batches of indices with similar lengths, in random order: less padding, same randomness.

    Shuffled megabatches of ``batch_size * 50`` items are sorted by length and cut into batches,
    and the batches are shuffled. Each pass uses ``seed + epoch`` so every process (and a resumed
    run) sees the same order; ``epoch`` advances on each iteration.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool = True, group: bool = True):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.group = group
        self.epoch = 0

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def batches(self, epoch: int) -> list[list[int]]:
        idx = list(range(len(self.lengths)))
        rng = random.Random(self.seed + epoch)
        if self.shuffle:
            rng.shuffle(idx)
        if self.group:
            mega = self.batch_size * 50
            idx = [i for k in range(0, len(idx), mega) for i in sorted(idx[k : k + mega], key=lambda j: -self.lengths[j])]
        batches = [idx[k : k + self.batch_size] for k in range(0, len(idx), self.batch_size)]
        if self.shuffle and self.group:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches(self.epoch)
        self.epoch += 1
        return iter(batches)


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Evaluation batches: longest first, so padding is minimal and memory peaks early."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
