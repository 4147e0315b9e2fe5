#!/usr/bin/env python
"""Does pretraining pay? Fine-tuning scores with and without an nlpkit pretraining run first.

    python benchmarks/pretraining_gain.py corpus      # the unlabelled TRAIN text of ../shared/benchmarks
    python benchmarks/pretraining_gain.py scratch     # (a) masked-LM on the `small` preset from scratch, then
                                                      #     CoNLL-2003, SST-2, TREC fine-tuned from it vs from scratch
    python benchmarks/pretraining_gain.py continued   # (b) continued masked-LM of MiniLM on WNUT-17 train text,
                                                      #     then WNUT-17 NER with vs without it
    python benchmarks/pretraining_gain.py scratch --quick    # the same steps on tiny models and the bundled data
    python benchmarks/pretraining_gain.py continued --quick  # (preset mini; a tiny random BERT for MiniLM): plumbing

Every training is one `nlpkit train` command, run as a subprocess and printed before it runs, so each row of
the tables can be reproduced by hand. Both sides of a comparison get the same fine-tuning budget (steps, batch,
learning rate, seed); they differ only in ``--backbone`` (the preset or MiniLM, against the pretraining run).

Only train splits are pretrained on. Where a fine-tuning task has no dev file (SST-2, TREC here), its dev set is
carved from train exactly as the fine-tuning run carves it (``dev_split`` and ``dev_split_seed``), and those
held-out texts are left out of the pretraining corpus too. Dev scores only; no test split is read.

Each run's metrics are kept under benchmarks/.cache/pretraining-gain/results, keyed by the code version (nlpkit/,
tasks/, the benchmark helpers and this script) and the run's command (a pretraining run that a fine-tuning starts
from by its key), so running again trains only what is missing; --fresh trains everything again.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()
#: fine-tuning runs: name -> (task type, data, options, budget). dev_split values are the recipes' (recipes/*.yaml).
FINETUNE = {
    "conll2003": ("ner", {"train": "conll2003/train.txt.gz", "dev": "conll2003/valid.txt.gz"}, {}, ["--epochs", "1"]),
    "sst2": ("sentiment", {"train": "sst2/train.tsv.gz"}, {"dev_split": 0.05, "dev_split_seed": 0, "max_length": 66},
             ["--max-steps", "600"]),
    "trec": ("classification", {"train": "trec/train_5500.label.gz"},
             {"format": "label-first", "label_part": "coarse", "dev_split": 0.1, "dev_split_seed": 0, "max_length": 64},
             ["--epochs", "3"]),
}
WNUT = ("ner", {"train": "wnut17/wnut17train.conll.gz", "dev": "wnut17/emerging.dev.conll.gz"}, {})

#: --quick: the data bundled with nlpkit (tasks/data) stands in for the shared benchmark folder
QUICK_ROOT = C.ROOT / "tasks" / "data"
QUICK_FINETUNE = {"ner": ("ner", {"train": "ner/train.conll", "dev": "ner/dev.conll"}, {}, ["--max-steps", "30"])}
QUICK_WNUT = ("ner", {"train": "ner/train.conll", "dev": "ner/dev.conll"}, {})
QUICK_SOURCES = {"ner": ("ner", "ner/train.conll"), "sentiment": ("sentiment", "sentiment/train.tsv")}


def home() -> Path:
    """Where the run folders and the result cache go by default (C.CACHE is read at call time: tests move it)."""
    return C.CACHE / "pretraining-gain"


def code_version() -> str:
    return C.code_version("nlpkit", "tasks", "benchmarks/_common.py", str(SCRIPT.relative_to(C.ROOT)))


def _read(task_type: str, path: Path, options: dict[str, Any] | None = None):
    """A task and the examples it trains on from ``path`` (a dev share carved off as the fine-tuning run does)."""
    from nlpkit.sdk.data import carve_dev_split
    from nlpkit.sdk.registry import get_task_class

    task = get_task_class(task_type)(None, options or {})
    examples = task.read(str(path))
    fraction = (options or {}).get("dev_split")
    if fraction:  # keep only what the fine-tuning run trains on
        examples, _ = carve_dev_split(examples, fraction, options["dev_split_seed"], str(path))
    return task, examples


def _clean(out: dict[str, list[str]]) -> dict[str, list[str]]:
    return {k: [" ".join(t.split()) for t in v if t.strip()] for k, v in out.items()}


def train_texts(root: Path) -> dict[str, list[str]]:
    """Source name -> its training documents (one string each), read by nlpkit's own task readers."""
    out: dict[str, list[str]] = {}
    for name, (task_type, data, options, _) in FINETUNE.items():
        task, examples = _read(task_type, root / data["train"], {k: v for k, v in options.items() if k != "max_length"})
        out[name] = list(task.texts(examples))
    for name, task_type, path in (("wnut17", "ner", "wnut17/wnut17train.conll.gz"),
                                  ("semeval2010_task8", "relation-extraction", "semeval2010_task8/TRAIN_FILE.TXT.gz"),
                                  ("dialogsum", "summarization", "dialogsum/dialogsum.train.jsonl.gz")):
        task, examples = _read(task_type, root / path)
        # summaries are the labels of a summarization set: only its dialogues are unlabelled text
        out[name] = [e["source"] for e in examples] if task_type == "summarization" else list(task.texts(examples))
    with gzip.open(root / "multi30k" / "train.en.gz", "rt", encoding="utf-8") as f:
        out["multi30k_en"] = [line.strip() for line in f if line.strip()]
    return _clean(out)


def quick_texts() -> dict[str, list[str]]:
    """--quick: the train text of two bundled data sets."""
    out = {}
    for name, (task_type, path) in QUICK_SOURCES.items():
        task, examples = _read(task_type, QUICK_ROOT / path)
        out[name] = list(task.texts(examples))
    return _clean(out)


def build_corpus(root: Path, quick: bool = False) -> Path:
    folder = C.CACHE / "data" / ("pretrain-corpus-quick" if quick else "pretrain-corpus")
    if (folder / "SOURCES.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, docs in (quick_texts() if quick else train_texts(root)).items():
        (folder / f"{name}.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
        counts[name] = {"documents": len(docs), "characters": sum(len(d) for d in docs)}
    (folder / "SOURCES.json").write_text(json.dumps(counts, indent=2) + "\n")
    return folder


class Runner:
    """Runs `nlpkit train` subprocesses, or gives what the same command measured before with the same code."""

    def __init__(self, work: Path, cache: C.ResultCache):
        self.work, self.cache = work, cache
        self.keys: dict[str, str] = {}  # run folder -> the cache key of the run that fills it

    def settings(self, args: list[str]) -> dict[str, Any]:
        """The command as the cache sees it: a pretraining run's folder stands for the key of that run."""
        swapped = []
        for a in args:
            for folder, key in self.keys.items():
                a = a.replace(folder, f"<run {key}>")
            swapped.append(a)
        return {"nlpkit train": swapped}

    def train(self, args: list[str], out: Path, needs_folder: bool = False) -> dict[str, Any]:
        """One `nlpkit train`; its metrics.json (plus wall time and the log's corpus lines). ``needs_folder``: a later
        run starts from this run's folder, so a cached result counts only while the folder is still there."""
        settings = self.settings(args)
        metrics = self.cache.get(settings)
        if metrics is not None and (not needs_folder or (out / "metrics.json").is_file()):
            print(f"$ nlpkit train {' '.join(args)} --output-dir {out}\n  measured before with this code and settings "
                  f"({self.cache.path(settings).name})", flush=True)
        else:
            metrics = nlpkit_train(args, out, self.work / "logs")
            self.cache.put(settings, metrics)
        if needs_folder:
            self.keys[str(out)] = self.cache.key(settings)
        return metrics


def nlpkit_train(args: list[str], out: Path, log_dir: Path) -> dict[str, Any]:
    """One `nlpkit train` subprocess; returns its metrics.json (plus wall time and the log's corpus lines)."""
    cmd = [sys.executable, "-m", "nlpkit", "train", *args, "--output-dir", str(out), "--no-progress",
           "--resume", "never"]
    print("$ nlpkit train " + " ".join(args) + f" --output-dir {out}", flush=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{out.name}.log"
    t0 = time.time()
    with open(log_path, "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **C.OFFLINE_ENV})
    wall = time.time() - t0
    if done.returncode != 0:
        sys.exit(f"failed (exit {done.returncode}); see {log_path}")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["wall_s"] = wall
    metrics["corpus_lines"] = corpus_lines(log_path)
    return metrics


def content_key(folder: Path) -> str:
    """A hash of the files in a folder (names and bytes)."""
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file():
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def task_args(root: Path, task_type: str, data: dict[str, str], options: dict[str, Any]) -> list[str]:
    args = ["--task", task_type]
    for split, path in data.items():
        args += ["--data", f"{split}={root / path}"]
    for key, value in options.items():
        args += ["--option", f"{key}={value}"]
    return args


def corpus_lines(run_log: Path) -> list[str]:
    """The run log's lines about its corpus (documents, tokens, blocks, cache)."""
    return [line.strip() for line in run_log.read_text().splitlines() if " train: " in line or " dev: " in line
            if "documents" in line]


def dev_score(metrics: dict[str, Any]) -> tuple[str, float]:
    (name, scores), = metrics["tasks"].items()
    key = "f1" if "f1" in scores else "accuracy"
    return key, float(scores[key])


def main(argv=None) -> int:
    C.offline()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", choices=["corpus", "scratch", "continued"])
    p.add_argument("--data-root")
    p.add_argument("--work", default=None, help="run folders go here (default benchmarks/.cache/pretraining-gain, "
                                                "its quick/ subfolder with --quick)")
    p.add_argument("--pretrain-steps", type=int, default=None, help="default 600 (scratch), 300 (continued), 4 (--quick)")
    p.add_argument("--pretrain-batch", type=int, default=None, help="default 32 (8 with --quick)")
    p.add_argument("--block", type=int, default=None, help="default 128 (64 with --quick)")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help="default: CoNLL 1 epoch, SST-2 600 steps, TREC 3 epochs (scratch); 3 epochs (continued); "
                        "30 steps (--quick)")
    p.add_argument("--finetune-batch", type=int, default=None, help="default 32 (16 with --quick)")
    p.add_argument("--precision", default=None,
                   help="training precision of every run (default bf16: this CPU has it; fp32 with --quick)")
    p.add_argument("--tasks", default=None, help="scratch: which fine-tuning tasks (default: all of them)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--pretrain-lr", type=float, default=None, help="default 2e-4 (scratch), 1e-4 (continued)")
    p.add_argument("--pretrain-warmup", type=float, default=0.1, help="warm-up share of the pretraining steps")
    p.add_argument("--quick", action="store_true",
                   help="preset mini (scratch) or a tiny random BERT (continued, for MiniLM), the data bundled with "
                        "nlpkit, a few steps of each run: checks the plumbing, no GPU or shared data needed")
    p.add_argument("--fresh", action="store_true", help="train again what the result cache already holds")
    p.add_argument("--json", help="also write the tables' figures here")
    args = p.parse_args(argv)
    quick = args.quick
    finetune, wnut = (QUICK_FINETUNE, QUICK_WNUT) if quick else (FINETUNE, WNUT)
    root = QUICK_ROOT if quick else C.data_root(args.data_root)
    work = Path(args.work) if args.work else home() / ("quick" if quick else "")
    pretrain_batch = args.pretrain_batch or (8 if quick else 32)
    block = args.block or (64 if quick else 128)
    batch = args.finetune_batch or (16 if quick else 32)
    precision = args.precision or ("fp32" if quick else "bf16")
    common = ["--seed", str(args.seed), "--set", f"precision.compute={precision}"]
    if quick:  # no loss-curve plots: matplotlib costs a second or two per run
        common += ["--set", "logging.plots=false"]
    print(C.device_line(C.device_info()))
    version = code_version()
    print(f"code: {version}")
    runner = Runner(work, C.ResultCache(home() / "results", version, args.fresh))
    payload: dict[str, Any] = {"experiment": args.experiment, "quick": quick, "code": version}

    corpus = build_corpus(root, quick)
    sources = json.loads((corpus / "SOURCES.json").read_text())
    payload["corpus"] = sources
    print(C.markdown_table(["source (train split only)", "documents", "characters"],
                           [[k, f"{v['documents']:,}", f"{v['characters']:,}"] for k, v in sources.items()]))
    # the corpus folder is keyed by its content, not by its path: another corpus at the same path is another run
    runner.keys[str(corpus)] = f"corpus {content_key(corpus)}"
    if args.experiment == "corpus":
        C.save_json(args.json, payload)
        return 0

    if args.experiment == "scratch":
        steps = args.pretrain_steps or (4 if quick else 600)
        preset = "mini" if quick else "small"
        pre = work / f"pretrain-{preset}"
        m = runner.train(["--task", "masked-lm", "--backbone", preset, "--data", f"train={corpus}",
                          "--option", f"max_length={block}", "--option", "dev_split=0.01",
                          "--max-steps", str(steps), "--batch-size", str(pretrain_batch),
                          "--lr", str(args.pretrain_lr or 2e-4), "--set", f"trainer.warmup_ratio={args.pretrain_warmup}",
                          "--set", f"trainer.eval_every={max(1, steps // 6)}", *common], pre, needs_folder=True)
        print("\n".join(m.get("corpus_lines", [])))
        print(f"pretraining: {steps} steps, {m.get('train_tokens_per_s', 0):,.0f} tokens/s, wall {m['wall_s']:.0f} s, "
              f"dev {json.dumps(m['tasks'])}", flush=True)
        payload["pretraining"] = {"steps": steps, "tokens_per_s": m.get("train_tokens_per_s"), "wall_s": m["wall_s"],
                                  "dev": m["tasks"]}
        rows, payload["rows"] = [], []
        for name in (args.tasks or ",".join(finetune)).split(","):
            task_type, data, options, budget = finetune[name]
            budget = ["--max-steps", str(args.finetune_steps)] if args.finetune_steps else budget
            base = task_args(root, task_type, data, options) + budget + ["--batch-size", str(batch)] + common
            results = {}
            for side, backbone in (("scratch", preset), ("pretrained", str(pre))):
                results[side] = runner.train(base + ["--backbone", backbone], work / f"{name}-{side}")
            key, s0 = dev_score(results["scratch"])
            _, s1 = dev_score(results["pretrained"])
            rows.append([name, key, f"{s0:.2f}", f"{s1:.2f}", f"{s1 - s0:+.2f}", results["scratch"]["steps"],
                         f"{results['scratch']['wall_s']:.0f} / {results['pretrained']['wall_s']:.0f}"])
            payload["rows"].append({"task": name, "metric": key, "scratch": s0, "pretrained": s1, "gain": s1 - s0,
                                    "steps": results["scratch"]["steps"],
                                    "wall_s": [results["scratch"]["wall_s"], results["pretrained"]["wall_s"]]})
            print(C.markdown_table(["task", "dev metric", "from scratch", "pretrained first", "gain", "steps",
                                    "wall s (scratch / pretrained)"], rows), flush=True)
        C.save_json(args.json, payload)
        return 0

    # (b) continued pretraining of MiniLM on WNUT-17's train text (--quick: a tiny random BERT on the bundled NER text)
    steps = args.pretrain_steps or (4 if quick else 300)
    minilm = C.tiny_bert_folder() if quick else C.resolve_backbone("minilm")
    wnut_text = corpus / ("ner.txt" if quick else "wnut17.txt")
    pre = work / "minilm-mlm-wnut17"
    m = runner.train(["--task", "masked-lm", "--backbone", minilm, "--data", f"train={wnut_text}",
                      "--option", f"max_length={block}", "--option", "dev_split=0.02", "--option", "whole_word_mask=true",
                      "--max-steps", str(steps), "--batch-size", str(pretrain_batch),
                      "--lr", str(args.pretrain_lr or 1e-4), "--set", f"trainer.warmup_ratio={args.pretrain_warmup}",
                      "--set", f"trainer.eval_every={max(1, steps // 6)}", *common], pre, needs_folder=True)
    print("\n".join(m.get("corpus_lines", [])))
    print(f"continued pretraining: {steps} steps, wall {m['wall_s']:.0f} s, dev {json.dumps(m['tasks'])}", flush=True)
    task_type, data, options = wnut
    budget = (["--max-steps", str(args.finetune_steps or 30)] if args.finetune_steps or quick else ["--epochs", "3"])
    base = task_args(root, task_type, data, options) + budget + ["--batch-size", str(batch), "--lr", "1e-4"] + common
    results = {side: runner.train(base + ["--backbone", backbone], work / f"wnut17-{side}")
               for side, backbone in (("minilm", minilm), ("minilm+mlm", str(pre)))}
    _, s0 = dev_score(results["minilm"])
    _, s1 = dev_score(results["minilm+mlm"])
    print(C.markdown_table(["WNUT-17 dev" if not quick else "bundled NER dev (--quick)", "MiniLM" if not quick else
                            "tiny BERT", "MiniLM + continued masked-LM" if not quick else "tiny BERT + continued masked-LM",
                            "gain", "wall s"],
                           [["entity F1", f"{s0:.2f}", f"{s1:.2f}", f"{s1 - s0:+.2f}",
                             f"{results['minilm']['wall_s']:.0f} / {results['minilm+mlm']['wall_s']:.0f}"]]))
    payload["pretraining"] = {"steps": steps, "wall_s": m["wall_s"], "dev": m["tasks"]}
    payload["rows"] = [{"task": "wnut17" if not quick else "ner", "metric": "f1", "base": s0, "pretrained": s1,
                        "gain": s1 - s0, "wall_s": [results["minilm"]["wall_s"], results["minilm+mlm"]["wall_s"]]}]
    C.save_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
