"""Checkpoint folders: nlpkit.json + model.safetensors + backbone/config.json + tokenizer/.

Saves are atomic (written beside the target and renamed into place), and loading never unpickles:
tensors come from safetensors, everything else from JSON.

A resumable training checkpoint (``checkpoints/step-N/`` in a run folder) is a model checkpoint plus
``training_state.pt`` (optimizer, scheduler, gradient scaler and RNG states; loaded with
``torch.load(weights_only=True)``, which refuses arbitrary objects) and ``trainer_state.json``
(counters, data position, best score, history, run config). ``trainer_state.json`` is written last
and lists every file with its size, so a folder copied or written half-way is detected, not loaded.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .._version import __version__
from ..sdk.errors import CheckpointError, ConfigError
from ..sdk.options import build, show

FORMAT_VERSION = 1
META_FILE = "nlpkit.json"
WEIGHTS_FILE = "model.safetensors"
#: resumable training checkpoints live in <run>/checkpoints/step-<N>/
CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
TENSOR_STATE_FILE = "training_state.pt"
_STEP_RE = re.compile(r"^step-(\d+)$")


def versions() -> dict[str, str]:
    import torch
    import transformers


    return {"nlpkit": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def tmp_folder(target: Path) -> Path:
    """Where ``atomic_folder`` writes ``target`` before renaming it into place."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def fresh_folder(path: Path) -> Path:
    """An empty folder at ``path`` (what a killed save left there is removed)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def atomic_folder(target: Path, write: Callable[[Path], None], tmp: Path | None = None) -> None:
    """Call ``write(tmp_folder)`` then move the folder to ``target``; a kill at any point leaves
    either the old complete folder or the new complete one (see ``resolve``), plus at worst a hidden
    ``.NAME.tmp-PID`` folder that ``clean_partial`` removes. ``tmp``: a folder already begun (by the
    processes of a sharded run, each of which wrote its shard into it)."""
    target = Path(target)
    old = target.with_name(f".{target.name}.old")
    if tmp is None:
        tmp = fresh_folder(tmp_folder(target))
    write(tmp)
    _fsync_tree(tmp)
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (a power cut after it must not bring the old name back)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_sizes(folder: Path, skip: Sequence[str] = ()) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).as_posix() not in skip}


def _check_sizes(folder: Path, files: dict[str, int], listed_in: str) -> None:
    for rel, size in files.items():
        path = folder / rel
        if not path.is_file():
            raise CheckpointError(f"{folder} is incomplete: {rel} is missing (listed in {listed_in})")
        if path.stat().st_size != size:
            raise CheckpointError(
                f"{folder} is damaged: {rel} has {path.stat().st_size} bytes, {listed_in} says {size} "
                "(a copy or save that did not finish?)")


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is an nlpkit checkpoint or a run folder with one (``--backbone RUN``)."""
    try:
        return Path(path).exists() and bool(resolve(path))
    except CheckpointError:
        return False


def resolve(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder whose ``best/`` holds one."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    from .sharding import is_sharded

    for candidate in (path, path / "best", path.with_name(f".{path.name}.old"), path / ".best.old"):
        if (candidate / META_FILE).is_file() and ((candidate / WEIGHTS_FILE).is_file() or is_sharded(candidate)):
            return candidate
    raise CheckpointError(
        f"{str(path)!r} is not an nlpkit checkpoint or run folder (no {META_FILE} + {WEIGHTS_FILE} in it or in best/)"
    )


def _write_model(tmp: Path, model: Any, tasks: Sequence[Any], extra: dict[str, Any] | None,
                 state_dict: dict[str, Any] | None = None) -> None:
    """The model files; nlpkit.json comes last and lists the others with their sizes.

    ``state_dict``: the full weights gathered from a sharded model (whose own tensors are shards). A folder
    that already holds ``sharded/`` (a sharded step checkpoint) keeps its weights there, not in safetensors."""
    from safetensors.torch import save_file, save_model

    from .sharding import SHARDED_DIR

    backbone = model.backbone
    if (tmp / SHARDED_DIR).is_dir():
        pass  # the weights are in the shards
    elif state_dict is not None:
        save_file(gathered_tensors(model, state_dict), str(tmp / WEIGHTS_FILE))
    else:
        partial = model.tensors_to_save()  # a peft backbone over a loadable base: adapters and heads only
        if partial is None:
            save_model(model, str(tmp / WEIGHTS_FILE))
        else:
            save_file(partial, str(tmp / WEIGHTS_FILE))
    backbone.save_config(tmp)
    meta = {
        "format": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "versions": versions(),
        "backbone": backbone.describe(),
        "tasks": [
            {
                "name": t.name,
                "type": t.type_name,
                "version": t.version,
                "module": type(t).__module__,
                "options": t.options_dict(),
                "state": t.state_dict(),
            }
            for t in tasks
        ],
        **(extra or {}),
        "files": _file_sizes(tmp),
    }
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


def gathered_tensors(model: Any, state: dict[str, Any]) -> dict[str, Any]:
    """What an unsharded save of ``model`` writes, taken from its gathered ``state``: the same names (a tied
    tensor once, under the name safetensors' ``save_model`` keeps: the first in sorted order) and, for an
    adapter-only checkpoint, only the adapters, trained rows and heads. So a sharded run's ``best/`` is
    the same file as a one-process run's."""
    aliases: dict[int, list[str]] = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        aliases.setdefault(id(tensor), []).append(name)
    dropped = {n for names in aliases.values() for n in sorted(names)[1:]}
    keep = model.saved_names()
    return {k: v.detach().contiguous() for k, v in state.items()
            if k not in dropped and (keep is None or k in keep)}


def save(folder: str | Path, model: Any, tasks: Sequence[Any], extra: dict[str, Any] | None = None,
         state_dict: dict[str, Any] | None = None) -> None:
    """``state_dict``: the gathered weights of a sharded model (see ``_write_model``)."""
    atomic_folder(Path(folder), lambda tmp: _write_model(tmp, model, tasks, extra, state_dict))


def read_json(path: Path) -> Any:
    """A JSON file of a checkpoint; unreadable, not UTF-8 or not JSON is a CheckpointError naming it."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not UTF-8 text at byte {exc.start}: the file is damaged") from exc
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}): the file is damaged") from exc


@dataclass
class SavedTask:
    """One entry of nlpkit.json's "tasks", as ``_write_model`` writes it."""

    name: str
    type: str
    options: dict[str, Any]
    state: dict[str, Any]
    version: int = 1
    module: Optional[str] = None


@dataclass
class SavedBackbone:
    spec: str
    kind: Optional[str] = None
    model_type: Optional[str] = None
    parameters: Optional[int] = None


def read_meta(folder: str | Path) -> dict[str, Any]:
    """nlpkit.json, checked for shape (so later code can index it) and for the sizes of the files it lists."""
    folder = resolve(folder)
    path = folder / META_FILE
    meta = read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format')!r}"
                              if isinstance(meta, dict) else f"{path}: not a checkpoint description")
    try:
        meta["backbone"] = _known_fields(SavedBackbone, meta.get("backbone"), "backbone")
        if not isinstance(meta.get("tasks"), list) or not meta["tasks"]:
            raise ConfigError(f"tasks: expected a list of task entries, got {show(meta.get('tasks'))}")
        meta["tasks"] = [_known_fields(SavedTask, entry, f"tasks[{i}]") for i, entry in enumerate(meta["tasks"])]
        if "files" in meta and not isinstance(meta["files"], dict):
            raise ConfigError(f"files: expected a mapping of file sizes, got {show(meta['files'])}")
    except ConfigError as exc:
        raise CheckpointError(f"{path}: damaged: {exc}") from exc
    if isinstance(meta.get("files"), dict):
        _check_sizes(folder, meta["files"], META_FILE)
    return meta


def _known_fields(cls: type, entry: Any, key: str) -> dict[str, Any]:
    """``entry`` with the fields ``cls`` describes checked and typed (so ``version`` is an int to compare);
    keys a later nlpkit may add are kept, not refused."""

    if not isinstance(entry, dict):
        raise ConfigError(f"{key}: expected a mapping, got {show(entry)}")
    names = {f.name for f in dataclasses.fields(cls)}
    checked = build(cls, {k: v for k, v in entry.items() if k in names}, key)
    return {**entry, **dataclasses.asdict(checked)}


def check_files(path: str | Path) -> Path:
    """Cheap checks of a checkpoint that read no weights: nlpkit.json (shape, file sizes), the backbone's
    config.json and the tokenizer's JSON files, and the safetensors header. For --init-from, before any
    folder is touched; ``load`` / ``load_backbone`` check the rest (shapes of every tensor)."""
    folder = resolve(path)
    read_meta(folder)
    config = read_json(folder / "backbone" / "config.json")
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise CheckpointError(f"{folder / 'backbone' / 'config.json'}: damaged: expected a JSON object with a "
                              f"model_type, got {str(config)[:80]}")
    tokenizer = folder / "tokenizer"
    if not tokenizer.is_dir():
        raise CheckpointError(f"{tokenizer}: missing (the checkpoint's tokenizer folder)")
    for file in sorted(tokenizer.glob("*.json")):
        read_json(file)
    weight_names(folder)
    return folder


def weight_names(folder: str | Path) -> list[str]:
    """The tensor names in the safetensors header (reads the header only)."""
    from safetensors import SafetensorError, safe_open

    from .sharding import is_sharded, read_model_tensors

    if is_sharded(folder):
        return list(read_model_tensors(folder))
    path = Path(folder) / WEIGHTS_FILE
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc}): the file is damaged") from exc


def read_tensors(folder: str | Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .sharding import is_sharded, read_model_tensors

    if is_sharded(resolve(folder)):
        return read_model_tensors(resolve(folder))
    path = resolve(folder) / WEIGHTS_FILE
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot load the weights ({exc}): the file is damaged") from exc


# ---------------------------------------------------------------------------------------------------
# Resumable training checkpoints
# ---------------------------------------------------------------------------------------------------
def save_training(folder: str | Path, model: Any, tasks: Sequence[Any], state: dict[str, Any],
                  tensors: dict[str, Any], extra: dict[str, Any] | None = None, tmp: Path | None = None,
                  state_dict: dict[str, Any] | None = None) -> None:
    """A model checkpoint plus what resuming needs: ``tensors`` (optimizer, scheduler, scaler, RNG:
    tensors and plain Python values only) and ``state`` (JSON). The state file is written last.
    ``tmp``: the folder a sharded run's processes began, holding their shards (``sharding.SHARDED_DIR``)."""
    import torch

    def write(tmp: Path) -> None:
        _write_model(tmp, model, tasks, extra, state_dict)
        torch.save(tensors, tmp / TENSOR_STATE_FILE)
        record = {"format": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **state,
                  "files": _file_sizes(tmp)}
        (tmp / STATE_FILE).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")

    atomic_folder(Path(folder), write, tmp)


def read_training_state(folder: str | Path) -> dict[str, Any]:
    """The JSON half of a training checkpoint, after checking that every file is complete."""
    folder = Path(folder)
    path = folder / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a resumable checkpoint (no {STATE_FILE})")
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION or not isinstance(state.get("files"), dict):
        raise CheckpointError(f"{path}: not a training state this version of nlpkit can read")
    _check_sizes(folder, state["files"], STATE_FILE)
    return state


def load_training_tensors(folder: str | Path) -> dict[str, Any]:
    """Optimizer/scheduler/scaler/RNG states. ``weights_only=True``: a tampered file cannot run code."""
    import pickle

    import torch

    path = Path(folder) / TENSOR_STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot load the training state ({str(exc).splitlines()[0]})") from exc


def step_of(folder: Path) -> int | None:
    m = _STEP_RE.match(folder.name)
    return int(m.group(1)) if m else None


def list_training_checkpoints(run_dir: str | Path) -> list[Path]:
    """``checkpoints/step-N`` folders of a run, oldest first (complete or not: see ``latest_training``)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=step_of)


def latest_training(path: str | Path, warn: Callable[[str], None] | None = None) -> Path | None:
    """The newest complete training checkpoint of a run folder (or ``path`` itself when it is one).

    A damaged folder is reported through ``warn`` and skipped, so a run falls back to the previous
    complete checkpoint instead of loading garbage.
    """
    path = Path(path)
    if (path / STATE_FILE).is_file() or step_of(path) is not None:
        read_training_state(path)  # a checkpoint named explicitly must be complete: raise if not
        return path
    for folder in reversed(list_training_checkpoints(path)):
        try:
            read_training_state(folder)
            return folder
        except CheckpointError as exc:
            if warn:
                warn(f"skipping checkpoint {folder}: {exc}")
    return None


def prune_training(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` step checkpoints; returns what was removed."""
    removed = []
    for folder in list_training_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def clean_partial(run_dir: str | Path) -> list[Path]:
    """Remove half-written ``.NAME.tmp-PID`` folders left by a save that was killed."""
    run_dir = Path(run_dir)
    removed = []
    for parent in (run_dir, run_dir / CHECKPOINTS_DIR):
        if parent.is_dir():
            for p in parent.iterdir():
                if p.is_dir() and p.name.startswith(".") and ".tmp-" in p.name:
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p)
    return removed


def training_config(path: str | Path, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The run config a resumable checkpoint (or a run folder's newest one) was trained with."""
    folder = latest_training(path, warn)
    if folder is None:
        raise CheckpointError(f"{path}: no complete resumable checkpoint ({CHECKPOINTS_DIR}/step-N) to resume from")
    config = read_training_state(folder).get("config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{folder / STATE_FILE}: holds no run config")
    return config
