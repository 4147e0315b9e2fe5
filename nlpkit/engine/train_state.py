"""What a resumable checkpoint holds besides the weights, and whether it may continue this run.

A step checkpoint holds the optimizer/scheduler/scaler states, every RNG state and the data position
(task sampler + one (epoch, position) per task stream), so a run killed at any point and resumed from its
last checkpoint ends with the same weights and metrics as one that never stopped. ``check_resume`` refuses
a checkpoint whose run cannot continue with this configuration, naming the key that changed.
"""
from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..sdk.errors import ConfigError
from ..sdk.task import Task
from . import checkpoint, renamed_keys
from .adapters import adapter_only
from .config import RunConfig
from .distributed import from_main


# ---- RNG states: everything that can make two runs differ --------------------------------------------
def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) generators, as tensors and plain values (weights_only-safe)."""
    import numpy as np

    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)), "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- resume compatibility ----------------------------------------------------------------------------
#: run settings that decide which batch comes next: changing them makes the saved data position meaningless
ORDER_KEYS = ("trainer.seed", "trainer.batch_size", "trainer.grad_accum", "multitask.sampler",
              "multitask.temperature", "performance.group_by_length")
#: run settings that decide the form of the saved optimizer state (with the behaviour of older runs, which lack them)
STATE_FORM_KEYS = {"multitask.optimizer_state": "shared"}
#: run settings that change nothing about the weights (resume stays exact when they change)
NEUTRAL_KEYS = {"checkpoint.resume", "logging.progress", "logging.tensorboard", "logging.report_to", "logging.plots",
                "checkpoint.save_every", "checkpoint.save_minutes", "checkpoint.keep_last", "logging.log_every",
                "trainer.eval_batch_size", "performance.heap_reuse"}


def run_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The sections that were once ``trainer:`` as dotted keys, from a saved config of any version: a
    run folder written before the split has its keys under ``trainer:``, and is read as if it had not."""
    config = dict(config)
    renamed_keys.upgrade(config)
    return {f"{section}.{key}": value for section in renamed_keys.RUN_SECTIONS
            for key, value in (config.get(section) or {}).items()}


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


#: Backbone settings that choose how the same function is computed (with their defaults): a resume may
#: change them, with a warning, and a checkpoint from before they existed resumes as if it had the default.
BACKBONE_KERNEL_KEYS = {"attention": "sdpa"}


def check_resume(where: Path, state: dict[str, Any], meta: dict[str, Any], config: RunConfig,
                 tasks: Sequence[Task], fingerprints: dict[str, str], world: int) -> list[str]:
    """Raise ConfigError when the checkpoint cannot continue this run; return warnings for changes
    that are allowed but make the resumed run differ from an uninterrupted one."""

    def refuse(what: str) -> None:
        raise ConfigError(
            f"cannot resume from {where}: {what}. Resume with the settings the checkpoint was trained with, "
            "or start over with --resume never (checkpoint.resume: never) or another --output-dir")

    old_cfg = state.get("config") or {}
    old_tasks = [(t["name"], t["type"]) for t in meta["tasks"]]
    new_tasks = [(t.name, t.type_name) for t in tasks]
    if old_tasks != new_tasks:
        fmt = lambda ts: ", ".join(f"{n} ({ty})" for n, ty in ts)  # noqa: E731
        refuse(f"it was trained on tasks [{fmt(old_tasks)}], this run has [{fmt(new_tasks)}]")
    for task, saved in zip(tasks, meta["tasks"]):
        old_opts, new_opts = saved.get("options", {}), _plain(task.options_dict())
        defaults = _option_defaults(task)
        for key in sorted(set(old_opts) | set(new_opts)):
            # an option added after the checkpoint was written: it had the default's behaviour then
            if old_opts.get(key, defaults.get(key)) != new_opts.get(key):
                refuse(f"tasks.{task.name}.options.{key} was {old_opts.get(key)!r}, now {new_opts.get(key)!r}")
        if fingerprints[task.name] != (state.get("data") or {}).get(task.name):
            refuse(f"the training data of task {task.name!r} is not the data the checkpoint was trained on "
                   f"(fingerprint {state.get('data', {}).get(task.name)} then, {fingerprints[task.name]} now: "
                   "the number of examples and a hash of them)")
        if _plain(task.state_dict()) != saved.get("state"):
            refuse(f"task {task.name!r} learned a different label space from its training data")
    old_bb = old_cfg.get("backbone") or {}
    new_bb = config.to_dict()["backbone"]
    kernel_changes = []
    for key in sorted(set(old_bb) | set(new_bb)):
        if key in BACKBONE_KERNEL_KEYS:  # the same function computed another way; older runs lack the key
            old = old_bb.get(key, BACKBONE_KERNEL_KEYS[key])
            if old != new_bb.get(key):
                kernel_changes.append(f"backbone.{key} was {old!r}, now {new_bb.get(key)!r}")
        elif old_bb.get(key) != new_bb.get(key):
            refuse(f"backbone.{key} was {old_bb.get(key)!r}, now {new_bb.get(key)!r}")
    old_tc, new_tc = run_settings(old_cfg), run_settings(config.to_dict())
    for key in ORDER_KEYS:
        if old_tc.get(key) != new_tc.get(key):
            refuse(f"{key} was {old_tc.get(key)!r}, now {new_tc.get(key)!r} (it decides the data order)")
    for key, before in STATE_FORM_KEYS.items():
        if len(tasks) > 1 and old_tc.get(key, before) != new_tc.get(key, before):
            refuse(f"{key} was {old_tc.get(key, before)!r}, now {new_tc.get(key, before)!r} "
                   "(the checkpoint's optimizer state has the other form)")
    warnings = kernel_changes + [f"{key} was {old_tc.get(key)!r}, now {new_tc.get(key)!r}"
                for key in new_tc if key not in NEUTRAL_KEYS and key not in ORDER_KEYS and key not in STATE_FORM_KEYS
                and old_tc.get(key) != new_tc[key]]
    old_weights = {t.get("name") or t.get("type"): t.get("weight", 1.0) for t in old_cfg.get("tasks") or []}
    warnings += [f"tasks.{e.name}.weight was {old_weights.get(e.name)!r}, now {e.weight!r}"
                 for e in config.tasks if old_weights.get(e.name, e.weight) != e.weight]
    if state.get("world_size", world) != world:
        warnings.append(f"{state.get('world_size')} processes then, {world} now (dropout draws differ)")
    return warnings


def _option_defaults(task: Task) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(task.Options):
        if f.default is not dataclasses.MISSING:
            out[f.name] = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = _plain(f.default_factory())  # type: ignore[misc]
    return out


def run_dir_of(ckpt: Path) -> Path:
    """The run folder that holds ``<run>/checkpoints/step-N``."""
    if ckpt.parent.name == checkpoint.CHECKPOINTS_DIR:
        return ckpt.parent.parent
    raise ConfigError(f"checkpoint.resume: {ckpt} is not inside a run folder's {checkpoint.CHECKPOINTS_DIR}/; "
                      "say where the resumed run goes with output_dir (--output-dir)")


@dataclass
class LoopState:
    """Everything the loop accumulates; saved (as JSON) in every step checkpoint."""

    step: int = 0
    best_score: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    bad_evals: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    n_samples: int = 0
    n_tokens: int = 0
    train_time: float = 0.0
    wall_time: float = 0.0
    skipped: int = 0
    bad_in_row: int = 0
    skipped_batches: list[dict[str, Any]] = field(default_factory=list)
    running: dict[str, list[float]] = field(default_factory=dict)
    last_grad_norm: float | None = None
    resumed_from: list[int] = field(default_factory=list)
    #: multi-task: optimizer steps each task has made (a step of several tasks' micro-batches counts for each)
    task_steps: dict[str, int] = field(default_factory=dict)
    #: multi-task: each task's best evaluation so far, {task: {"step", "score", "metrics"}}
    task_best: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: multitask.task_weighting "uncertainty": each task's running mean loss
    loss_means: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LoopState":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})




# ---- step checkpoints: write and restore -------------------------------------------------------------
def save_step_checkpoint(acc: Any, out: Path, model: torch.nn.Module, tasks: Sequence[Task], optimizer: Any,
                         scheduler: Any, sampler: Any, streams: dict[str, Any], state: LoopState,
                         fingerprints: dict[str, str], total_steps: int, stop_reason: str | None,
                         config: dict[str, Any], keep_last: int, sharding: Any = None) -> Path:
    """Write ``<run>/checkpoints/step-N``. Every process calls it (each one's RNG states are gathered);
    the main process writes, then prunes to the newest ``keep_last``. With a sharding engine every process
    first writes its shard of the weights and optimizer state into the folder (``sharding.SHARDED_DIR``)."""
    rngs = [rng_state()]
    if acc.num_processes > 1:
        from accelerate.utils import gather_object

        rngs = gather_object(rngs)
    folder = out / checkpoint.CHECKPOINTS_DIR / f"step-{state.step}"
    tmp = weights = None
    if sharding is not None and sharding.sharded_checkpoints:
        tmp = Path(from_main(acc, str(checkpoint.tmp_folder(folder))))  # one folder for all processes
        if acc.is_main_process:
            checkpoint.fresh_folder(tmp)
        acc.wait_for_everyone()
        sharding.save_sharded(tmp, model, optimizer, frozen_too=not adapter_only(model.backbone))
        weights = None if sharding.weights_in_shards else sharding.full_state_dict(model)
        acc.wait_for_everyone()
    if acc.is_main_process:
        tensors = {"optimizer": None if tmp else optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "scaler": acc.scaler.state_dict() if acc.scaler is not None else None, "rng": rngs}
        record = {"step": state.step, "total_steps": total_steps, "stop_reason": stop_reason,
                  "world_size": acc.num_processes, "loop": state.to_dict(), "sampler": sampler.state_dict(),
                  "streams": {n: s.state_dict() for n, s in streams.items()}, "data": fingerprints,
                  "config": config}
        checkpoint.save_training(folder, model, tasks, record, tensors, extra={"step": state.step, "config": config},
                                 tmp=tmp, state_dict=weights)
        checkpoint.prune_training(out, keep_last)
    acc.wait_for_everyone()
    return folder


def restore_step_checkpoint(src: Path, saved: dict[str, Any], acc: Any, optimizer: Any, scheduler: Any,
                            sampler: Any, streams: dict[str, Any], model: Any = None,
                            sharding: Any = None) -> tuple[LoopState, list[dict[str, Any]]]:
    """Load everything but the weights (already in the model) and the RNG states, which are returned: the
    caller sets them last, after everything that draws random numbers (head initialisation) has run.
    A sharded checkpoint's optimizer state comes from its DCP shards, resharded to this run's processes."""
    tensors = checkpoint.load_training_tensors(src)
    if tensors.get("optimizer") is None:
        sharding.load_optimizer(src, model, optimizer)
    else:
        optimizer.load_state_dict(tensors["optimizer"])
    scheduler.load_state_dict(tensors["scheduler"])
    if acc.scaler is not None and tensors.get("scaler") is not None:
        acc.scaler.load_state_dict(tensors["scaler"])
    sampler.load_state_dict(saved["sampler"])
    for name, stream_state in saved["streams"].items():
        streams[name].load_state_dict(stream_state)
    state = LoopState.from_dict(saved["loop"])
    state.resumed_from.append(state.step)
    return state, tensors["rng"]
