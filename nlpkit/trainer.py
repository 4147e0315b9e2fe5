"""One training loop for any list of tasks, on Accelerate (device, precision, DDP).

Read top to bottom: build tasks and data -> backbone -> heads -> features -> loop (a task sampler picks
which task's next batch to train on) -> evaluation -> best checkpoint -> metrics.json.
Every batch holds one task; in a distributed run each process takes its slice of the same global batch,
so the global batch size does not depend on the number of processes.
"""
from __future__ import annotations

import json
import math
import os
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from . import checkpoint
from .config import RunConfig, TaskEntry
from .data import LengthGroupedBatches, require_examples
from .errors import ConfigError, DataError, NlpkitError, TrainingError
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
            examples = task.read(files[split])
            require_examples(examples, files[split])
            data[split] = examples
    if "train" in splits and "train" not in data:
        raise ConfigError(f"task {entry.name!r}: no training data (use --data train=PATH)")
    return data


def default_lr(spec: str) -> float:
    from .backbone import PRESETS

    return 1e-3 if spec in PRESETS else 1e-4


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and normalisation weights."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel over all parameters, on CPU and GPU; on 2 CPU cores it took MiniLM's optimizer
    # step from ~250 ms (foreach) to ~25 ms (benchmarks/train_throughput.py --ab nlpkit_optimizer=foreach)
    for kind in ({"fused": True}, {"foreach": True}, {}):
        try:
            return torch.optim.AdamW(groups, lr=lr, **kind)
        except (TypeError, RuntimeError):
            continue
    raise AssertionError("unreachable: plain AdamW always constructs")


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup: int, total: int):
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


def count_tokens(batch: dict[str, Any]) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum()) if isinstance(mask, torch.Tensor) else 0


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def selection_score(metrics: dict[str, dict[str, Any]], tasks: Sequence[Task]) -> float:
    scores = [float(metrics[t.name][t.main_score]) for t in tasks if t.name in metrics]
    return sum(scores) / len(scores) if scores else float("nan")


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

    # -- set-up ---------------------------------------------------------------------------------------
    def _accelerator(self):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        precision = self.tc.precision
        if precision == "auto":
            precision = "no"
            if torch.cuda.is_available() and not self.tc.cpu:
                precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif precision == "fp32":
            precision = "no"
        handlers = [DistributedDataParallelKwargs(find_unused_parameters=len(self.config.tasks) > 1)]
        # On a machine without GPUs, cpu=True is what lets Accelerate start gloo under torchrun.
        cpu = self.tc.cpu or not torch.cuda.is_available()
        return Accelerator(mixed_precision=precision, cpu=cpu, kwargs_handlers=handlers)

    def _output_dir(self) -> Path:
        if self.config.output_dir:
            return Path(self.config.output_dir)
        names = "+".join(t.name for t in self.config.tasks)
        return Path("runs") / f"{names}-{time.strftime('%Y%m%d-%H%M%S')}"

    def _backbone(self, acc, out: Path, texts_fn):
        from transformers import AutoTokenizer

        from .backbone import PRESETS, Backbone, train_tokenizer

        spec = self.config.backbone.spec
        if spec not in PRESETS:
            return Backbone.from_pretrained(spec)
        # Learned from data before the model exists: built once on the main process and shared,
        # so every process has the same vocabulary.
        tok_dir = out / "tokenizer-scratch"
        if acc.is_main_process:
            preset_vocab = PRESETS[spec]["vocab_size"]
            tokenizer = train_tokenizer(texts_fn(), self.config.backbone.vocab_size or preset_vocab)
            tokenizer.save_pretrained(tok_dir)
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
        acc = self._accelerator()
        main = acc.is_main_process
        set_seed(tc.seed)
        out = self._output_dir()
        if main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        log = RunLog(out, main)

        # tasks and data
        tasks = [build_task(e) for e in cfg.tasks]
        data = {}
        for task, entry in zip(tasks, cfg.tasks):
            data[task.name] = read_splits(task, entry)
            task.fit(data[task.name]["train"])
            if "dev" in data[task.name]:
                task.check(data[task.name]["dev"], (entry.data or task.default_data()).get("dev", "dev"))
        log.info(f"tasks: " + ", ".join(f"{t.name} ({t.type_name}: {len(data[t.name]['train'])} train, "
                                         f"{len(data[t.name].get('dev', []))} dev)" for t in tasks))

        # backbone, heads, model
        def texts():
            for t in tasks:
                yield from t.texts(data[t.name]["train"])

        backbone = self._backbone(acc, out, texts)
        extra = [tok for t in tasks for tok in t.special_tokens()]
        backbone.add_special_tokens(extra)
        if any(t.generative for t in tasks) and backbone.kind != "encoder-decoder":
            pass  # generative plugins build their own decoder head on an encoder backbone
        from .model import MultiTaskModel

        heads = {}
        for t in tasks:
            t.setup(backbone)
            heads[t.name] = t.build_head(backbone)
        model = MultiTaskModel(backbone, heads)
        log.info(f"backbone: {backbone.spec} ({backbone.describe()['parameters'] / 1e6:.1f}M parameters, "
                 f"{backbone.kind}); device {acc.device}; processes {acc.num_processes}; precision {acc.mixed_precision}")

        # features
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
        log.info(f"training {total_steps} steps ({steps_per_epoch} per epoch), batch {tc.batch_size} x "
                 f"{tc.grad_accum} accumulation, lr {lr:g}, sampler {tc.sampler}")

        eval_every = tc.eval_every or steps_per_epoch
        eval_bs = tc.eval_batch_size or tc.batch_size * 2
        best_score, best_step, bad_evals, history = -math.inf, None, 0, []
        n_samples = n_tokens = 0
        train_time = 0.0
        bad_in_row = skipped = 0
        start = time.time()
        bar = None
        if main and tc.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_steps, desc="train", unit="step", dynamic_ncols=True)
        running: dict[str, list[float]] = {t.name: [] for t in tasks}
        model.train()
        step = 0
        stop_reason = "budget"
        while step < total_steps:
            t0 = time.perf_counter()
            step_losses: list[tuple[str, float]] = []
            finite = True
            for micro in range(tc.grad_accum):
                name = next(sampler)
                stream = streams[name]
                idx = stream.next_indices()
                mine = idx[acc.process_index :: acc.num_processes]
                task = stream.task
                batch = to_device(task.collate([stream.features[i] for i in mine]), acc.device)
                sync = micro == tc.grad_accum - 1
                ctx = acc.no_sync(model) if not sync and acc.num_processes > 1 else _null()
                with ctx, acc.autocast():
                    loss = model(name, batch)["loss"]
                bad = not bool(torch.isfinite(loss.detach()))
                if acc.num_processes > 1:
                    flag = acc.reduce(torch.tensor([float(bad)], device=acc.device), "sum")
                    bad = bool(flag.item() > 0)
                if bad:
                    finite = False
                    bad_at = (name, mine)
                    break
                with ctx:
                    acc.backward(loss * weights[name] / tc.grad_accum)
                step_losses.append((name, float(loss.detach())))
                n_samples += len(idx)
                n_tokens += count_tokens(batch) * acc.num_processes
            if not finite:
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                bad_in_row += 1
                log.info(f"step {step + 1}: non-finite loss in task {bad_at[0]!r} (batch of features "
                         f"{bad_at[1][:8]}{'...' if len(bad_at[1]) > 8 else ''}); step skipped")
                if bad_in_row >= tc.max_bad_steps:
                    raise TrainingError(
                        f"training stopped at step {step + 1}: {bad_in_row} non-finite losses in a row "
                        f"(last in task {bad_at[0]!r}, features {bad_at[1][:8]}); lower the learning rate "
                        "or check that batch's data")
                continue
            bad_in_row = 0
            if tc.max_grad_norm:
                acc.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            train_time += time.perf_counter() - t0
            for name, value in step_losses:
                running[name].append(value)
            if bar is not None:
                bar.update(1)
                if step % tc.log_every == 0 or step == total_steps:
                    bar.set_postfix(loss=f"{_mean_all(running):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                                    sps=f"{n_samples / max(train_time, 1e-9):.1f}")
            if step % tc.log_every == 0 or step == total_steps:
                if bar is None:
                    log.info(f"step {step}/{total_steps}  loss {_mean_all(running):.4f}  "
                             f"lr {scheduler.get_last_lr()[0]:.2e}  {n_samples / max(train_time, 1e-9):.1f} samples/s")
                log.event({"step": step, "epoch": step / steps_per_epoch, "lr": scheduler.get_last_lr()[0],
                           **{f"loss/{n}": sum(v) / len(v) for n, v in running.items() if v},
                           "samples_per_s": n_samples / max(train_time, 1e-9)})
                running = {t.name: [] for t in tasks}

            if step % eval_every == 0 or step == total_steps:
                metrics = self._evaluate(tasks, data, features, raw_model, eval_bs, acc)
                if metrics:
                    score = selection_score(metrics, tasks)
                    history.append({"step": step, "score": score, "metrics": metrics})
                    log.event({"step": step, "eval": metrics, "selection_score": score})
                    summary = "  ".join(f"{n}: {t.main_score} {metrics[n][t.main_score]:.4f}"
                                        for t in tasks for n in [t.name] if n in metrics)
                    log.info(f"step {step}: {summary}", bar)
                    if score > best_score:
                        best_score, best_step, bad_evals = score, step, 0
                        if main:
                            checkpoint.save(out / "best", raw_model, tasks, {"step": step, "metrics": metrics,
                                                                             "config": cfg.to_dict()})
                    else:
                        bad_evals += 1
                        if tc.patience and bad_evals >= tc.patience:
                            stop_reason = f"early stopping: no improvement in {bad_evals} evaluations"
                            log.info(f"step {step}: {stop_reason}", bar)
                            break
                elif main and step == total_steps:
                    checkpoint.save(out / "best", raw_model, tasks, {"step": step, "config": cfg.to_dict()})
                acc.wait_for_everyone()
        if bar is not None:
            bar.close()
        wall = time.time() - start
        final_metrics = next((h["metrics"] for h in history if h["step"] == best_step), {})
        result = {
            "tasks": final_metrics,
            "best_step": best_step,
            "selection_score": best_score if best_step is not None else None,
            "steps": step,
            "stop_reason": stop_reason,
            "skipped_steps": skipped,
            "train_samples_per_s": n_samples / max(train_time, 1e-9),
            "train_tokens_per_s": n_tokens / max(train_time, 1e-9),
            "wall_time_s": wall,
            "processes": acc.num_processes,
            "device": str(acc.device),
            "precision": acc.mixed_precision,
            **peak_memory_mb(acc.device),
        }
        if main:
            (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
            for t in tasks:
                if t.name in final_metrics:
                    log.info(f"dev {t.name}: " + ", ".join(f"{k} {v:.4f}" for k, v in final_metrics[t.name].items()
                                                         if isinstance(v, (int, float))))
            log.info(f"saved to {out} (best model in {out / 'best'}, step {best_step}); wall time {wall:.1f}s")
        log.close()
        acc.wait_for_everyone()
        return TrainResult(out, result)

    def _evaluate(self, tasks, data, features, model, batch_size, acc) -> dict[str, dict[str, Any]]:
        metrics = {}
        for t in tasks:
            if "dev" not in data[t.name]:
                continue
            _, scores = evaluate(t, model, data[t.name]["dev"], batch_size, acc, features=features[t.name]["dev"])
            metrics[t.name] = scores
        return metrics


def _mean_all(running: dict[str, list[float]]) -> float:
    values = [v for vs in running.values() for v in vs]
    return sum(values) / len(values) if values else float("nan")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class RunLog:
    """log.jsonl in the run folder (machine-readable) and short lines on stdout (main process only)."""

    def __init__(self, out: Path, main: bool):
        self.main = main
        self.file = open(out / "log.jsonl", "a") if main else None

    def event(self, record: dict[str, Any]) -> None:
        if self.file:
            self.file.write(json.dumps({"time": time.time(), **record}) + "\n")
            self.file.flush()

    def info(self, message: str, bar: Any = None) -> None:
        if not self.main:
            return
        if bar is not None:
            bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.file:
            self.file.close()
