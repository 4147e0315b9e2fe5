#!/usr/bin/env python
"""Does pretraining pay? Fine-tuning scores with and without an nlpkit pretraining run first.

    python benchmarks/pretraining_gain.py corpus      # the unlabelled TRAIN text of ../shared/benchmarks
    python benchmarks/pretraining_gain.py scratch     # (a) masked-LM on the `small` preset from scratch, then
                                                      #     CoNLL-2003, SST-2, TREC fine-tuned from it vs from scratch
    python benchmarks/pretraining_gain.py continued   # (b) continued masked-LM of MiniLM on WNUT-17 train text,
                                                      #     then WNUT-17 NER with vs without it

Every training is one `nlpkit train` command, run as a subprocess and printed before it runs, so each row of
the tables can be reproduced by hand. Both sides of a comparison get the same fine-tuning budget (steps, batch,
learning rate, seed); they differ only in ``--backbone`` (the preset or MiniLM, against the pretraining run).

Only train splits are pretrained on. Where a fine-tuning task has no dev file (SST-2, TREC here), its dev set is
carved from train exactly as the fine-tuning run carves it (``dev_split`` and ``dev_split_seed``), and those
held-out texts are left out of the pretraining corpus too. Dev scores only; no test split is read.
"""
from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

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


def train_texts(root: Path) -> dict[str, list[str]]:
    """Source name -> its training documents (one string each), read by nlpkit's own task readers."""
    from nlpkit.data import carve_dev_split
    from nlpkit.registry import get_task_class

    def read(task_type: str, path: Path, options: dict[str, Any] | None = None):
        task = get_task_class(task_type)(None, options or {})
        examples = task.read(str(path))
        fraction = (options or {}).get("dev_split")
        if fraction:  # keep only what the fine-tuning run trains on
            examples, _ = carve_dev_split(examples, fraction, options["dev_split_seed"], str(path))
        return task, examples

    out: dict[str, list[str]] = {}
    for name, (task_type, data, options, _) in FINETUNE.items():
        task, examples = read(task_type, root / data["train"], {k: v for k, v in options.items() if k != "max_length"})
        out[name] = list(task.texts(examples))
    for name, task_type, path in (("wnut17", "ner", "wnut17/wnut17train.conll.gz"),
                                  ("semeval2010_task8", "relation-extraction", "semeval2010_task8/TRAIN_FILE.TXT.gz"),
                                  ("dialogsum", "summarization", "dialogsum/dialogsum.train.jsonl.gz")):
        task, examples = read(task_type, root / path)
        # summaries are the labels of a summarization set: only its dialogues are unlabelled text
        out[name] = [e["source"] for e in examples] if task_type == "summarization" else list(task.texts(examples))
    with gzip.open(root / "multi30k" / "train.en.gz", "rt", encoding="utf-8") as f:
        out["multi30k_en"] = [line.strip() for line in f if line.strip()]
    return {k: [" ".join(t.split()) for t in v if t.strip()] for k, v in out.items()}


def build_corpus(root: Path) -> Path:
    folder = C.CACHE / "data" / "pretrain-corpus"
    if (folder / "SOURCES.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, docs in train_texts(root).items():
        (folder / f"{name}.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
        counts[name] = {"documents": len(docs), "characters": sum(len(d) for d in docs)}
    (folder / "SOURCES.json").write_text(json.dumps(counts, indent=2) + "\n")
    return folder


def nlpkit_train(args: list[str], out: Path, log_dir: Path) -> dict[str, Any]:
    """One `nlpkit train` subprocess; returns its metrics.json (plus wall time)."""
    cmd = [sys.executable, "-m", "nlpkit", "train", *args, "--output-dir", str(out), "--no-progress",
           "--resume", "never"]
    print("$ nlpkit train " + " ".join(args) + f" --output-dir {out}", flush=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log_dir / f"{out.name}.log", "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**__import__("os").environ, **C.OFFLINE_ENV})
    wall = time.time() - t0
    if done.returncode != 0:
        sys.exit(f"failed (exit {done.returncode}); see {log_dir / (out.name + '.log')}")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["wall_s"] = wall
    return metrics


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


def token_count(run: Path) -> int | None:
    log = run / "log.jsonl"
    for line in log.read_text().splitlines() if log.is_file() else []:
        rec = json.loads(line)
        if "corpus_tokens" in rec:
            return int(rec["corpus_tokens"])
    return None


def main(argv=None) -> int:
    C.offline()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", choices=["corpus", "scratch", "continued"])
    p.add_argument("--data-root")
    p.add_argument("--work", default=str(C.CACHE / "pretraining-gain"), help="run folders go here")
    p.add_argument("--pretrain-steps", type=int, default=None, help="default 600 (scratch), 300 (continued)")
    p.add_argument("--pretrain-batch", type=int, default=32)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--finetune-steps", type=int, default=None,
                   help="default: CoNLL 1 epoch, SST-2 600 steps, TREC 3 epochs (scratch); 3 epochs (continued)")
    p.add_argument("--precision", default="bf16", help="training precision of every run (bf16: this CPU has it)")
    p.add_argument("--tasks", default=",".join(FINETUNE), help="scratch: which fine-tuning tasks")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--pretrain-lr", type=float, default=None, help="default 2e-4 (scratch), 1e-4 (continued)")
    p.add_argument("--pretrain-warmup", type=float, default=0.1, help="warm-up share of the pretraining steps")
    args = p.parse_args(argv)
    root = C.data_root(args.data_root)
    work = Path(args.work)
    common = ["--seed", str(args.seed), "--set", f"trainer.precision={args.precision}"]

    corpus = build_corpus(root)
    sources = json.loads((corpus / "SOURCES.json").read_text())
    print(C.markdown_table(["source (train split only)", "documents", "characters"],
                           [[k, f"{v['documents']:,}", f"{v['characters']:,}"] for k, v in sources.items()]))
    if args.experiment == "corpus":
        return 0

    if args.experiment == "scratch":
        steps = args.pretrain_steps or 600
        pre = work / "pretrain-small"
        m = nlpkit_train(["--task", "masked-lm", "--backbone", "small", "--data", f"train={corpus}",
                          "--option", f"max_length={args.block}", "--option", "dev_split=0.01",
                          "--max-steps", str(steps), "--batch-size", str(args.pretrain_batch), "--lr", str(args.pretrain_lr or 2e-4),
                          "--set", f"trainer.warmup_ratio={args.pretrain_warmup}",
                          "--set", f"trainer.eval_every={max(1, steps // 6)}", *common], pre, work / "logs")
        print("\n".join(corpus_lines(work / "logs" / f"{pre.name}.log")))
        print(f"pretraining: {steps} steps, {m.get('train_tokens_per_s', 0):,.0f} tokens/s, wall {m['wall_s']:.0f} s, "
              f"dev {json.dumps(m['tasks'])}", flush=True)
        rows = []
        for name in args.tasks.split(","):
            task_type, data, options, budget = FINETUNE[name]
            budget = ["--max-steps", str(args.finetune_steps)] if args.finetune_steps else budget
            base = task_args(root, task_type, data, options) + budget + ["--batch-size", "32"] + common
            results = {}
            for side, backbone in (("scratch", "small"), ("pretrained", str(pre))):
                results[side] = nlpkit_train(base + ["--backbone", backbone], work / f"{name}-{side}", work / "logs")
            key, s0 = dev_score(results["scratch"])
            _, s1 = dev_score(results["pretrained"])
            rows.append([name, key, f"{s0:.2f}", f"{s1:.2f}", f"{s1 - s0:+.2f}", results["scratch"]["steps"],
                         f"{results['scratch']['wall_s']:.0f} / {results['pretrained']['wall_s']:.0f}"])
            print(C.markdown_table(["task", "dev metric", "from scratch", "pretrained first", "gain", "steps",
                                    "wall s (scratch / pretrained)"], rows), flush=True)
        return 0

    # (b) continued pretraining of MiniLM on WNUT-17's train text
    steps = args.pretrain_steps or 300
    minilm = C.resolve_backbone("minilm")
    wnut_text = corpus / "wnut17.txt"
    pre = work / "minilm-mlm-wnut17"
    m = nlpkit_train(["--task", "masked-lm", "--backbone", minilm, "--data", f"train={wnut_text}",
                      "--option", f"max_length={args.block}", "--option", "dev_split=0.02", "--option", "whole_word_mask=true",
                      "--max-steps", str(steps), "--batch-size", str(args.pretrain_batch),
                      "--lr", str(args.pretrain_lr or 1e-4), "--set", f"trainer.warmup_ratio={args.pretrain_warmup}",
                      "--set", f"trainer.eval_every={max(1, steps // 6)}", *common], pre, work / "logs")
    print("\n".join(corpus_lines(work / "logs" / f"{pre.name}.log")))
    print(f"continued pretraining: {steps} steps, wall {m['wall_s']:.0f} s, dev {json.dumps(m['tasks'])}", flush=True)
    task_type, data, options = WNUT
    budget = ["--max-steps", str(args.finetune_steps)] if args.finetune_steps else ["--epochs", "3"]
    base = task_args(root, task_type, data, options) + budget + ["--batch-size", "32", "--lr", "1e-4"] + common
    results = {side: nlpkit_train(base + ["--backbone", backbone], work / f"wnut17-{side}", work / "logs")
               for side, backbone in (("minilm", minilm), ("minilm+mlm", str(pre)))}
    _, s0 = dev_score(results["minilm"])
    _, s1 = dev_score(results["minilm+mlm"])
    print(C.markdown_table(["WNUT-17 dev", "MiniLM", "MiniLM + continued masked-LM", "gain", "wall s"],
                           [["entity F1", f"{s0:.2f}", f"{s1:.2f}", f"{s1 - s0:+.2f}",
                             f"{results['minilm']['wall_s']:.0f} / {results['minilm+mlm']['wall_s']:.0f}"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
