#!/usr/bin/env python
"""Training throughput: nlpkit against the Hugging Face Trainer on the same work.

Both sides train the same backbone on the same slice of CoNLL-2003 (or SST-2 with --task
classification), with the same maximum length, batch size, optimizer (AdamW, weight decay 0.01 off
biases/LayerNorm, the same learning rate, linear schedule with the same number of warm-up steps, gradient
clipping at 1.0), precision and number of optimizer steps. The Hugging Face side is the run_ner.py recipe
(run_glue.py for classification): AutoModelFor*Classification, labels on the first sub-token of each
word, DataCollatorForTokenClassification (dynamic padding), the Trainer with its default optimizer, and
seqeval on words for the dev score. nlpkit runs through its Python API (``nlpkit.train``).

Runs alternate (nlpkit, HF, then HF, nlpkit, ...), 5 repeats by default, and each one is a fresh process,
so peak RSS is per run and slow phases of a shared machine hit both sides alike. Two timings per run:
- the whole process, launch to exit: start-up, tokenisation, the training, one evaluation and one save
  (nlpkit writes its checkpoint, the HF side ``save_model``); the headline figure;
- the training steps alone, from the end of step 1 to the end of the last step, by the same meter on both
  sides (tokens are real tokens, never padding), with the process's CPU seconds over the same window.
Medians come with a bootstrap 95% interval over the repeats, and the ratios with theirs. The default
setting is like for like: both bf16, both length-grouped batches (nlpkit's grouping, the Trainer's
``group_by_length``); ``--setting defaults`` runs each side as it comes instead. ``--eval-every N`` adds the
time to a score: both sides evaluate (and write a checkpoint) every N steps, and each run's time from launch
to the first evaluation at or above a common target (the lower of the sides' median final scores).
Every run's result is cached under the code version and its settings (benchmarks/.cache/train_throughput):
a rerun only measures what is missing.

    python benchmarks/train_throughput.py                      # MiniLM, CoNLL-2003 slice, like for like, 5 repeats
    python benchmarks/train_throughput.py --task classification
    python benchmarks/train_throughput.py --setting defaults   # each side at its defaults
    python benchmarks/train_throughput.py --steps 126 --lr 1e-4 --eval-every 16   # time to a score, 2 epochs
    python benchmarks/train_throughput.py --quick              # tiny BERT, seconds: checks the plumbing
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()


# ===================================================================================================
# nlpkit side (runs in a worker process)
# ===================================================================================================
def nlpkit_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import nlpkit

    if spec["nlpkit_optimizer"] != "default":
        _force_adamw_kind(spec["nlpkit_optimizer"])
    meter = _instrument_nlpkit(spec["steps"])
    if spec["task"] == "ner":
        entry = {"type": "ner", "options": {"max_length": spec["max_length"]}}
        metric = "f1"
    else:
        entry = {"type": "classification",
                 "options": {"max_length": spec["max_length"], "text_column": "sentence", "label_column": "label"}}
        metric = "accuracy"
    entry["data"] = {"train": spec["train"], "dev": spec["dev"]}
    steps = spec["steps"]
    config = {
        "tasks": [entry],
        "backbone": {"spec": spec["backbone"], "attention": spec["nlpkit_attention"]},
        "trainer": {
            "max_steps": steps, "batch_size": spec["batch_size"], "eval_batch_size": spec["eval_batch_size"],
            "lr": spec["lr"], "weight_decay": 0.01, "warmup_ratio": spec["warmup_steps"] / steps,
            "scheduler": "linear", "max_grad_norm": 1.0, "seed": spec["seed"],
            "eval_every": spec.get("eval_every") or steps,
        },
        "precision": {"compute": spec["precision"]},
        "logging": {"log_every": steps, "progress": False},
        "performance": {
            "group_by_length": spec["nlpkit_group"], "compile": spec["nlpkit_compile"],
            # nlpkit's own defaults unless an A/B sets them
            **{key: spec[f"nlpkit_{key}"] for key in ("fast_dropout", "heap_reuse") if f"nlpkit_{key}" in spec},
        },
        "output_dir": str(Path(spec["workdir"]) / "nlpkit-run"),
    }
    result = nlpkit.train(config)
    m = result.metrics
    scores = m["tasks"][entry["type"]]
    own = {"nlpkit_reported_samples_per_s": m["train_samples_per_s"],
           "nlpkit_reported_tokens_per_s": m["train_tokens_per_s"]}
    measured = meter.result() if meter else {}
    if not measured:  # the trainer changed shape: fall back to nlpkit's own all-steps figures
        measured = {"samples_per_s": m["train_samples_per_s"], "tokens_per_s": m["train_tokens_per_s"]}
    curve = []  # (seconds since the process was launched, step, dev score) at every evaluation
    for line in (Path(config["output_dir"]) / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "eval" in record and entry["type"] in record["eval"]:
            curve.append([record["time"] - spec["launch_time"], record["step"], record["eval"][entry["type"]][metric]])
    return {"system": "nlpkit", **measured, **own, "curve": curve,
            "dev_score": scores.get(metric, scores.get(nlpkit.get_task_class(entry["type"]).main_score)),
            "metric": metric, "steps": m["steps"], "precision": m["precision"]}


def _instrument_nlpkit(steps: int) -> C.StepMeter | None:
    """Attach the StepMeter: count every micro-batch where nlpkit counts its tokens (``step_stats``),
    mark every optimizer step with a post-step hook. Measurement only; the training is untouched."""
    import nlpkit.engine.trainer as trainer

    if not hasattr(trainer, "step_stats") or not hasattr(trainer, "make_optimizer"):
        return None
    meter = C.StepMeter(steps)
    step_stats, make_optimizer = trainer.step_stats, trainer.make_optimizer

    def counting(acc, loss, batch):
        meter.count(batch)
        return step_stats(acc, loss, batch)

    def hooked(*args, **kwargs):
        optimizer = make_optimizer(*args, **kwargs)
        optimizer.register_step_post_hook(lambda *_: meter.step_done())
        return optimizer

    trainer.step_stats, trainer.make_optimizer = counting, hooked
    return meter


def _force_adamw_kind(kind: str) -> None:
    """Benchmark knob: rebuild nlpkit's AdamW (same groups and lr) as the foreach or the fused kernel,
    so a change of nlpkit's default can be measured against the old one in the same invocation."""
    import torch

    import nlpkit.engine.trainer as trainer

    original = trainer.make_optimizer

    def make_optimizer(model, lr, weight_decay):
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]}
                  for g in original(model, lr, weight_decay).param_groups]
        flags = {"foreach": {"foreach": True, "fused": False}, "fused": {"fused": True}}[kind]
        return torch.optim.AdamW(groups, lr=lr, **flags)

    trainer.make_optimizer = make_optimizer


# ===================================================================================================
# Hugging Face side (runs in a worker process): the run_ner.py / run_glue.py recipe
# ===================================================================================================
def hf_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch
    from transformers import AutoTokenizer, Trainer, TrainerCallback, TrainingArguments, set_seed

    set_seed(spec["seed"])  # run_ner.py seeds before the model is built
    tokenizer = AutoTokenizer.from_pretrained(spec["backbone"])
    if spec["task"] == "ner":
        model, train_ds, dev_ds, collator, compute_metrics, metric = _hf_ner(spec, tokenizer)
    else:
        model, train_ds, dev_ds, collator, compute_metrics, metric = _hf_classification(spec, tokenizer)

    meter = C.StepMeter(spec["steps"])
    curve = []  # (seconds since the process was launched, step, dev score) at every evaluation
    every = spec.get("eval_every")

    class Meter(TrainerCallback):
        def on_optimizer_step(self, args, state, control, **kwargs):
            meter.step_done()

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if every and metrics and f"eval_{metric}" in metrics:
                curve.append([time.time() - spec["launch_time"], state.global_step, float(metrics[f"eval_{metric}"])])

    class CountingTrainer(Trainer):
        """Counts the samples and real (unpadded) tokens the training steps see; nothing else changes."""

        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:
                meter.count(inputs)
            return super().compute_loss(model, inputs, *args, **kwargs)

    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(Path(spec["workdir"]) / "hf-run"),
        per_device_train_batch_size=spec["batch_size"],
        per_device_eval_batch_size=spec["eval_batch_size"],
        learning_rate=spec["lr"],
        weight_decay=0.01,
        warmup_steps=spec["warmup_steps"],
        lr_scheduler_type="linear",
        max_steps=spec["steps"],
        max_grad_norm=1.0,
        seed=spec["seed"],
        bf16=spec["hf_precision"] == "bf16",
        fp16=spec["hf_precision"] == "fp16",
        use_cpu=not cuda,
        train_sampling_strategy=spec["hf_sampling"],
        torch_compile=spec["hf_compile"],
        # with an evaluation schedule, a checkpoint at each evaluation (nlpkit writes one at each too); without,
        # one evaluation and one save at the end, as nlpkit does
        eval_strategy="steps" if every else "no",
        eval_steps=every,
        save_strategy="steps" if every else "no",
        save_steps=every,
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = CountingTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=dev_ds,
                              processing_class=tokenizer, data_collator=collator, compute_metrics=compute_metrics,
                              callbacks=[Meter()])
    out = trainer.train()
    if every and curve and curve[-1][1] == out.global_step:  # the schedule evaluated the last step already
        final = curve[-1][2]
    else:
        final = float(trainer.evaluate()[f"eval_{metric}"])
    if not every:
        trainer.save_model()
    return {"system": "hf", **meter.result(), "curve": curve,
            "dev_score": final, "metric": metric, "steps": out.global_step,
            "hf_reported_samples_per_s": out.metrics.get("train_samples_per_second"),
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "optimizer": type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                              else trainer.optimizer).__name__ + f" ({args.optim})",
            "precision": spec["hf_precision"], "np": np.__version__}


def _head_init(model, spec) -> None:
    """--hf-head-init torch: the new classifier layer drawn as torch.nn.Linear draws it (uniform weights and bias,
    nlpkit's heads) instead of transformers' normal(0, initializer_range) with a zero bias: one suspect, isolated,
    for the dev-score gap between the two sides."""
    if spec.get("hf_head_init", "hf") == "torch":
        model.classifier.reset_parameters()


def _hf_ner(spec, tokenizer):
    import numpy as np
    from datasets import Dataset
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score
    from transformers import AutoConfig, AutoModelForTokenClassification, DataCollatorForTokenClassification

    train = C.read_conll_sentences(Path(spec["train"]))
    dev = C.read_conll_sentences(Path(spec["dev"]))
    label_list = sorted({t for _, tags in train for t in tags})  # run_ner.py: get_label_list
    label_to_id = {label: i for i, label in enumerate(label_list)}
    config = AutoConfig.from_pretrained(spec["backbone"], num_labels=len(label_list), finetuning_task="ner",
                                        id2label=dict(enumerate(label_list)), label2id=label_to_id)
    model = AutoModelForTokenClassification.from_pretrained(spec["backbone"], config=config)
    _head_init(model, spec)

    def tokenize_and_align_labels(examples):
        tokenized = tokenizer(examples["tokens"], padding=False, truncation=True, max_length=spec["max_length"],
                              is_split_into_words=True)
        labels = []
        for i, label in enumerate(examples["ner_tags"]):
            word_ids = tokenized.word_ids(batch_index=i)
            previous, label_ids = None, []
            for word_idx in word_ids:
                if word_idx is None or word_idx == previous:  # label_all_tokens=False
                    label_ids.append(-100)
                else:
                    label_ids.append(label_to_id[label[word_idx]])
                previous = word_idx
            labels.append(label_ids)
        tokenized["labels"] = labels
        return tokenized

    def dataset(sentences):
        ds = Dataset.from_dict({"tokens": [w for w, _ in sentences], "ner_tags": [t for _, t in sentences]})
        return ds.map(tokenize_and_align_labels, batched=True, remove_columns=["tokens", "ner_tags"])

    collator = DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=8 if spec["precision"] == "fp16" else None)

    def compute_metrics(p):
        predictions, labels = p
        predictions = np.argmax(predictions, axis=2)
        true_predictions = [[label_list[p] for (p, l) in zip(prediction, label) if l != -100]
                            for prediction, label in zip(predictions, labels)]
        true_labels = [[label_list[l] for (p, l) in zip(prediction, label) if l != -100]
                       for prediction, label in zip(predictions, labels)]
        return {"precision": 100 * precision_score(true_labels, true_predictions),
                "recall": 100 * recall_score(true_labels, true_predictions),
                "f1": 100 * f1_score(true_labels, true_predictions),
                "accuracy": 100 * accuracy_score(true_labels, true_predictions)}

    return model, dataset(train), dataset(dev), collator, compute_metrics, "f1"


def _hf_classification(spec, tokenizer):
    import numpy as np
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForSequenceClassification, DataCollatorWithPadding

    train = C.read_tsv(Path(spec["train"]))
    dev = C.read_tsv(Path(spec["dev"]))
    label_list = sorted({label for label, _ in train})
    label_to_id = {label: i for i, label in enumerate(label_list)}
    config = AutoConfig.from_pretrained(spec["backbone"], num_labels=len(label_list), finetuning_task="sst2",
                                        id2label=dict(enumerate(label_list)), label2id=label_to_id)
    model = AutoModelForSequenceClassification.from_pretrained(spec["backbone"], config=config)
    _head_init(model, spec)

    def preprocess(examples):
        # run_glue.py pads to max_length by default (--pad_to_max_length True); dynamic padding is the
        # faster choice its docs recommend on CPU/GPU, so the HF side gets it here.
        result = tokenizer(examples["sentence"], padding=False, max_length=spec["max_length"], truncation=True)
        result["label"] = [label_to_id[label] for label in examples["label"]]
        return result

    def dataset(rows):
        ds = Dataset.from_dict({"label": [lab for lab, _ in rows], "sentence": [s for _, s in rows]})
        return ds.map(preprocess, batched=True, remove_columns=["sentence"])

    def compute_metrics(p):
        preds = np.argmax(p.predictions, axis=1)
        return {"accuracy": 100 * float((preds == p.label_ids).mean())}

    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if spec["precision"] == "fp16" else None)
    return model, dataset(train), dataset(dev), collator, compute_metrics, "accuracy"


# ===================================================================================================
# orchestration
# ===================================================================================================
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["ner", "classification", "all"], default="ner")
    p.add_argument("--backbone", default="minilm", help="alias (minilm) or local model folder (default: minilm)")
    p.add_argument("--quick", action="store_true",
                   help="tiny random 2-layer BERT, 256/128 sentences, 8 steps, 1 repeat: checks the plumbing in seconds")
    p.add_argument("--repeats", type=int, default=None,
                   help="runs per system, the order alternating (default 5; 1 with --quick)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="evaluate every N steps on both sides (each evaluation also writes a checkpoint on both) and "
                        "report the time to a score: the seconds from launch until a run's dev score first reaches "
                        "the lower of the two sides' median final scores")
    p.add_argument("--fresh", action="store_true", help="measure again what the result cache holds for this code")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps per run (default: one epoch of the training slice)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32 (16 with --quick)")
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=None, help="default 5e-4; 1e-3 with --quick")
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--train-sentences", type=int, default=None, help="default 2000 (256 with --quick)")
    p.add_argument("--dev-sentences", type=int, default=None, help="default 500 (128 with --quick)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="both sides; auto = bf16 on a GPU that has it, fp32 on the CPU")
    p.add_argument("--hf-sampling", choices=["random", "group_by_length"], default="random",
                   help="the HF Trainer's train_sampling_strategy (run_ner.py default: random)")
    p.add_argument("--hf-compile", action="store_true", help="TrainingArguments(torch_compile=True)")
    p.add_argument("--hf-head-init", choices=["hf", "torch"], default="hf",
                   help="the HF side's new classifier layer: transformers' init (default) or torch.nn.Linear's, "
                        "which nlpkit's heads use")
    p.add_argument("--nlpkit-compile", action="store_true", help="nlpkit performance.compile=true")
    p.add_argument("--nlpkit-no-group", action="store_true", help="nlpkit performance.group_by_length=false")
    p.add_argument("--nlpkit-optimizer", choices=["default", "foreach", "fused"], default="default",
                   help="force nlpkit's AdamW kernel (to measure the default against the alternative)")
    p.add_argument("--ab", metavar="KEY=VALUE",
                   help="instead of HF, run nlpkit against nlpkit with one setting changed, e.g. "
                        "nlpkit_optimizer=foreach, nlpkit_compile=true, nlpkit_group=false, nlpkit_attention=eager, "
                        "precision=bf16")
    p.add_argument("--setting", choices=["like-for-like", "defaults", "best", "custom"], default="like-for-like",
                   help="like-for-like (default; 'best' is the old name): both sides bf16 and length-grouped batches "
                        "(nlpkit's grouping, the Trainer's group_by_length); defaults: each side as it comes (nlpkit "
                        "precision auto, which is bf16 on a CPU with native bf16; HF fp32, random batches); custom: "
                        "--precision and --hf-sampling as given")
    p.add_argument("--only", choices=["nlpkit", "hf"], help="run one side only (profiling)")
    p.add_argument("--data-root", help="folder with conll2003/ and sst2/ (default: ../shared/benchmarks)")
    p.add_argument("--json", help="write every run's raw result here")
    p.add_argument("--verbose", action="store_true", help="show the workers' output")
    args = p.parse_args(argv)
    if args.ab and args.ab.partition("=")[0].replace("-", "_") not in AB_KEYS:
        p.error(f"--ab {args.ab}: KEY must be one of {', '.join(AB_KEYS)}")
    q = args.quick
    defaults = dict(repeats=1 if q else 5, batch_size=16 if q else 32, lr=1e-3 if q else 5e-4,
                    train_sentences=256 if q else 2000, dev_sentences=128 if q else 500)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.setting == "defaults":  # nlpkit's own "auto" (bf16 on a CPU with native bf16); HF's default fp32
        args.hf_sampling = "random"
    elif args.setting in ("best", "like-for-like"):
        args.setting = "like-for-like"
        args.precision, args.hf_sampling, args.nlpkit_no_group = "bf16", "group_by_length", False
    if args.steps is None:  # one epoch of the slice: both sides then train on exactly the same sentences
        args.steps = -(-args.train_sentences // args.batch_size)
    return args


def classification_available() -> bool:
    from nlpkit.sdk.errors import UnknownTaskError
    from nlpkit.sdk.registry import get_task_class

    try:
        get_task_class("classification")
        return True
    except UnknownTaskError:
        return False


def run_variant(task: str, args: argparse.Namespace, backbone: str, precision: str, hf_precision: str,
                root: Path) -> dict[str, Any]:
    if task == "ner":
        files = C.conll_slices(root, args.train_sentences, args.dev_sentences)
        data_desc = (f"CoNLL-2003: first {args.train_sentences} train sentences, first {args.dev_sentences} "
                     "valid sentences (dev F1: seqeval default mode, on words)")
    else:
        files = C.sst2_slices(root, args.train_sentences, args.dev_sentences)
        data_desc = (f"SST-2 train.tsv: {args.dev_sentences} rows of whole sentence groups as dev (no phrase of a "
                     f"training sentence), the first {args.train_sentences} rows of the rest to train (accuracy)")
    spec = {"task": task, "backbone": backbone, "train": str(files["train"]), "dev": str(files["dev"]),
            "steps": args.steps, "batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size,
            "max_length": args.max_length, "lr": args.lr, "warmup_steps": int(args.warmup_ratio * args.steps),
            "seed": args.seed, "precision": precision, "hf_precision": hf_precision,
            "hf_sampling": args.hf_sampling, "hf_compile": args.hf_compile, "hf_head_init": args.hf_head_init,
            "nlpkit_group": not args.nlpkit_no_group, "nlpkit_compile": args.nlpkit_compile,
            "nlpkit_optimizer": args.nlpkit_optimizer, "nlpkit_attention": "sdpa", "eval_every": args.eval_every}
    print(f"\n== {task}: {data_desc}")
    print(f"   {args.steps} steps x batch {args.batch_size}, max length {args.max_length}, AdamW lr {args.lr:g} "
          f"(weight decay 0.01, linear schedule, {spec['warmup_steps']} warm-up steps, clip 1.0), "
          f"precision nlpkit {spec['precision']}, HF {spec['hf_precision']}, seed {args.seed}; HF sampling: {args.hf_sampling}"
          + ("; nlpkit compile" if args.nlpkit_compile else "") + ("; nlpkit no length grouping" if args.nlpkit_no_group else "")
          + (f"; nlpkit AdamW forced to {args.nlpkit_optimizer}" if args.nlpkit_optimizer != "default" else ""),
          flush=True)
    contenders = contenders_for(args)
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in contenders}
    code = C.code_version("nlpkit", "tasks", "benchmarks/_common.py", str(SCRIPT.relative_to(C.ROOT)))
    print(f"   code {code}; results cached under {C.CACHE / 'train_throughput'} (--fresh measures again)")
    for r in range(args.repeats):
        order = contenders if r % 2 == 0 else contenders[::-1]
        for label, system, overrides in order:
            t0 = time.time()
            run_spec = {**spec, **overrides, "system": system}
            # cached per comparison: an A/B's runs alternate with each other, not with another invocation's
            key = {**run_spec, "comparison": [c[0] for c in contenders]}
            res, cached = C.cached_run("train_throughput", code, key, r,
                                       lambda: C.run_worker(SCRIPT, run_spec, f"{label} {task}", args.verbose),
                                       args.fresh)
            res["repeat"] = r + 1
            runs[label].append(res)
            print(f"   repeat {r + 1} {label:>12}: {res['samples_per_s']:8.1f} samples/s {res['tokens_per_s']:9.0f} tokens/s "
                  f"{res.get('samples_per_cpu_s', float('nan')):7.1f} samples/CPU-s  "
                  f"dev {res['metric']} {res['dev_score']:6.2f}  peak RSS {res['peak_rss_mb']:6.0f} MB  "
                  f"{res.get('precision', '?')}  "
                  f"process {res['process_wall_s']:.1f} s" + (" (cached)" if cached else f" ({time.time() - t0:.0f} s)"),
                  flush=True)
    print_tables(runs)
    print_intervals(runs)
    if args.eval_every:
        print_time_to_score(runs)
    return {"spec": spec, "runs": runs}


#: What --ab can change on the second nlpkit side (spec keys the nlpkit worker reads).
AB_KEYS = ("nlpkit_group", "nlpkit_optimizer", "nlpkit_compile", "nlpkit_attention", "nlpkit_fast_dropout",
           "nlpkit_heap_reuse", "precision")


def contenders_for(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, worker, spec overrides): nlpkit vs the HF Trainer, or nlpkit vs nlpkit with one setting changed."""
    if args.ab:
        key, _, raw = args.ab.partition("=")
        key = key.replace("-", "_")
        value: Any = {"true": True, "false": False}.get(raw.lower(), raw)
        return [("nlpkit", "nlpkit", {}), (f"nlpkit {key.removeprefix('nlpkit_')}={raw}", "nlpkit", {key: value})]
    both = [("nlpkit", "nlpkit", {}), ("HF Trainer", "hf", {})]
    return [c for c in both if not args.only or c[1] == args.only]


def print_tables(runs: dict[str, list[dict[str, Any]]]) -> None:
    import statistics

    metric = next(iter(runs.values()))[0]["metric"]
    rows = []
    for label, rs in runs.items():
        for r in rs:
            rows.append([f"{label} #{r['repeat']}", r["samples_per_s"], r["tokens_per_s"], r.get("samples_per_cpu_s"),
                         f"{100 * r.get('padding_fraction', float('nan')):.1f}%", r["peak_rss_mb"],
                         f"{r['dev_score']:.2f}", r["process_wall_s"]])
    print()
    print(C.markdown_table(["run", "samples/s", "tokens/s", "samples/CPU-s", "padding", "peak RSS MB", f"dev {metric}",
                            "process wall s"], rows))
    summary = []
    for label, rs in runs.items():
        summary.append([label, statistics.median(r["samples_per_s"] for r in rs),
                        statistics.median(r["tokens_per_s"] for r in rs),
                        statistics.median(r.get("samples_per_cpu_s", float("nan")) for r in rs),
                        statistics.median(r["peak_rss_mb"] for r in rs),
                        f"{statistics.median(r['dev_score'] for r in rs):.2f}"])
    print()
    print(C.markdown_table(["median", "samples/s", "tokens/s", "samples/CPU-s", "peak RSS MB", f"dev {metric}"], summary))
    if len(runs) == 2:
        (a_label, a_runs), (b_label, b_runs) = runs.items()
        pairs = list(zip(a_runs, b_runs))
        ratio_s = C.spread([a["samples_per_s"] / b["samples_per_s"] for a, b in pairs])
        ratio_t = C.spread([a["tokens_per_s"] / b["tokens_per_s"] for a, b in pairs])
        ratio_c = C.spread([a.get("samples_per_cpu_s", float("nan")) / b.get("samples_per_cpu_s", float("nan"))
                            for a, b in pairs])
        ratio_m = C.spread([a["peak_rss_mb"] / b["peak_rss_mb"] for a, b in pairs])
        diff = C.spread([a["dev_score"] - b["dev_score"] for a, b in pairs])
        print()
        print(C.markdown_table(
            [f"{a_label} / {b_label} (per repeat)", "min", "median", "max"],
            [["samples/s ratio", *(f"{v:.2f}x" for v in ratio_s)],
             ["tokens/s ratio", *(f"{v:.2f}x" for v in ratio_t)],
             ["samples/CPU-s ratio", *(f"{v:.2f}x" for v in ratio_c)],
             ["peak RSS ratio", *(f"{v:.2f}x" for v in ratio_m)],
             [f"dev {metric} difference (points)", *(f"{v:+.2f}" for v in diff)]]))


def print_intervals(runs: dict[str, list[dict[str, Any]]]) -> None:
    """Medians with bootstrap 95% intervals over the repeats, and the ratios' intervals: whole process (launch to
    exit: start-up, tokenising, training, the evaluation and the save) and the training steps alone."""
    rows = [[label, len(rs), C.interval_text([r["process_wall_s"] for r in rs]),
             C.interval_text([r["samples_per_s"] for r in rs])] for label, rs in runs.items()]
    print()
    print(C.markdown_table(["side", "n", "process wall s, median [95% CI]", "steps' samples/s, median [95% CI]"], rows))
    if len(runs) == 2:
        (a_label, a), (b_label, b) = runs.items()
        wall = C.ratio_interval([r["process_wall_s"] for r in b], [r["process_wall_s"] for r in a])
        steps = C.ratio_interval([r["samples_per_s"] for r in a], [r["samples_per_s"] for r in b])
        print()
        print(f"whole process: {a_label} is {wall[0]:.2f}x as fast as {b_label} ({b_label}'s wall / {a_label}'s, "
              f"95% CI {wall[1]:.2f}-{wall[2]:.2f}, n={min(len(a), len(b))} each)")
        print(f"training steps only: {steps[0]:.2f}x the samples/s (95% CI {steps[1]:.2f}-{steps[2]:.2f})")


def time_to(curve: list[list[float]], target: float) -> float | None:
    """Seconds from launch until the dev score first reached ``target`` (None: never)."""
    return next((t for t, _, score in curve if score >= target - 1e-9), None)


def print_time_to_score(runs: dict[str, list[dict[str, Any]]]) -> None:
    finals = {label: statistics.median(r["curve"][-1][2] for r in rs if r.get("curve"))
              for label, rs in runs.items() if any(r.get("curve") for r in rs)}
    if len(finals) < 2:
        print("\n(time to a score: no evaluation curve on one side)")
        return
    target = min(finals.values())
    print(f"\ntime to a score: target {target:.2f} = the lower of the sides' median final dev scores "
          f"({', '.join(f'{k} {v:.2f}' for k, v in finals.items())})")
    rows, times = [], {}
    for label, rs in runs.items():
        reached = [time_to(r["curve"], target) for r in rs]
        times[label] = [t for t in reached if t is not None]
        rows.append([label, f"{sum(t is not None for t in reached)}/{len(rs)}",
                     C.interval_text(times[label]) if times[label] else "never",
                     " ".join(f"{r['curve'][-1][2]:.2f}" for r in rs),
                     "; ".join(",".join(f"{score:.1f}@{t:.0f}s" for t, _, score in r["curve"]) for r in rs[:1])])
    print(C.markdown_table(["side", "reached", "seconds to target, median [95% CI]", "final scores",
                            "curve of repeat 1 (score@seconds)"], rows))
    (a_label, a), (b_label, b) = times.items()
    if a and b:
        ratio = C.ratio_interval(b, a)
        print(f"{a_label} reached it {ratio[0]:.2f}x as fast as {b_label} (95% CI {ratio[1]:.2f}-{ratio[2]:.2f})")


def main(argv=None) -> int:
    C.offline()
    args = parse_args(argv)
    info = C.device_info()
    print(C.device_line(info))
    print(C.versions())
    if args.setting == "defaults":  # each side as it comes
        precision, hf_precision = "auto", C.pick_precision("auto", info)
    else:
        precision = hf_precision = C.pick_precision(args.precision, info)
    backbone = C.tiny_bert_folder() if args.quick else C.resolve_backbone(args.backbone)
    print(f"backbone: {'tiny random BERT (--quick)' if args.quick else args.backbone} -> {backbone}")
    root = C.data_root(args.data_root)
    tasks = ["ner", "classification"] if args.task == "all" else [args.task]
    payload = {"device": info, "args": vars(args), "variants": {}}
    for task in tasks:
        if task == "classification" and args.only != "hf" and not classification_available():
            print("\n== classification: nlpkit has no task plugin registered as 'classification' in this install; "
                  "skipping the classification variant (run it again once the plugin is merged)")
            continue
        payload["variants"][task] = run_variant(task, args, backbone, precision, hf_precision, root)
    C.save_json(args.json, payload)
    return 0


if __name__ == "__main__":
    if not C.worker_main({"nlpkit": nlpkit_worker, "hf": hf_worker}):
        sys.exit(main())
