"""One training loop for any list of tasks, on Accelerate (device, precision, DDP).

Read top to bottom: build tasks and data -> backbone -> heads -> features -> loop (a task sampler picks
which task's next batch to train on) -> evaluation -> best checkpoint -> metrics.json.
Every batch holds one task; in a distributed run each process takes its slice of the same global batch,
so the global batch size does not depend on the number of processes.

Resume is exact: a step checkpoint holds the weights, the optimizer/scheduler/scaler states, every RNG
state and the data position (task sampler + one (epoch, position) per task stream), so a run killed at
any point and resumed from its last checkpoint ends with the same weights and metrics as one that never
stopped. docs/training.md describes the options and the run folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from . import checkpoint
from .config import RunConfig, TaskEntry
from .data import LengthGroupedBatches, carve_dev_split, require_examples
from .distributed import auto_precision, check_engine, check_launch, describe, step_stats
from .errors import CheckpointError, ConfigError, NlpkitError, TrainingError
from .evaluation import evaluate, to_device
from .registry import get_task_class, import_plugin_module
from .task import Task


# ---------------------------------------------------------------------------------------------------
# Building blocks used by train() and by tests
# ---------------------------------------------------------------------------------------------------
def build_task(entry: TaskEntry) -> Task:
    cls = get_task_class(entry.type)
    return cls(entry.name, entry.options)


def read_splits(task: Task, entry: TaskEntry, splits: Sequence[str] = ("train", "dev")) -> dict[str, list[dict]]:
    """Read the entry's files (or the task's embedded data when none are given)."""
    files = dict(entry.data) or task.default_data()
    if not files:
        raise ConfigError(f"task {entry.name!r}: no data given (use --data train=PATH) and the task has no embedded default")
    unknown = sorted(set(files) - {"train", "dev", "test"})
    if unknown:
        raise ConfigError(f"task {entry.name!r}: unknown data split(s) {unknown}; use train, dev or test")
    data = {}
    for split in splits:
        if split in files:
            examples = read_any(task, files[split])
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
    return data


def read_any(task: Task, path: str) -> list[dict]:
    """A local file in the task's formats, or ``hub:DATASET:SPLIT`` through the task's read_hub."""
    from .data import is_hub, load_hub_split

    if is_hub(path):
        return task.read_hub(load_hub_split(path), path)
    return task.read(path)


def default_lr(spec: str) -> float:
    from .backbone import PRESETS

    return 1e-3 if spec in PRESETS else 1e-4


def no_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Biases and normalisation weights (LayerNorm, RMSNorm: 1-D, or named *norm*) are not decayed:
    shrinking them towards 0 changes what the layer computes instead of regularising it."""
    return param.ndim < 2 or "norm" in name.lower()


def precision_name(accelerator: Any) -> str:
    """Accelerate calls full precision "no"; logs and metrics say fp32, the name users pass."""
    return "fp32" if accelerator.mixed_precision == "no" else str(accelerator.mixed_precision)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and normalisation weights."""
    decay, plain = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (plain if no_decay(name, param) else decay).append(param)
    groups = [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0})
              if g["params"]]
    # fused: one kernel over all parameters, on CPU and GPU. MiniLM on 2 CPU cores trained 1.14x faster
    # (median samples/s) than with foreach at the same dev F1: docs/performance.md, measured with
    # benchmarks/train_throughput.py --ab nlpkit_optimizer=foreach
    for kind in ({"fused": True}, {"foreach": True}, {}):
        try:
            return torch.optim.AdamW(groups, lr=lr, **kind)
        except (TypeError, RuntimeError):
            continue
    raise AssertionError("unreachable: plain AdamW always constructs")


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup: int, total: int):
    """Linear warm-up over ``warmup`` steps, then linear/cosine decay to 0 at ``total`` (or constant).

    The factor of step k is applied to optimizer step k+1, so the first update already moves (lr/warmup)
    and the last one uses a small positive rate.
    """

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class TaskSampler:
    """Which task the next batch comes from. Seeded identically on every process.

    proportional: each pass interleaves every task's batches once, in random order (p ∝ batches);
    temperature: draws with p ∝ n^(1/T); round-robin: tasks in turn.
    """

    def __init__(self, names: Sequence[str], sizes: Sequence[int], kind: str, temperature: float, seed: int):
        self.names, self.sizes, self.kind = list(names), list(sizes), kind
        self.rng = random.Random(seed)
        weights = [n ** (1.0 / temperature) for n in sizes]
        self.probs = [w / sum(weights) for w in weights]
        self.queue: list[str] = []
        self.turn = 0

    def __next__(self) -> str:
        if len(self.names) == 1:
            return self.names[0]
        if self.kind == "round-robin":
            name = self.names[self.turn % len(self.names)]
            self.turn += 1
            return name
        if self.kind == "temperature":
            return self.rng.choices(self.names, weights=self.probs)[0]
        if not self.queue:
            self.queue = [n for n, size in zip(self.names, self.sizes) for _ in range(size)]
            self.rng.shuffle(self.queue)
        return self.queue.pop()

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
        self.sampler = LengthGroupedBatches([task.feature_length(f) for f in features], batch_size, seed, group=group)
        self.epoch, self.position = 0, 0
        self._batches: list[list[int]] | None = None

    def _current(self) -> list[list[int]]:
        if self._batches is None:
            # a global batch smaller than the number of processes would leave a process idle
            self._batches = [b for b in self.sampler.batches(self.epoch) if len(b) >= self.world]
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
        return idx

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._batches = state["epoch"], state["position"], None


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def selection_score(metrics: dict[str, dict[str, Any]], tasks: Sequence[Task], how: str = "mean") -> float:
    if how != "mean":
        tasks = [t for t in tasks if t.name == how]
    scores = [float(metrics[t.name][t.main_score]) for t in tasks if t.name in metrics]
    return sum(scores) / len(scores) if scores else float("nan")


def data_fingerprint(examples: Sequence[dict]) -> str:
    """Identifies the training data a checkpoint's data position refers to."""
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(json.dumps(ex, sort_keys=True, ensure_ascii=False, default=str).encode())
        digest.update(b"\n")
    return f"{len(examples)}:{digest.hexdigest()[:16]}"


def describe_batch(stream: "TaskStream", idx: Sequence[int], examples: Sequence[dict], path: str) -> str:
    """Where a batch came from, in words a user can act on: its position and its examples' lines."""
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
    return f"batch {stream.position} of epoch {stream.epoch + 1}: {kind} {shown} of {path}"


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
#: trainer keys that decide which batch comes next: changing them makes the saved data position meaningless
ORDER_KEYS = ("seed", "batch_size", "grad_accum", "sampler", "temperature", "group_by_length")
#: trainer keys that change nothing about the weights (resume stays exact when they change)
NEUTRAL_KEYS = {"resume", "progress", "tensorboard", "plots", "save_every", "save_minutes", "keep_last",
                "log_every", "eval_batch_size"}


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
            "or start over with --resume never (trainer.resume: never) or another --output-dir")

    old_cfg = state.get("config") or {}
    old_tasks = [(t["name"], t["type"]) for t in meta["tasks"]]
    new_tasks = [(t.name, t.type_name) for t in tasks]
    if old_tasks != new_tasks:
        fmt = lambda ts: ", ".join(f"{n} ({ty})" for n, ty in ts)  # noqa: E731
        refuse(f"it was trained on tasks [{fmt(old_tasks)}], this run has [{fmt(new_tasks)}]")
    for task, saved in zip(tasks, meta["tasks"]):
        old_opts, new_opts = saved.get("options", {}), _plain(task.options_dict())
        for key in sorted(set(old_opts) | set(new_opts)):
            if old_opts.get(key) != new_opts.get(key):
                refuse(f"tasks.{task.name}.options.{key} was {old_opts.get(key)!r}, now {new_opts.get(key)!r}")
        if fingerprints[task.name] != (state.get("data") or {}).get(task.name):
            refuse(f"the training data of task {task.name!r} is not the data the checkpoint was trained on "
                   f"({state.get('data', {}).get(task.name)} examples:hash then, {fingerprints[task.name]} now)")
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
    old_tc, new_tc = old_cfg.get("trainer") or {}, config.to_dict()["trainer"]
    for key in ORDER_KEYS:
        if old_tc.get(key) != new_tc.get(key):
            refuse(f"trainer.{key} was {old_tc.get(key)!r}, now {new_tc.get(key)!r} (it decides the data order)")
    warnings = kernel_changes + [f"trainer.{key} was {old_tc.get(key)!r}, now {new_tc.get(key)!r}"
                for key in new_tc if key not in NEUTRAL_KEYS and key not in ORDER_KEYS and old_tc.get(key) != new_tc[key]]
    old_weights = {t.get("name") or t.get("type"): t.get("weight", 1.0) for t in old_cfg.get("tasks") or []}
    warnings += [f"tasks.{e.name}.weight was {old_weights.get(e.name)!r}, now {e.weight!r}"
                 for e in config.tasks if old_weights.get(e.name, e.weight) != e.weight]
    if state.get("world_size", world) != world:
        warnings.append(f"{state.get('world_size')} processes then, {world} now (dropout draws differ)")
    return warnings


def run_dir_of(ckpt: Path) -> Path:
    """The run folder that holds ``<run>/checkpoints/step-N``."""
    if ckpt.parent.name == checkpoint.CHECKPOINTS_DIR:
        return ckpt.parent.parent
    raise ConfigError(f"trainer.resume: {ckpt} is not inside a run folder's {checkpoint.CHECKPOINTS_DIR}/; "
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LoopState":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict[str, Any]


# ---------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------
def train(config: RunConfig | dict) -> TrainResult:
    """Train the configured tasks; returns the run folder and the final metrics."""
    if isinstance(config, dict):
        config = RunConfig.from_dict(config)
    return Trainer(config).run()


class Trainer:
    def __init__(self, config: RunConfig):
        self.config = config
        self.tc = config.trainer
        self.notes: list[str] = []  # said once the log exists

    # -- set-up ---------------------------------------------------------------------------------------
    def _accelerator(self):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        check_launch()
        precision = self.tc.precision
        cuda = torch.cuda.is_available() and not self.tc.cpu
        if precision == "auto":
            precision = auto_precision(self.tc.cpu)
        elif precision == "fp32":
            precision = "no"
        elif precision == "fp16" and not cuda:
            # Accelerate accepts fp16 on CPU but autocast then does nothing: say so instead of pretending
            self.notes.append("trainer.precision fp16 needs a CUDA GPU; training in fp32 (bf16 works on CPU)")
            precision = "no"
        elif precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
            self.notes.append("trainer.precision bf16 is not supported by this GPU; using fp16")
            precision = "fp16"
        handlers = [DistributedDataParallelKwargs(find_unused_parameters=len(self.config.tasks) > 1)]
        # Accelerate keeps its settings in a process-wide singleton and refuses a second Accelerator with
        # another precision: forget them (the process group, in PartialState, stays) so that one Python
        # process can train several runs one after the other.
        try:
            from accelerate.state import AcceleratorState

            AcceleratorState._reset_state(reset_partial_state=False)
        except (ImportError, AttributeError):
            pass
        # On a machine without GPUs, cpu=True is what lets Accelerate start gloo under torchrun.
        cpu = self.tc.cpu or not torch.cuda.is_available()
        return Accelerator(mixed_precision=precision, cpu=cpu, kwargs_handlers=handlers)

    def _locate(self, acc) -> tuple[Path, Path | None]:
        """(run folder, checkpoint to resume from), decided on the main process and shared."""
        from accelerate.utils import broadcast_object_list

        cfg, tc = self.config, self.tc
        found: list[Any] = [None, None, None]
        if acc.is_main_process:
            try:
                found[:2] = self._find(cfg, tc)
            except NlpkitError as exc:
                found[2] = exc
            except Exception as exc:  # noqa: BLE001 - every process must hear about it, or the others hang
                found[2] = CheckpointError(f"{type(exc).__name__}: {exc}")
        if acc.num_processes > 1:
            broadcast_object_list(found)
        if found[2] is not None:
            raise found[2]
        return Path(found[0]), (Path(found[1]) if found[1] else None)

    def _find(self, cfg: RunConfig, tc) -> tuple[str, str | None]:
        warn = lambda msg: print(f"warning: {msg}", flush=True)  # noqa: E731
        if tc.resume not in ("auto", "never"):
            src = checkpoint.latest_training(tc.resume, warn)
            if src is None:
                raise ConfigError(f"trainer.resume: no complete resumable checkpoint in {tc.resume} "
                                  f"(looked for {checkpoint.CHECKPOINTS_DIR}/step-N folders)")
            out = Path(cfg.output_dir) if cfg.output_dir else run_dir_of(src)
            return str(out), str(src)
        if cfg.output_dir:
            out = Path(cfg.output_dir)
        else:
            names = "+".join(t.name for t in cfg.tasks)
            out = Path("runs") / f"{names}-{time.strftime('%Y%m%d-%H%M%S')}"
        src = checkpoint.latest_training(out, warn) if tc.resume == "auto" and out.is_dir() else None
        return str(out), (str(src) if src else None)

    def _prepare_folder(self, out: Path, src: Path | None, log_note: Callable[[str], None]) -> None:
        """Main process only: clean what a killed save left, and start over or take over a run."""
        out.mkdir(parents=True, exist_ok=True)
        for partial in checkpoint.clean_partial(out):
            log_note(f"removed {partial}, a save that did not finish")
        if src is None and checkpoint.list_training_checkpoints(out):
            shutil.rmtree(out / checkpoint.CHECKPOINTS_DIR)
            why = "trainer.resume is never" if self.tc.resume == "never" else "none of them is complete"
            log_note(f"starting over in {out}: removed the previous run's {checkpoint.CHECKPOINTS_DIR}/ ({why})")
        if src is not None and src.parent.name == checkpoint.CHECKPOINTS_DIR:
            src_run = src.parent.parent
            if src_run.resolve() != out.resolve():  # resuming another run's checkpoint into a new folder
                for name in ("best", "log.jsonl"):
                    if (src_run / name).exists() and not (out / name).exists():
                        (shutil.copytree if (src_run / name).is_dir() else shutil.copy2)(src_run / name, out / name)
        (out / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")

    def _backbone(self, acc, out: Path, texts_fn, src: Path | None):
        from transformers import AutoTokenizer

        from .backbone import PRESETS, Backbone, train_tokenizer

        spec = self.config.backbone.spec
        init = self.config.init_from
        if init and src is None:  # the starting checkpoint's architecture, tokenizer and (below) weights
            folder = checkpoint.resolve(init)
            backbone = Backbone.from_saved(folder, spec)
            checkpoint.load_prefixed(backbone, folder, "backbone.")
            return backbone
        if init or spec not in PRESETS and src is not None and (src / "backbone").is_dir():
            return Backbone.from_saved(src, spec)
        if spec not in PRESETS:
            return Backbone.from_pretrained(spec)
        # Learned from data before the model exists: built once on the main process and shared,
        # so every process has the same vocabulary. A resumed run reuses the run's tokenizer.
        tok_dir = out / "tokenizer-scratch"
        if acc.is_main_process:
            if src is not None and not (tok_dir / "tokenizer.json").is_file():
                checkpoint.atomic_folder(tok_dir, lambda tmp: shutil.copytree(src / "tokenizer", tmp, dirs_exist_ok=True))
            if src is None:
                preset_vocab = PRESETS[spec]["vocab_size"]
                tokenizer = train_tokenizer(texts_fn(), self.config.backbone.vocab_size or preset_vocab)
                checkpoint.atomic_folder(tok_dir, tokenizer.save_pretrained)
        acc.wait_for_everyone()
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        preset = {k: v for k, v in PRESETS[spec].items() if k != "vocab_size"}
        return Backbone.from_scratch(preset, tokenizer, spec)

    # -- run -----------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        from accelerate.utils import set_seed

        cfg, tc = self.config, self.tc
        for module in cfg.plugins:
            import_plugin_module(module)
        if cfg.init_from:  # the backbone is the checkpoint's, whatever backbone.spec says
            cfg.backbone.spec = checkpoint.read_meta(cfg.init_from)["backbone"]["spec"]
        acc = self._accelerator()
        check_engine(acc, tc.batch_size, tc.grad_accum, tc.max_grad_norm)
        main = acc.is_main_process
        set_seed(tc.seed)
        out, src = self._locate(acc)
        saved = checkpoint.read_training_state(src) if src else None
        log = RunLog(out, main, start=False)  # prints now; the file opens once the folder is settled

        # tasks and data
        tasks = [build_task(e) for e in cfg.tasks]
        data, paths = {}, {}
        for task, entry in zip(tasks, cfg.tasks):
            data[task.name] = read_splits(task, entry)
            paths[task.name] = dict(entry.data) or task.default_data()
            task.fit(data[task.name]["train"])
            if "dev" in data[task.name]:
                task.check(data[task.name]["dev"], paths[task.name].get("dev") or paths[task.name].get("train", "dev"))
        fingerprints = {t.name: data_fingerprint(data[t.name]["train"]) for t in tasks}
        changed: list[str] = []
        if saved:  # refuse before touching the run folder
            changed = check_resume(src, saved, checkpoint.read_meta(src), cfg, tasks, fingerprints, acc.num_processes)
        if main:
            self._prepare_folder(out, src, self.notes.append)
        acc.wait_for_everyone()
        log.start(resume_step=saved["step"] if saved else None)
        for note in self.notes:
            log.info(note)
        if saved:
            log.event({"resumed_from": saved["step"], "checkpoint": str(src)})
            log.info(f"resuming from {src} (step {saved['step']})")
            for what in changed:
                log.info(f"warning: {what}: the resumed run will not match an uninterrupted one")
        log.info("tasks: " + ", ".join(f"{t.name} ({t.type_name}: {len(data[t.name]['train'])} train, "
                                         f"{len(data[t.name].get('dev', []))} dev)" for t in tasks))

        # backbone, heads, model
        def texts():
            for t in tasks:
                yield from t.texts(data[t.name]["train"])

        backbone = self._backbone(acc, out, texts, src)
        for t in tasks:
            if backbone.kind not in t.backbone_kinds:
                raise ConfigError(
                    f"task {t.name!r} ({t.type_name}) needs a backbone of kind {' or '.join(t.backbone_kinds)}, "
                    f"but {backbone.spec!r} is {backbone.kind}: choose an encoder or encoder-decoder backbone")
        if cfg.backbone.dropout is not None:
            backbone.set_dropout(cfg.backbone.dropout)
        backbone.set_attention(cfg.backbone.attention)
        extra = [tok for t in tasks for tok in t.special_tokens()]
        backbone.add_special_tokens(extra)
        from .model import MultiTaskModel

        heads = {}
        for t in tasks:
            t.setup(backbone)
            heads[t.name] = t.build_head(backbone)
        model = MultiTaskModel(backbone, heads)
        if saved:
            checkpoint.load_weights(model, src)
        elif cfg.init_from:
            reused = checkpoint.load_matching_heads(model, cfg.init_from, tasks)
            new = [t.name for t in tasks if t.name not in reused]
            log.info(f"initialised from {cfg.init_from}: backbone" + (f", heads {', '.join(reused)}" if reused else "")
                     + (f"; new heads: {', '.join(new)}" if new else ""))
        log.info(f"backbone: {backbone.spec} ({backbone.describe()['parameters'] / 1e6:.1f}M parameters, "
                 f"{backbone.kind}); device {acc.device}; processes {acc.num_processes}; precision {precision_name(acc)}")
        if acc.num_processes > 1:
            log.info(describe(acc, tc.batch_size))

        # features, data order
        features = {t.name: {s: t.encode(ex) for s, ex in data[t.name].items()} for t in tasks}
        streams = {t.name: TaskStream(t, features[t.name]["train"], tc.batch_size, tc.seed, tc.group_by_length,
                                      acc.num_processes) for t in tasks}
        batches_per_epoch = sum(len(s) for s in streams.values())
        steps_per_epoch = max(1, batches_per_epoch // tc.grad_accum)
        total_steps = tc.max_steps or max(1, math.ceil(tc.epochs * steps_per_epoch))
        sampler = TaskSampler([t.name for t in tasks], [len(streams[t.name]) for t in tasks], tc.sampler,
                              tc.temperature, tc.seed)
        weights = {e.name: e.weight for e in cfg.tasks}

        lr = tc.lr or default_lr(cfg.backbone.spec)
        optimizer = make_optimizer(model, lr, tc.weight_decay)
        scheduler = make_scheduler(optimizer, tc.scheduler, int(tc.warmup_ratio * total_steps), total_steps)
        model, optimizer = acc.prepare(model, optimizer)
        raw_model = acc.unwrap_model(model)
        if tc.compile:
            model = torch.compile(model)

        state = LoopState(running={t.name: [] for t in tasks})
        if saved:
            tensors = checkpoint.load_training_tensors(src)
            optimizer.load_state_dict(tensors["optimizer"])
            scheduler.load_state_dict(tensors["scheduler"])
            if acc.scaler is not None and tensors.get("scaler") is not None:
                acc.scaler.load_state_dict(tensors["scaler"])
            sampler.load_state_dict(saved["sampler"])
            for name, stream_state in saved["streams"].items():
                streams[name].load_state_dict(stream_state)
            state = LoopState.from_dict(saved["loop"])
            state.resumed_from.append(state.step)
            if changed:
                self._adopt_newer_best(out, state, log)
        log.info(f"training {total_steps} steps ({steps_per_epoch} per epoch), batch {tc.batch_size} x "
                 f"{tc.grad_accum} accumulation, lr {lr:g}, sampler {tc.sampler}")

        eval_every = tc.eval_every or steps_per_epoch
        save_every = tc.save_every or eval_every
        eval_bs = tc.eval_batch_size or tc.batch_size * 2
        # purge_step hides events of steps after ours that an earlier session wrote in this folder
        board = Board(out, main and tc.tensorboard, log, purge_step=state.step + 1)
        session_start, wall_before, start_step = time.time(), state.wall_time, state.step
        last_save = time.time()
        bar = None
        if main and tc.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True)
        log.bar = bar

        def save_training(stop_reason: str | None = None) -> None:
            state.wall_time = wall_before + time.time() - session_start
            self._save_training(acc, out, raw_model, tasks, optimizer, scheduler, sampler, streams, state,
                                fingerprints, total_steps, stop_reason, log)

        def finish(stop_reason: str, error: str | None = None) -> dict[str, Any]:
            state.wall_time = wall_before + time.time() - session_start
            if bar is not None:
                bar.close()
                log.bar = None
            result = self._metrics(state, stop_reason, error, acc)
            if main:
                (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
            return result

        stop = self._finished(state, total_steps)
        if stop and saved:
            log.info(f"the run is already complete at step {state.step} ({stop}); nothing to train "
                     "(to train again: --resume never, or another --output-dir)")
        if saved:
            # last: everything above may draw random numbers (head initialisation); the loop must not notice
            rngs = tensors["rng"]
            set_rng_state(rngs[acc.process_index] if acc.process_index < len(rngs) else rngs[0])
        window: dict[str, int] = {}  # samples per task since the last log line (per-task throughput)
        window_start = state.train_time
        model.train()
        try:
            while stop is None:
                t0 = time.perf_counter()
                step_losses: list[tuple[str, float]] = []
                step_batches: list[tuple[str, str]] = []
                samples = tokens = 0
                bad: tuple[str, str, str] | None = None
                for micro in range(tc.grad_accum):
                    name = next(sampler)
                    stream = streams[name]
                    idx = stream.next_indices()
                    mine = idx[acc.process_index:: acc.num_processes]
                    task = stream.task
                    batch = to_device(task.collate([stream.features[i] for i in mine]), acc.device)
                    where = describe_batch(stream, idx, data[name]["train"], paths[name].get("train", "train data"))
                    sync = micro == tc.grad_accum - 1 or acc.num_processes == 1
                    with contextlib.nullcontext() if sync else acc.no_sync(model):
                        with acc.autocast():
                            loss = model(name, batch)["loss"]
                        # one all-reduce: same skip decision everywhere, loss and tokens of the global batch
                        nonfinite, value, batch_tokens = step_stats(acc, loss, batch)
                        if not nonfinite:
                            acc.backward(loss * weights[name] / tc.grad_accum)
                    if nonfinite:
                        bad = (name, where, f"loss {value}")
                        break
                    step_losses.append((name, value))
                    window[name] = window.get(name, 0) + len(idx)
                    step_batches.append((name, where))
                    samples += len(idx)
                    tokens += batch_tokens
                if bad is None and tc.max_grad_norm:
                    norm = float(acc.clip_grad_norm_(model.parameters(), tc.max_grad_norm))
                    state.last_grad_norm = norm if math.isfinite(norm) else None
                    if not math.isfinite(norm) and acc.scaler is None:  # fp16's scaler handles its own overflows
                        bad = (step_batches[-1][0], "; ".join(d for _, d in step_batches), f"gradient norm {norm}")
                if bad is not None:
                    optimizer.zero_grad(set_to_none=True)
                    stop = self._skip(state, bad, log, board, out)
                    if stop is not None:
                        finish(stop, error=stop)
                        raise TrainingError(stop)
                    continue
                state.bad_in_row = 0
                lr_used = scheduler.get_last_lr()[0]  # the rate of this update (the scheduler moves on below)
                optimizer.step()
                if not acc.optimizer_step_was_skipped:  # fp16 overflow: the scaler skipped this update
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                step = state.step
                state.train_time += time.perf_counter() - t0
                state.n_samples += samples
                state.n_tokens += tokens
                for name, value in step_losses:
                    state.running.setdefault(name, []).append(value)
                if bar is not None:
                    bar.update(1)
                if step % tc.log_every == 0 or step == total_steps:
                    window_time = max(state.train_time - window_start, 1e-9)
                    record = {"step": step, "epoch": step / steps_per_epoch, "lr": lr_used,
                              **{f"loss/{n}": sum(v) / len(v) for n, v in state.running.items() if v},
                              "samples_per_s": state.n_samples / max(state.train_time, 1e-9),
                              **({f"samples_per_s/{n}": c / window_time for n, c in window.items()}
                                 if len(tasks) > 1 else {})}
                    window, window_start = {}, state.train_time
                    if state.last_grad_norm is not None:
                        record["grad_norm"] = state.last_grad_norm
                    log.event(record)
                    if bar is None:  # no bar (a log file): a line per log step instead
                        log.info(f"step {step}/{total_steps}  loss {_mean_all(state.running):.4f}  lr {lr_used:.2e}  "
                                 f"{record['samples_per_s']:.1f} samples/s")
                    board.scalars(step, {k: v for k, v in record.items() if k not in ("step",)})
                    if bar is not None:
                        bar.set_postfix(loss=f"{_mean_all(state.running):.4f}", lr=f"{record['lr']:.2e}",
                                        sps=f"{record['samples_per_s']:.1f}")
                    state.running = {t.name: [] for t in tasks}

                if step % eval_every == 0 or step == total_steps:
                    self._evaluate_and_select(tasks, data, features, raw_model, eval_bs, acc, state, out, log, board,
                                              last=step == total_steps)
                stop = self._finished(state, total_steps)
                if stop is not None:
                    if stop != "budget":
                        log.info(f"step {step}: {stop}")
                    break
                due = step % save_every == 0
                if not due and tc.save_minutes and step % tc.log_every == 0:
                    due = self._agree(acc, time.time() - last_save > tc.save_minutes * 60)
                if due:
                    save_training()
                    last_save = time.time()
            if state.step > start_step or not saved:
                save_training(stop)
            result = finish(stop)
        except BaseException:
            log.close()
            raise
        finally:
            if bar is not None:
                bar.close()
            board.close()
        if main:
            self._plots(out, tasks, log)
            for t in tasks:
                if t.name in result["tasks"]:
                    log.info(f"dev {t.name}: " + ", ".join(f"{k} {v:.4f}" for k, v in result["tasks"][t.name].items()
                                                         if isinstance(v, (int, float))))
            if state.skipped:
                log.info(f"{state.skipped} step(s) skipped for non-finite losses (see metrics.json: skipped_batches)")
            log.info(f"saved to {out} (best model in {out / 'best'}, step {state.best_step}); "
                     f"wall time {result['wall_time_s']:.1f}s")
        log.close()
        acc.wait_for_everyone()
        return TrainResult(out, result)

    # -- pieces of the loop --------------------------------------------------------------------------
    def _finished(self, state: LoopState, total_steps: int) -> str | None:
        if state.step >= total_steps:
            return "budget"
        if self.tc.patience and state.bad_evals >= self.tc.patience:
            return f"early stopping: no improvement in {state.bad_evals} evaluations"
        return None

    def _skip(self, state: LoopState, bad: tuple[str, str, str], log: "RunLog", board: "Board", out: Path) -> str | None:
        """Count a skipped step; returns the stop message when too many came in a row."""
        name, where, what = bad
        state.skipped += 1
        state.bad_in_row += 1
        attempted = state.step + 1
        record = {"step": attempted, "task": name, "batch": where, "value": what}
        if len(state.skipped_batches) < 100:
            state.skipped_batches.append(record)
        log.event({"step": attempted, "skipped": record})
        log.info(f"step {attempted}: non-finite {what} in task {name!r} ({where}); step skipped "
                 f"({state.bad_in_row} in a row, {state.skipped} in all)")
        if state.bad_in_row < self.tc.max_bad_steps:
            return None
        latest = checkpoint.latest_training(out)
        resume = f"; the last checkpoint is {latest} (step {checkpoint.step_of(latest)})" if latest else ""
        kind = "losses" if what.startswith("loss") else "losses or gradients"
        return (f"training stopped at step {attempted}: {state.bad_in_row} non-finite {kind} in a row "
                f"(trainer.max_bad_steps is {self.tc.max_bad_steps}); the last: {what} in task {name!r}, {where}. "
                f"Lower the learning rate (trainer.lr), check that batch's data, or raise trainer.max_bad_steps{resume}")

    def _evaluate_and_select(self, tasks, data, features, raw_model, eval_bs, acc, state: LoopState, out: Path,
                             log: "RunLog", board: "Board", last: bool) -> None:
        step = state.step
        metrics = self._evaluate(tasks, data, features, raw_model, eval_bs, acc)
        if metrics:
            score = selection_score(metrics, tasks, self.config.selection)
            state.history.append({"step": step, "score": score, "metrics": metrics})
            log.event({"step": step, "eval": metrics, "selection_score": score})
            board.scalars(step, {"dev/selection_score": score,
                                 **{f"dev/{n}/{k}": v for n, m in metrics.items() for k, v in m.items()
                                    if isinstance(v, (int, float)) and not isinstance(v, bool)}})
            summary = "  ".join(f"{n}: {t.main_score} {metrics[n][t.main_score]:.4f}"
                                for t in tasks for n in [t.name] if n in metrics)
            log.info(f"step {step}: {summary}")
            best = state.best_score
            improved = best is None or score > best or (math.isnan(best) and not math.isnan(score))
            if improved:
                state.best_score, state.best_step, state.best_metrics, state.bad_evals = score, step, metrics, 0
                if acc.is_main_process:
                    checkpoint.save(out / "best", raw_model, tasks, {"step": step, "selection_score": score,
                                                                     "metrics": metrics, "config": self.config.to_dict()})
            else:
                state.bad_evals += 1
        elif last and acc.is_main_process:  # no dev data: the best model is the last one
            checkpoint.save(out / "best", raw_model, tasks, {"step": step, "config": self.config.to_dict()})
        acc.wait_for_everyone()

    def _evaluate(self, tasks, data, features, model, batch_size, acc) -> dict[str, dict[str, Any]]:
        metrics = {}
        for t in tasks:
            if "dev" not in data[t.name]:
                continue
            _, scores = evaluate(t, model, data[t.name]["dev"], batch_size, acc, features=features[t.name]["dev"])
            metrics[t.name] = scores
        return metrics

    def _agree(self, acc, flag: bool) -> bool:
        """The main process's decision, on every process (clocks differ)."""
        if acc.num_processes == 1:
            return flag
        from accelerate.utils import broadcast_object_list

        return bool(broadcast_object_list([flag])[0])

    def _save_training(self, acc, out: Path, raw_model, tasks, optimizer, scheduler, sampler, streams,
                       state: LoopState, fingerprints, total_steps: int, stop_reason: str | None, log: "RunLog") -> None:
        rngs = [rng_state()]
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            rngs = gather_object(rngs)
        if acc.is_main_process:
            tensors = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                       "scaler": acc.scaler.state_dict() if acc.scaler is not None else None, "rng": rngs}
            record = {"step": state.step, "total_steps": total_steps, "stop_reason": stop_reason,
                      "world_size": acc.num_processes, "loop": state.to_dict(), "sampler": sampler.state_dict(),
                      "streams": {n: s.state_dict() for n, s in streams.items()}, "data": fingerprints,
                      "config": self.config.to_dict()}
            folder = out / checkpoint.CHECKPOINTS_DIR / f"step-{state.step}"
            checkpoint.save_training(folder, raw_model, tasks, record, tensors,
                                     extra={"step": state.step, "config": self.config.to_dict()})
            checkpoint.prune_training(out, self.tc.keep_last)
            log.event({"step": state.step, "checkpoint": str(folder)})
        acc.wait_for_everyone()

    def _adopt_newer_best(self, out: Path, state: LoopState, log: "RunLog") -> None:
        """After a resume that is not exact, a best/ saved after the checkpoint will not be re-created by
        the replay: take it as the best so far so best/ and metrics.json keep telling the same story."""
        try:
            meta = checkpoint.read_meta(out / "best")
        except CheckpointError:
            return
        step, score = meta.get("step"), meta.get("selection_score")
        if isinstance(step, int) and step > state.step and isinstance(score, (int, float)):
            log.info(f"warning: best/ holds step {step} (selection score {score:.4f}), saved after the checkpoint; "
                     "it stays the best model unless the resumed run beats it")
            state.best_score, state.best_step, state.best_metrics = float(score), step, meta.get("metrics", {})

    def _metrics(self, state: LoopState, stop_reason: str, error: str | None, acc) -> dict[str, Any]:
        result = {
            "tasks": state.best_metrics,
            "best_step": state.best_step,
            "selection_score": state.best_score if state.best_step is not None else None,
            "steps": state.step,
            "stop_reason": stop_reason,
            "skipped_steps": state.skipped,
            "skipped_batches": state.skipped_batches,
            "train_samples_per_s": state.n_samples / max(state.train_time, 1e-9),
            "train_tokens_per_s": state.n_tokens / max(state.train_time, 1e-9),
            "train_samples": state.n_samples,
            "train_tokens": state.n_tokens,
            "wall_time_s": state.wall_time,
            "resumed_from": state.resumed_from,
            "processes": acc.num_processes,
            "device": str(acc.device),
            "precision": precision_name(acc),
            **peak_memory_mb(acc.device),
        }
        if error:
            result["error"] = error
        return result

    def _plots(self, out: Path, tasks: Sequence[Task], log: "RunLog") -> None:
        if not self.tc.plots:
            return
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            log.info("learning curves: matplotlib is not installed, no PNGs (pip install 'nlpkit[viz]')")
            return
        from .curves import plot_run

        try:
            written = plot_run(out / "log.jsonl", out / "curves", {t.name: t.main_score for t in tasks})
        except Exception as exc:  # a plot must never cost the user a finished run
            log.info(f"learning curves not written: {type(exc).__name__}: {exc}")
            return
        if written:
            log.info(f"learning curves: {', '.join(str(p) for p in written.values())}")


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


class Board:
    """TensorBoard event files in <run>/tensorboard, when the tensorboard package is installed."""

    def __init__(self, out: Path, enabled: bool, log: RunLog, purge_step: int | None = None):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("TensorBoard: the tensorboard package is not installed, no event files (pip install 'nlpkit[viz]')")
            return
        # purge_step drops the events a killed run wrote after its last checkpoint (they are replayed)
        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=purge_step)

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(key if "/" in key else f"train/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
