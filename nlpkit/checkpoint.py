"""Checkpoint folders: nlpkit.json + model.safetensors + backbone/config.json + tokenizer/.

Saves are atomic (written beside the target and renamed into place), and loading never unpickles:
tensors come from safetensors, everything else from JSON.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from .errors import CheckpointError

FORMAT_VERSION = 1
META_FILE = "nlpkit.json"
WEIGHTS_FILE = "model.safetensors"


def versions() -> dict[str, str]:
    import torch
    import transformers

    from . import __version__

    return {"nlpkit": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def atomic_folder(target: Path, write) -> None:
    """Call ``write(tmp_folder)`` then move the folder to ``target``; a kill at any point leaves
    either the old complete folder or the new complete one (see ``resolve``)."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    _fsync_tree(tmp)
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def resolve(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder whose ``best/`` holds one."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    for candidate in (path, path / "best", path.with_name(f".{path.name}.old"), path / ".best.old"):
        if (candidate / META_FILE).is_file() and (candidate / WEIGHTS_FILE).is_file():
            return candidate
    raise CheckpointError(
        f"{str(path)!r} is not an nlpkit checkpoint or run folder (no {META_FILE} + {WEIGHTS_FILE} in it or in best/)"
    )


def save(folder: str | Path, model: Any, tasks: Sequence[Any], extra: dict[str, Any] | None = None) -> None:
    from safetensors.torch import save_model

    backbone = model.backbone

    def write(tmp: Path) -> None:
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
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        save_model(model, str(tmp / WEIGHTS_FILE))
        backbone.save_config(tmp)

    atomic_folder(Path(folder), write)


def read_meta(folder: str | Path) -> dict[str, Any]:
    folder = resolve(folder)
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{folder / META_FILE}: not valid JSON ({exc})") from exc
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{folder / META_FILE}: unsupported checkpoint format {meta.get('format')!r}")
    return meta


def _task_class(entry: dict[str, Any]):
    """The registered plugin, importing the module that defined it at save time if needed."""
    from .errors import UnknownTaskError
    from .registry import get_task_class

    try:
        return get_task_class(entry["type"])
    except UnknownTaskError:
        module = entry.get("module")
        if not module:
            raise
        import importlib

        try:
            importlib.import_module(module)
        except ImportError:
            raise UnknownTaskError(
                f"this checkpoint needs task {entry['type']!r} from module {module!r}, which cannot be imported; "
                "install the plugin or pass --plugin MODULE") from None
        return get_task_class(entry["type"])


def load(folder: str | Path, only: Sequence[str] | None = None):
    """Rebuild (model, tasks, meta) from a checkpoint without any network access."""
    from safetensors.torch import load_model

    from .backbone import Backbone
    from .model import MultiTaskModel
    folder = resolve(folder)
    meta = read_meta(folder)
    tasks = []
    for entry in meta["tasks"]:
        cls = _task_class(entry)
        if entry.get("version", 1) > cls.version:
            raise CheckpointError(
                f"task {entry['name']!r} was saved by {entry['type']}.v{entry['version']}, "
                f"but the installed plugin is v{cls.version}; upgrade it"
            )
        task = cls(entry["name"], entry["options"])
        task.load_state_dict(entry["state"])
        tasks.append(task)
    backbone = Backbone.from_saved(folder, meta["backbone"]["spec"])
    heads = {}
    for task in tasks:
        task.setup(backbone)
        heads[task.name] = task.build_head(backbone)
    model = MultiTaskModel(backbone, heads)
    missing, unexpected = load_model(model, str(folder / WEIGHTS_FILE), strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{folder / WEIGHTS_FILE} does not match the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.eval()
    if only:
        tasks = [t for t in tasks if t.name in only]
    return model, tasks, meta
