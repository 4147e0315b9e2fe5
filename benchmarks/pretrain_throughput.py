#!/usr/bin/env python
"""Masked-LM pretraining throughput: nlpkit's masked-lm task against the run_mlm.py recipe, and peak RSS
as the corpus grows.

Mode 1 (default), tokens/s side by side. Both sides train the same model folder (MiniLM, a BERT encoder;
it ships no MLM head, so the head is newly initialised on both sides) on the same text, one document per
line, in blocks of the same size, with the same batch size, optimizer (AdamW, weight decay 0.01 off
biases/LayerNorm, linear schedule, the same warm-up, gradient clipping at 1.0), precision, seed and
number of optimizer steps. The Hugging Face side is run_mlm.py without --line_by_line:
``load_dataset("text")``, the tokenizer with its special tokens on every line, ``group_texts`` (every
1,000 lines concatenated and cut into blocks, the remainder dropped), ``AutoModelForMaskedLM`` and
``DataCollatorForLanguageModeling(mlm_probability=0.15)`` under the ``Trainer``. nlpkit runs
``nlpkit.train`` with a ``masked-lm`` task: one memory-mapped token cache, blocks ``[CLS] ... [SEP]``,
15% masking with 80/10/10 in its head. Throughput is measured by the meter train_throughput.py uses,
over the optimizer steps only (end of step 1 to the end of the last); tokens are real tokens (attention
mask). The loss of both sides is the mean cross-entropy over the masked tokens of a batch.

Mode 2 (``--rss-corpus-mb N``), memory as the corpus grows. The text is repeated into a file of at least
N MB (written once, streamed), and nlpkit masked-lm trains on it for a few steps, twice, each time in a
fresh process: the first run tokenises into an empty token cache, the second reuses it. The same is done
on a small corpus (``--rss-small-mb``). The table shows peak RSS, the corpus scan, the tokenisation
(first run) or cache opening (second run), the start-up (process launch to the first step) and the cache
size on disk. nlpkit's cache ($NLPKIT_CACHE) lies under this benchmark's cache folder.

    python benchmarks/pretrain_throughput.py                     # MiniLM, CoNLL-2003 train text, 3 repeats
    python benchmarks/pretrain_throughput.py --rss-corpus-mb 200 # peak RSS on 2 MB vs 200 MB of text
    python benchmarks/pretrain_throughput.py --quick             # tiny random BERT: checks the plumbing
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()
MB = 2**20
#: nlpkit's token caches for this benchmark: removed with the rest of the benchmark cache
NLPKIT_CACHE = C.CACHE / "nlpkit-cache"


# ===================================================================================================
# measurement helpers shared by both sides (in the worker process)
# ===================================================================================================
class LossLog:
    """Each training step's mean masked-token loss, kept as given (tensors are read at the end: no
    device sync per step)."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def summary(self, steps: int) -> dict[str, Any]:
        values = [float(v) for v in self.values]
        if not values:
            return {}
        tail = max(1, steps // 10)
        return {"first_loss": values[0], "final_loss": sum(values[-tail:]) / len(values[-tail:]),
                "final_loss_steps": len(values[-tail:])}


def final_loss_label(steps: int) -> str:
    return f"train loss (mean of last {max(1, steps // 10)} steps)"


# ===================================================================================================
# nlpkit side
# ===================================================================================================
def nlpkit_worker(spec: dict[str, Any]) -> dict[str, Any]:
    os.environ["NLPKIT_CACHE"] = spec["nlpkit_cache"]  # before nlpkit reads it
    import nlpkit

    meter, losses = _instrument_nlpkit(spec["steps"])
    phases = _time_phases()
    steps = spec["steps"]
    config = {
        "tasks": [{"type": "masked-lm", "data": {"train": spec["text"]},
                   "options": {"max_length": spec["block_size"], "mlm_probability": 0.15, "documents": "line"}}],
        "backbone": {"spec": spec["backbone"]},
        "trainer": {
            "max_steps": steps, "batch_size": spec["batch_size"], "lr": spec["lr"], "weight_decay": 0.01,
            # nlpkit warms up for int(ratio * steps) steps: the half step makes that exactly warmup_steps
            "warmup_ratio": (spec["warmup_steps"] + 0.5) / steps, "scheduler": "linear", "max_grad_norm": 1.0,
            "seed": spec["seed"], "eval_every": steps,
        },
        "precision": {"compute": spec["precision"]},
        "logging": {"log_every": steps, "progress": False, "tensorboard": False, "plots": False},
        "output_dir": str(Path(spec["workdir"]) / "nlpkit-run"),
    }
    result = nlpkit.train(config)
    m = result.metrics
    measured = meter.result() if meter else {}
    if not measured:  # the trainer changed shape: fall back to nlpkit's own all-steps figure
        measured = {"tokens_per_s": m["train_tokens_per_s"], "samples_per_s": m["train_samples_per_s"]}
    return {"system": "nlpkit", **measured, **losses.summary(steps), **phases.result(spec["launched_at"]),
            "nlpkit_reported_tokens_per_s": m["train_tokens_per_s"], "steps": m["steps"],
            "precision": m["precision"]}


def _instrument_nlpkit(steps: int) -> tuple[C.StepMeter | None, LossLog]:
    """The StepMeter of train_throughput.py (every micro-batch counted where nlpkit counts its tokens,
    every optimizer step marked by a post-step hook) and the loss of each step. Measurement only."""
    import nlpkit.engine.trainer as trainer

    losses = LossLog()
    if not hasattr(trainer, "step_stats") or not hasattr(trainer, "make_optimizer"):
        return None, losses
    meter = C.StepMeter(steps)
    step_stats, make_optimizer = trainer.step_stats, trainer.make_optimizer

    def counting(acc, loss, batch):
        meter.count(batch)
        stats = step_stats(acc, loss, batch)
        losses.values.append(stats[1])
        return stats

    def hooked(*args, **kwargs):
        optimizer = make_optimizer(*args, **kwargs)
        optimizer.register_step_post_hook(lambda *_: meter.step_done())
        return optimizer

    trainer.step_stats, trainer.make_optimizer = counting, hooked
    return meter, losses


class _Phases:
    """Wall time of the corpus scan (read_corpus), of packing (tokenising into the cache, or opening it),
    and of the start-up up to the training loop; the cache folder and its token count."""

    def __init__(self) -> None:
        self.scan_s = 0.0
        self.pack_s = 0.0
        self.fit_started: float | None = None
        self.peak_rss_before_fit_mb: float | None = None
        self.cache_folder: str | None = None
        self.tokens = 0
        self.blocks = 0
        self.documents = 0

    def result(self, launched_at: float) -> dict[str, Any]:
        return {"scan_s": self.scan_s, "pack_s": self.pack_s, "cache_folder": self.cache_folder,
                "corpus_tokens": self.tokens, "blocks": self.blocks, "documents": self.documents,
                "startup_s": None if self.fit_started is None else self.fit_started - launched_at,
                "peak_rss_before_fit_mb": self.peak_rss_before_fit_mb}


def _time_phases() -> _Phases:
    """Wrap nlpkit.sdk.corpus.read_corpus / pack and Trainer.fit with timers (the task imports the first two
    when it reads and encodes, so wrapping the module attributes reaches it). Nothing else changes."""
    import nlpkit.sdk.corpus as corpus
    import nlpkit.engine.trainer as trainer

    phases = _Phases()
    read_corpus, pack, fit = corpus.read_corpus, corpus.pack, trainer.Trainer.fit

    def timed_read(*args, **kwargs):
        t0 = time.perf_counter()
        out = read_corpus(*args, **kwargs)
        phases.scan_s += time.perf_counter() - t0
        phases.documents += len(out)
        return out

    def timed_pack(*args, **kwargs):
        t0 = time.perf_counter()
        blocks = pack(*args, **kwargs)
        phases.pack_s += time.perf_counter() - t0
        phases.tokens += len(blocks.cache.tokens)
        phases.blocks += len(blocks)
        folder = blocks.cache.folder
        phases.cache_folder = str(folder) if folder is not None else None
        return blocks

    def timed_fit(self):
        phases.fit_started = time.time()
        phases.peak_rss_before_fit_mb = C.peak_rss_mb()
        return fit(self)

    corpus.read_corpus, corpus.pack, trainer.Trainer.fit = timed_read, timed_pack, timed_fit
    return phases


# ===================================================================================================
# Hugging Face side: the run_mlm.py recipe (grouped texts, not --line_by_line)
# ===================================================================================================
def hf_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from itertools import chain

    import torch
    from datasets import load_dataset
    from transformers import (AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                              TrainerCallback, TrainingArguments, set_seed)

    set_seed(spec["seed"])  # run_mlm.py seeds before the model is built
    workdir = Path(spec["workdir"])
    raw = load_dataset("text", data_files={"train": spec["text"]}, cache_dir=str(workdir / "hf-datasets"))
    tokenizer = AutoTokenizer.from_pretrained(spec["backbone"])
    model = AutoModelForMaskedLM.from_pretrained(spec["backbone"])  # MiniLM: cls.predictions.* newly initialised
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    max_seq_length = min(spec["block_size"], tokenizer.model_max_length)

    def tokenize_function(examples):
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated[list(examples.keys())[0]])
        total_length = (total_length // max_seq_length) * max_seq_length
        return {k: [t[i: i + max_seq_length] for i in range(0, total_length, max_seq_length)]
                for k, t in concatenated.items()}

    train = raw["train"].map(tokenize_function, batched=True, remove_columns=["text"])
    train = train.map(group_texts, batched=True)
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=0.15)

    meter, losses = C.StepMeter(spec["steps"]), LossLog()

    class Meter(TrainerCallback):
        def on_optimizer_step(self, args, state, control, **kwargs):
            meter.step_done()

    class CountingTrainer(Trainer):
        """Counts the real tokens of the training steps and keeps each step's loss; nothing else changes."""

        def compute_loss(self, model, inputs, *args, **kwargs):
            counted = model.training
            if counted:
                meter.count(inputs)
            out = super().compute_loss(model, inputs, *args, **kwargs)
            if counted:
                losses.values.append((out[0] if isinstance(out, tuple) else out).detach())
            return out

    args = TrainingArguments(
        output_dir=str(workdir / "hf-run"),
        per_device_train_batch_size=spec["batch_size"],
        learning_rate=spec["lr"],
        weight_decay=0.01,
        warmup_steps=spec["warmup_steps"],
        lr_scheduler_type="linear",
        max_steps=spec["steps"],
        max_grad_norm=1.0,
        seed=spec["seed"],
        bf16=spec["precision"] == "bf16",
        fp16=spec["precision"] == "fp16",
        use_cpu=not torch.cuda.is_available(),
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = CountingTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                              data_collator=collator, callbacks=[Meter()])
    out = trainer.train()
    return {"system": "hf", **meter.result(), **losses.summary(spec["steps"]), "steps": out.global_step,
            "blocks": len(train), "hf_reported_samples_per_s": out.metrics.get("train_samples_per_second"),
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "precision": spec["precision"]}


# ===================================================================================================
# data
# ===================================================================================================
def conll_text(root: Path) -> Path:
    """The CoNLL-2003 train sentences as unlabelled text: words joined by spaces, one sentence per line."""
    target = C.CACHE / "data" / "conll2003-train-text.txt"
    if not target.exists():
        sentences = C.read_conll_sentences(root / "conll2003" / "train.txt.gz")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text("".join(" ".join(words) + "\n" for words, _ in sentences), encoding="utf-8")
        os.replace(tmp, target)
    return target


def repeated_corpus(source: Path, megabytes: float) -> Path:
    """Lines of ``source``, over and over, into one file of at least ``megabytes`` MB (written once and
    streamed line by line, so neither file is ever held whole in memory; it stops at the first line end
    past the size, so a corpus smaller than ``source`` is its first lines)."""
    st = source.stat()
    key = hashlib.sha256(f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:8]
    target = C.CACHE / "data" / f"repeat-{source.stem}-{key}-{megabytes:g}mb.txt"
    want = int(megabytes * MB)
    if target.exists() and target.stat().st_size >= want:
        return target
    with open(source, "rb") as f:
        if not any(line.strip() for line in f):
            sys.exit(f"{source}: no text to repeat")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        while out.tell() < want:
            with open(source, "rb") as f:
                for line in f:
                    out.write(line if line.endswith(b"\n") else line + b"\n")
                    if out.tell() >= want:
                        break
    os.replace(tmp, target)
    return target


def folder_size_mb(folder: str | Path | None) -> float | None:
    if not folder or not Path(folder).exists():
        return None
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / MB


# ===================================================================================================
# orchestration
# ===================================================================================================
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="minilm", help="alias (minilm) or local BERT model folder (default: minilm)")
    p.add_argument("--quick", action="store_true",
                   help="tiny random 2-layer BERT, batch 8, 6 steps, 1 repeat: checks the plumbing in seconds")
    p.add_argument("--text", help="a text file, one document per line (default: the CoNLL-2003 train sentences)")
    p.add_argument("--repeats", type=int, default=None, help="runs per system (default 3; 1 with --quick)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps per run (default 50; 6 with --quick; RSS mode: 10, 3 with --quick)")
    p.add_argument("--batch-size", type=int, default=None, help="blocks per batch (default 32; 8 with --quick)")
    p.add_argument("--block-size", type=int, default=128, help="tokens per block, [CLS] and [SEP] included")
    p.add_argument("--lr", type=float, default=None, help="default 1e-4; 1e-3 with --quick")
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="both sides; auto = bf16 on a GPU that has it, fp32 on the CPU")
    p.add_argument("--rss-corpus-mb", type=float, default=None,
                   help="memory mode: nlpkit masked-lm on the text repeated to at least this many MB, beside "
                        "--rss-small-mb (no HF side)")
    p.add_argument("--rss-small-mb", type=float, default=None, help="the small corpus of the memory mode (default 2)")
    p.add_argument("--only", choices=["nlpkit", "hf"], help="run one side only (profiling)")
    p.add_argument("--data-root", help="folder with conll2003/ (default: ../shared/benchmarks)")
    p.add_argument("--json", help="write every run's raw result here")
    p.add_argument("--verbose", action="store_true", help="show the workers' output")
    args = p.parse_args(argv)
    q, rss = args.quick, args.rss_corpus_mb is not None
    defaults = dict(repeats=1 if q else 3, batch_size=8 if q else 32, lr=1e-3 if q else 1e-4,
                    steps=(3 if q else 10) if rss else (6 if q else 50), rss_small_mb=2.0)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps < 2:
        p.error("--steps must be at least 2 (throughput is timed from the end of step 1)")
    if rss and args.rss_small_mb >= args.rss_corpus_mb:
        p.error(f"--rss-small-mb {args.rss_small_mb:g} must be below --rss-corpus-mb {args.rss_corpus_mb:g}")
    return args


def base_spec(args: argparse.Namespace, backbone: str, precision: str, text: Path) -> dict[str, Any]:
    return {"backbone": backbone, "text": str(text), "steps": args.steps, "batch_size": args.batch_size,
            "block_size": args.block_size, "lr": args.lr, "warmup_steps": int(args.warmup_ratio * args.steps),
            "seed": args.seed, "precision": precision}


def run(spec: dict[str, Any], system: str, label: str, verbose: bool) -> dict[str, Any]:
    return C.run_worker(SCRIPT, {**spec, "system": system, "launched_at": time.time()}, label, verbose)


def run_throughput(args: argparse.Namespace, backbone: str, precision: str, text: Path) -> dict[str, Any]:
    spec = {**base_spec(args, backbone, precision, text), "nlpkit_cache": str(NLPKIT_CACHE / "throughput")}
    print(f"\n== masked-LM training throughput: {text.name} ({text.stat().st_size / MB:.1f} MB)")
    print(f"   {args.steps} steps x batch {args.batch_size} blocks of {args.block_size} tokens, AdamW lr {args.lr:g} "
          f"(weight decay 0.01, linear schedule, {spec['warmup_steps']} warm-up steps, clip 1.0), 15% masking "
          f"80/10/10, precision {precision}, seed {args.seed}; the MLM head is newly initialised on both sides "
          "when the model folder has none (MiniLM has none)", flush=True)
    contenders = [c for c in (("nlpkit", "nlpkit"), ("HF Trainer", "hf")) if not args.only or c[1] == args.only]
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in contenders}
    for r in range(args.repeats):
        for label, system in (contenders if r % 2 == 0 else contenders[::-1]):
            t0 = time.time()
            res = run(spec, system, label, args.verbose)
            res["repeat"] = r + 1
            runs[label].append(res)
            nan = float("nan")
            print(f"   repeat {r + 1} {label:>10}: {res['tokens_per_s']:9.0f} tokens/s "
                  f"{res.get('tokens_per_cpu_s', nan):8.0f} tokens/CPU-s  loss {res.get('first_loss', nan):.3f} "
                  f"-> {res.get('final_loss', nan):.3f}  peak RSS {res['peak_rss_mb']:6.0f} MB  "
                  f"({time.time() - t0:.0f} s)", flush=True)
    print_throughput_tables(runs, args.steps)
    return {"spec": spec, "runs": runs}


def print_throughput_tables(runs: dict[str, list[dict[str, Any]]], steps: int) -> None:
    import statistics

    loss = final_loss_label(steps)
    rows = [[f"{label} #{r['repeat']}", r["tokens_per_s"], r.get("tokens_per_cpu_s"), r["samples_per_s"],
             f"{r.get('first_loss', float('nan')):.3f}", f"{r.get('final_loss', float('nan')):.3f}",
             r["peak_rss_mb"], r["process_wall_s"]] for label, rs in runs.items() for r in rs]
    print()
    print(C.markdown_table(["run", "tokens/s", "tokens/CPU-s", "blocks/s", "train loss step 1", loss, "peak RSS MB",
                            "process wall s"], rows))
    median, nan = statistics.median, float("nan")
    summary = [[label, median(r["tokens_per_s"] for r in rs), median(r.get("tokens_per_cpu_s", nan) for r in rs),
                median(r["peak_rss_mb"] for r in rs), f"{median(r.get('final_loss', nan) for r in rs):.3f}"]
               for label, rs in runs.items()]
    print()
    print(C.markdown_table(["median", "tokens/s", "tokens/CPU-s", "peak RSS MB", loss], summary))
    if len(runs) == 2:
        (a_label, a_runs), (b_label, b_runs) = runs.items()
        pairs = list(zip(a_runs, b_runs))
        ratio_t = C.spread([a["tokens_per_s"] / b["tokens_per_s"] for a, b in pairs])
        ratio_c = C.spread([a.get("tokens_per_cpu_s", float("nan")) / b.get("tokens_per_cpu_s", float("nan"))
                            for a, b in pairs])
        ratio_m = C.spread([a["peak_rss_mb"] / b["peak_rss_mb"] for a, b in pairs])
        diff = C.spread([a.get("final_loss", float("nan")) - b.get("final_loss", float("nan")) for a, b in pairs])
        print()
        print(C.markdown_table(
            [f"{a_label} / {b_label} (per repeat)", "min", "median", "max"],
            [["tokens/s ratio", *(f"{v:.2f}x" for v in ratio_t)],
             ["tokens/CPU-s ratio", *(f"{v:.2f}x" for v in ratio_c)],
             ["peak RSS ratio", *(f"{v:.2f}x" for v in ratio_m)],
             [f"{loss} difference", *(f"{v:+.3f}" for v in diff)]]))


def run_rss(args: argparse.Namespace, backbone: str, precision: str, text: Path) -> dict[str, Any]:
    print(f"\n== peak RSS as the corpus grows: {text.name} repeated to {args.rss_small_mb:g} MB and "
          f"{args.rss_corpus_mb:g} MB; nlpkit masked-lm, {args.steps} steps x batch {args.batch_size} blocks of "
          f"{args.block_size} tokens, precision {precision}; each run a fresh process; token caches in {NLPKIT_CACHE}",
          flush=True)
    results = []
    for megabytes in (args.rss_small_mb, args.rss_corpus_mb):
        t0 = time.time()
        corpus = repeated_corpus(text, megabytes)
        print(f"   corpus {corpus.name}: {corpus.stat().st_size / MB:.1f} MB "
              f"({time.time() - t0:.1f} s to write or find)", flush=True)
        cache = NLPKIT_CACHE / f"rss-{megabytes:g}mb"
        shutil.rmtree(cache, ignore_errors=True)  # the first run must tokenise
        spec = {**base_spec(args, backbone, precision, corpus), "nlpkit_cache": str(cache)}
        for attempt, what in ((1, "cache built"), (2, "cache reused")):
            res = run(spec, "nlpkit", f"nlpkit {megabytes:g} MB run {attempt}", args.verbose)
            res.update(corpus_mb=corpus.stat().st_size / MB, run=attempt, what=what,
                       cache_mb=folder_size_mb(res.get("cache_folder")))
            results.append(res)
            print(f"   {megabytes:g} MB run {attempt} ({what}): peak RSS {res['peak_rss_mb']:.0f} MB, scan "
                  f"{res['scan_s']:.2f} s, pack {res['pack_s']:.2f} s, start-up {res['startup_s']:.1f} s, "
                  f"{res['tokens_per_s']:.0f} tokens/s", flush=True)
    print_rss_table(results)
    return {"runs": results}


def print_rss_table(results: list[dict[str, Any]]) -> None:
    rows = [[f"{r['corpus_mb']:,.1f}", f"{r['documents']:,}", f"{r['corpus_tokens']:,}", f"{r['run']} ({r['what']})",
             f"{r['scan_s']:.2f}", f"{r['pack_s']:.2f}", r["startup_s"], r["peak_rss_before_fit_mb"],
             r["peak_rss_mb"], r["cache_mb"], r["tokens_per_s"]] for r in results]
    print()
    print(C.markdown_table(["corpus MB", "documents", "tokens", "run", "scan s", "tokenise / open s",
                            "start-up s", "peak RSS before training MB", "peak RSS MB", "token cache MB",
                            "tokens/s"], rows))
    small, big = results[1], results[-1]
    grown = big["peak_rss_mb"] - small["peak_rss_mb"]
    print(f"\npeak RSS, second runs: {small['peak_rss_mb']:.0f} MB on {small['corpus_mb']:.1f} MB of text, "
          f"{big['peak_rss_mb']:.0f} MB on {big['corpus_mb']:.1f} MB ({grown:+.0f} MB for "
          f"{big['corpus_mb'] / small['corpus_mb']:.0f}x the text); first runs: {results[0]['peak_rss_mb']:.0f} MB "
          f"and {results[2]['peak_rss_mb']:.0f} MB")


def main(argv=None) -> int:
    C.offline()
    args = parse_args(argv)
    info = C.device_info()
    print(C.device_line(info))
    print(C.versions())
    precision = C.pick_precision(args.precision, info)
    backbone = C.tiny_bert_folder() if args.quick else C.resolve_backbone(args.backbone)
    print(f"backbone: {'tiny random BERT (--quick)' if args.quick else args.backbone} -> {backbone}")
    if args.text:
        text = Path(args.text)
        if not text.is_file():
            sys.exit(f"--text {args.text}: no such file")
    else:
        text = conll_text(C.data_root(args.data_root))
    payload: dict[str, Any] = {"device": info, "args": vars(args)}
    if args.rss_corpus_mb is not None:
        payload["rss"] = run_rss(args, backbone, precision, text)
    else:
        payload["throughput"] = run_throughput(args, backbone, precision, text)
    C.save_json(args.json, payload)
    return 0


if __name__ == "__main__":
    if not C.worker_main({"nlpkit": nlpkit_worker, "hf": hf_worker}):
        sys.exit(main())
