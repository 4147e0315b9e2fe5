#!/usr/bin/env python
"""Data at scale: nlpkit against `datasets` + the Hugging Face Trainer on N-row files, whole process.

For each task and each row count N, a data file of N rows of real sentences is written once (cycling
through the source sentences until N is reached) and trained on for a few steps by each side, one run
after the other, each in a fresh process:

- nlpkit: ``nlpkit train`` (the CLI, as a user runs it);
- HF: the way the Hugging Face examples do it (run_glue.py / run_ner.py / run_translation.py):
  ``datasets.load_dataset("csv"|"json", cache_dir=...)``, a batched ``map(tokenize, num_proc=...)``,
  then ``Trainer`` (``Seq2SeqTrainer`` for translation), as ``python data_scale.py --worker SPEC``.

Each (side, task, N) runs twice: the first run starts with that side's cache folder emptied, the second
reuses what the first left (nlpkit's encode cache, `datasets`' Arrow and ``map`` cache files). Both sides
train in fp32 with batch 32, max length 128, AdamW lr 5e-5 (weight decay 0.01, no warm-up, clip 1.0),
the same number of steps and encode processes, evaluate once at the end on the same dev file and save
once at the end (a model copy and a resumable checkpoint with the optimizer state).

Measured per run: wall time from launch to exit; encode time (nlpkit: the ``encode`` phase of
metrics.json; HF: the ``map`` calls); start-up, everything before the first training step (both: from
the launch to the start of step 1); peak memory of the whole process tree (the run and every process it
starts, e.g. ``map``'s workers), sampled every 50 ms from /proc/PID/status: total RSS, anonymous memory
(RssAnon) and file-backed memory (RssFile + RssShmem: memory-mapped Arrow pages count here), each the
peak of the sum over the tree; and, every 0.5 s, the tree's proportional set size (PSS), which counts a page
that forked workers share with their parent once rather than once per process.

    python benchmarks/data_scale.py --rows 100000                       # classification, MiniLM
    python benchmarks/data_scale.py --rows 1000000,5000000 --task all
    python benchmarks/data_scale.py --rows 10000000 --sides nlpkit       # does 10M complete? its peak
    python benchmarks/data_scale.py --quick                              # tiny BERT, bundled data: plumbing

Results are kept per (code version, settings, task, N, side) in benchmarks/.cache/data_scale/results,
so running again only measures what is missing (--fresh measures again).
"""
from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()
TASKS = ("classification", "ner", "translation")
BUNDLED = C.ROOT / "tasks" / "data"
GB = 2**30


def home() -> Path:
    """Everything this script writes (C.CACHE is read at call time: the tests point it elsewhere)."""
    return C.CACHE / "data_scale"


# ===================================================================================================
# data: N rows of real sentences, cycled
# ===================================================================================================
def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if str(path).endswith(".gz") else open(path, encoding="utf-8")


def _lines(path: Path) -> list[str]:
    with _open(path) as f:
        return [line.rstrip("\r\n") for line in f]


def _csv_rows(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [(r["text"], r["label"]) for r in rows]


def sources(task: str, quick: bool, root: Path | None, dev_rows: int) -> tuple[list, list, str]:
    """(pool of training items, dev items, description). Items: classification (text, label);
    ner (words, tags); translation (en, de)."""
    if quick:  # the data bundled with nlpkit: no shared folder, no model package
        if task == "classification":
            train, dev = _csv_rows(BUNDLED / "classification" / "train.csv"), _csv_rows(BUNDLED / "classification" / "dev.csv")
            desc = "tasks/data/classification (bundled, 4 topics)"
        elif task == "ner":
            train = C.read_conll_sentences(BUNDLED / "ner" / "train.conll")
            dev = C.read_conll_sentences(BUNDLED / "ner" / "dev.conll")
            desc = "tasks/data/ner (bundled)"
        else:
            t = BUNDLED / "translation"
            train = list(zip(_lines(t / "train.en"), _lines(t / "train.de")))
            dev = list(zip(_lines(t / "dev.en"), _lines(t / "dev.de")))
            desc = "tasks/data/translation (bundled en-de)"
        return train, dev[:dev_rows], desc
    assert root is not None
    if task == "classification":
        sst2 = [(s, lab) for lab, s in C.read_tsv(root / "sst2" / "train.tsv.gz") if s.strip()]
        dev, sst2 = sst2[-dev_rows:], sst2[:-dev_rows]
        m30k = [s for s in _lines(root / "multi30k" / "train.en.gz") if s.strip()]
        # Multi30k has no labels: 0/1 alternating, a deterministic rule (the scores mean nothing here; the sentences
        # are real, which is what the tokenizer's cost depends on)
        pool = sst2 + [(s, str(i % 2)) for i, s in enumerate(m30k)]
        desc = (f"SST-2 train ({len(sst2)} rows; its last {dev_rows} are the dev file) + Multi30k train.en "
                f"({len(m30k)} sentences, labels 0/1 alternating)")
        return pool, dev, desc
    if task == "ner":
        pool = C.read_conll_sentences(root / "conll2003" / "train.txt.gz")
        dev = C.read_conll_sentences(root / "conll2003" / "valid.txt.gz")[:dev_rows]
        return pool, dev, f"CoNLL-2003 train ({len(pool)} sentences); dev: the first {len(dev)} of valid"
    m = root / "multi30k"
    pool = [(e, d) for e, d in zip(_lines(m / "train.en.gz"), _lines(m / "train.de.gz")) if e.strip() and d.strip()]
    dev = [(e, d) for e, d in zip(_lines(m / "val.en.gz"), _lines(m / "val.de.gz")) if e.strip() and d.strip()][:dev_rows]
    return pool, dev, f"Multi30k en-de train ({len(pool)} pairs); dev: the first {len(dev)} pairs of val"


def _serialise(task: str, fmt: str, item) -> str:
    """One item as the text it takes in a file of that format (records of a file end with a newline)."""
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(item)
        return buf.getvalue()
    if fmt == "conll":
        words, tags = item
        return "".join(f"{w} {t}\n" for w, t in zip(words, tags)) + "\n"
    if task == "ner":  # run_ner.py's JSON layout
        return json.dumps({"tokens": item[0], "ner_tags": item[1]}, ensure_ascii=False) + "\n"
    return json.dumps({"translation": {"en": item[0], "de": item[1]}}, ensure_ascii=False) + "\n"


#: per task: (format, extension) of the file each side reads. Both read the same file, except NER: nlpkit reads
#: CoNLL, and `datasets` has no CoNLL loader, so the HF side reads run_ner.py's JSON lines of the same sentences.
FORMATS = {"classification": {"nlpkit": ("csv", "csv"), "hf": ("csv", "csv")},
           "ner": {"nlpkit": ("conll", "conll"), "hf": ("json", "jsonl")},
           "translation": {"nlpkit": ("json", "jsonl"), "hf": ("json", "jsonl")}}


def write_cycled(path: Path, task: str, fmt: str, items: list, n: int) -> Path:
    """``n`` records cycling through ``items``, written once (an existing file of that name is the same data)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    texts = [_serialise(task, fmt, it) for it in items]
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        if fmt == "csv":
            f.write("text,label\n")
        chunk = 10_000
        for start in range(0, n, chunk):
            f.write("".join(texts[i % len(texts)] for i in range(start, min(n, start + chunk))))
    os.replace(tmp, path)
    return path


def data_files(task: str, rows: int, pool: list, dev: list, tag: str) -> dict[str, dict[str, str]]:
    """{side: {"train": path, "dev": path}}; files shared by both sides are written once."""
    folder = home() / "data"
    out: dict[str, dict[str, str]] = {}
    for side, (fmt, ext) in FORMATS[task].items():
        out[side] = {"train": str(write_cycled(folder / f"{tag}-{task}-{rows}.{ext}", task, fmt, pool, rows)),
                     "dev": str(write_cycled(folder / f"{tag}-{task}-dev{len(dev)}.{ext}", task, fmt, dev, len(dev)))}
    return out


# ===================================================================================================
# memory of a process tree, sampled from /proc
# ===================================================================================================
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name (field 2) may hold spaces and parentheses: split after its last ")"
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def tree(root: int) -> list[int]:
    kids, out, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def _proc_kb(pid: int, name: str, keys: tuple[bytes, ...]) -> dict[str, int] | None:
    """The kB fields ``keys`` of /proc/PID/NAME; None when the process is gone."""
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            text = f.read()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(b":")
        if key in keys:
            out[key.decode()] = int(rest.split()[0])
    return out


def _status_kb(pid: int) -> dict[str, int] | None:
    return _proc_kb(pid, "status", (b"VmRSS", b"RssAnon", b"RssFile", b"RssShmem"))


def _rollup_kb(pid: int) -> dict[str, int] | None:
    """Proportional set sizes: a page shared by k processes counts 1/k in each (Linux 4.14+)."""
    return _proc_kb(pid, "smaps_rollup", (b"Pss", b"Pss_Anon", b"Pss_File", b"Pss_Shmem"))


class TreeMemory(threading.Thread):
    """Peak memory of the process tree of ``pid``: RSS, RssAnon and RssFile+RssShmem, each summed over the tree,
    every ``interval`` s; and the same as proportional set sizes (PSS) every ``pss_interval`` s.

    A forked worker (``map(num_proc=N)``) shares its parent's pages copy-on-write: summed RSS counts such a page
    once per process (as ``ps`` and ``top`` add up), PSS counts it once in all. Reading PSS walks the page tables
    (milliseconds per GB), hence the slower rate. Both sides are measured the same way."""

    KEYS = ("rss", "anon", "file", "pss", "pss_anon", "pss_file")

    def __init__(self, pid: int, interval: float = 0.05, pss_interval: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.pss_every = max(1, round(pss_interval / interval)) if pss_interval > 0 else 0
        self.peak = dict.fromkeys(self.KEYS, 0)
        self.max_processes = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def sample(self) -> None:
        total = dict.fromkeys(self.KEYS, 0)
        pss = self.pss_every and self.samples % self.pss_every == 0
        n = 0
        for pid in tree(self.pid):
            s = _status_kb(pid)
            if not s or "VmRSS" not in s:  # gone, or a zombie
                continue
            n += 1
            total["rss"] += s["VmRSS"]
            total["anon"] += s.get("RssAnon", 0)
            total["file"] += s.get("RssFile", 0) + s.get("RssShmem", 0)
            r = _rollup_kb(pid) if pss else None
            if r:
                total["pss"] += r.get("Pss", 0)
                total["pss_anon"] += r.get("Pss_Anon", 0)
                total["pss_file"] += r.get("Pss_File", 0) + r.get("Pss_Shmem", 0)
        if n:
            self.samples += 1
            self.max_processes = max(self.max_processes, n)
            for key, value in total.items():
                self.peak[key] = max(self.peak[key], value * 1024)

    def stop(self) -> dict[str, Any]:
        self._halt.set()
        self.join()
        return {**{f"peak_{k}_gb": v / GB for k, v in self.peak.items()}, "max_processes": self.max_processes,
                "memory_samples": self.samples}


def launch(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run ``cmd`` to its end with its output in ``log``; wall time and the tree's peak memory."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        launched_at = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=C.ROOT)
        meter = TreeMemory(proc.pid)
        meter.sample()
        meter.start()
        try:
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            # the last sample is taken while the process is still there or never: the exit unmaps everything anyway
            memory = meter.stop()
        wall = time.perf_counter() - start
    if rc != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {rc}); log {log}:\n{tail}")
    return {"wall_s": wall, "launched_at": launched_at, **memory}


# ===================================================================================================
# the nlpkit side: the CLI
# ===================================================================================================
def nlpkit_data_settings() -> set[str]:
    """The keys of nlpkit's ``data:`` section in this checkout (empty before it exists)."""
    import dataclasses

    from nlpkit.engine.config import RunConfig

    field = {f.name: f for f in dataclasses.fields(RunConfig)}.get("data")
    if field is None or not dataclasses.is_dataclass(field.default_factory):
        return set()
    return {f.name for f in dataclasses.fields(field.default_factory)}


def nlpkit_command(spec: dict[str, Any]) -> list[str]:
    exe = Path(sys.executable).with_name("nlpkit")
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "nlpkit"]), "train",
           "--task", spec["task"], "--backbone", spec["backbone"],
           "--data", f"train={spec['train']}", "--data", f"dev={spec['dev']}",
           "--max-steps", str(spec["steps"]), "--batch-size", str(spec["batch_size"]), "--lr", str(spec["lr"]),
           "--seed", str(spec["seed"]), "--precision", "fp32", "--output-dir", spec["output_dir"], "--resume", "never",
           "--no-progress",
           "--option", f"max_length={spec['max_length']}",
           "--set", f"trainer.eval_batch_size={spec['eval_batch_size']}",
           "--set", "trainer.warmup_ratio=0", "--set", "trainer.weight_decay=0.01",
           "--set", f"trainer.eval_every={spec['steps']}",  # one evaluation, at the end
           "--set", "checkpoint.save_minutes=null",  # saving once, at the end, however long the encoding took
           "--set", "logging.log_every=1",  # step 1's log record has the time the start-up is read from
           "--set", "logging.tensorboard=false", "--set", "logging.plots=false"]
    if not spec["nlpkit_group_by_length"]:  # random batches, as the HF Trainer draws them
        cmd += ["--set", "performance.group_by_length=false"]
    if spec["task"] == "translation":
        cmd += ["--option", f"max_target_length={spec['max_target_length']}", "--option", "num_beams=1"]
    keys = spec["nlpkit_data_keys"]
    if "num_proc" in keys:
        cmd += ["--set", f"data.num_proc={spec['num_proc']}"]
    if "cache_dir" in keys:
        cmd += ["--set", f"data.cache_dir={spec['cache_dir']}"]
    return cmd


def nlpkit_run(spec: dict[str, Any], env: dict[str, str], log: Path) -> dict[str, Any]:
    out_dir = Path(spec["output_dir"])
    shutil.rmtree(out_dir, ignore_errors=True)
    res = launch(nlpkit_command(spec), env, log)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    phases = metrics.get("phases", {})
    step1 = None
    for line in (out_dir / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("step") == 1 and "time" in rec and any(k.startswith("loss") for k in rec):
            step1 = rec["time"]
            break
    before = [k for k in phases if k not in ("other", "total")]
    before = before[: before.index("first_step")] if "first_step" in before else before
    if step1 is not None and "first_step" in phases:  # the end of step 1, less step 1: where step 1 began
        startup = step1 - phases["first_step"] - res["launched_at"]
    else:  # the phases before the first step (imports and the interpreter's launch left out)
        startup = sum(phases[k] for k in before)
    scores = metrics.get("tasks", {}).get(spec["task"], {})
    logged = log.read_text(errors="replace")
    return {**res, "encode_s": phases.get("encode"), "read_s": phases.get("read"), "startup_s": startup,
            "startup_phases": {k: phases[k] for k in before}, "phases": phases, "steps": metrics.get("steps"),
            "dev": {k: v for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
            "features_cached": "features: cached" in logged,
            "time_line": next((l for l in logged.splitlines()[::-1] if "time: " in l), None)}


# ===================================================================================================
# the HF side (a worker process): run_glue.py / run_ner.py / run_translation.py
# ===================================================================================================
def hf_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import load_dataset
    from transformers import AutoTokenizer, TrainerCallback, set_seed

    set_seed(spec["seed"])
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    kind = "csv" if spec["task"] == "classification" else "json"
    raw = load_dataset(kind, data_files={"train": spec["train"], "validation": spec["dev"]},
                       cache_dir=spec["cache_dir"])
    timing["read_s"] = time.perf_counter() - t0
    tokenizer = AutoTokenizer.from_pretrained(spec["backbone"])
    build = {"classification": _hf_classification, "ner": _hf_ner, "translation": _hf_translation}[spec["task"]]
    model, preprocess, collator, compute_metrics, drop = build(spec, tokenizer, raw)

    started = time.time()
    t0 = time.perf_counter()
    num_proc = spec["num_proc"] if spec["num_proc"] > 1 else None
    encoded = raw.map(preprocess, batched=True, num_proc=num_proc, remove_columns=drop, desc="tokenizing")
    timing["encode_s"] = time.perf_counter() - t0
    files = [f["filename"] for split in encoded.values() for f in split.cache_files]
    mapped = [f for f in files if Path(f).name.startswith("cache-")]
    # map wrote its files in this run, or found them (a second run): the files' age says which
    timing["map_cache_hit"] = bool(mapped) and all(os.path.getmtime(f) < started for f in mapped)

    first_step: list[float] = []

    class FirstStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if not first_step:
                first_step.append(time.time())

    seq2seq = spec["task"] == "translation"
    if seq2seq:
        from transformers import Seq2SeqTrainer as Trainer, Seq2SeqTrainingArguments as Arguments
    else:
        from transformers import Trainer, TrainingArguments as Arguments
    extra = dict(predict_with_generate=True, generation_max_length=spec["max_target_length"] + 1,
                 generation_num_beams=1) if seq2seq else {}
    args = Arguments(
        output_dir=spec["output_dir"], per_device_train_batch_size=spec["batch_size"],
        per_device_eval_batch_size=spec["eval_batch_size"], learning_rate=spec["lr"], weight_decay=0.01,
        warmup_steps=0, lr_scheduler_type="linear", max_grad_norm=1.0, max_steps=spec["steps"], seed=spec["seed"],
        use_cpu=not torch.cuda.is_available(), bf16=False, fp16=False,
        eval_strategy="no",  # the examples evaluate after training (do_eval): trainer.evaluate() below
        save_strategy="steps", save_steps=spec["steps"],  # one resumable checkpoint, at the end
        logging_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, **extra)
    trainer = Trainer(model=model, args=args, train_dataset=encoded["train"], eval_dataset=encoded["validation"],
                      processing_class=tokenizer, data_collator=collator, compute_metrics=compute_metrics,
                      callbacks=[FirstStep()])
    t0 = time.perf_counter()
    out = trainer.train()  # the steps, and the checkpoint at the last one
    timing["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.save_model()  # as the examples do after training: the model and tokenizer
    timing["save_model_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = trainer.evaluate()
    timing["evaluation_s"] = time.perf_counter() - t0
    return {"system": "hf", **timing, "startup_s": first_step[0] - spec["launched_at"] if first_step else None,
            "steps": out.global_step, "rows": len(encoded["train"]),
            "dev": {k.removeprefix("eval_"): v for k, v in scores.items() if isinstance(v, (int, float))},
            "params": sum(p.numel() for p in model.parameters())}


def _hf_classification(spec, tokenizer, raw):
    import numpy as np
    from transformers import AutoConfig, AutoModelForSequenceClassification, DataCollatorWithPadding

    label_list = sorted(raw["train"].unique("label"))  # run_glue.py, for csv/json files
    label_to_id = {label: i for i, label in enumerate(label_list)}
    config = AutoConfig.from_pretrained(spec["backbone"], num_labels=len(label_list),
                                        id2label={i: str(l) for i, l in enumerate(label_list)},
                                        label2id={str(l): i for i, l in enumerate(label_list)})
    model = AutoModelForSequenceClassification.from_pretrained(spec["backbone"], config=config)
    max_length = spec["max_length"]

    def preprocess(examples):
        # dynamic padding (run_glue.py --pad_to_max_length False), as nlpkit pads: to the batch's longest
        result = tokenizer(examples["text"], padding=False, max_length=max_length, truncation=True)
        # a new column: datasets 5 keeps an updated column's type (string labels would stay strings)
        result["labels"] = [label_to_id[label] for label in examples["label"]]
        return result

    def compute_metrics(p):
        return {"accuracy": 100 * float((np.argmax(p.predictions, axis=1) == p.label_ids).mean())}

    return model, preprocess, DataCollatorWithPadding(tokenizer), compute_metrics, ["text", "label"]


def _hf_ner(spec, tokenizer, raw):
    import numpy as np
    import pyarrow.compute as pc
    from seqeval.metrics import f1_score
    from transformers import AutoConfig, AutoModelForTokenClassification, DataCollatorForTokenClassification

    # run_ner.py collects the label set in Python over every sentence; Arrow does it in C here (same set, less time)
    tags = raw["train"].data.column("ner_tags")
    label_list = sorted(pc.unique(pc.list_flatten(tags)).to_pylist())
    label_to_id = {label: i for i, label in enumerate(label_list)}
    config = AutoConfig.from_pretrained(spec["backbone"], num_labels=len(label_list), finetuning_task="ner",
                                        id2label=dict(enumerate(label_list)), label2id=label_to_id)
    model = AutoModelForTokenClassification.from_pretrained(spec["backbone"], config=config)
    max_length = spec["max_length"]

    def preprocess(examples):  # run_ner.py's tokenize_and_align_labels, label_all_tokens=False
        tokenized = tokenizer(examples["tokens"], padding=False, truncation=True, max_length=max_length,
                              is_split_into_words=True)
        labels = []
        for i, label in enumerate(examples["ner_tags"]):
            previous, ids = None, []
            for word_idx in tokenized.word_ids(batch_index=i):
                ids.append(-100 if word_idx is None or word_idx == previous else label_to_id[label[word_idx]])
                previous = word_idx
            labels.append(ids)
        tokenized["labels"] = labels
        return tokenized

    def compute_metrics(p):
        predictions, labels = p
        predictions = np.argmax(predictions, axis=2)
        true_p = [[label_list[p] for p, l in zip(pr, la) if l != -100] for pr, la in zip(predictions, labels)]
        true_l = [[label_list[l] for p, l in zip(pr, la) if l != -100] for pr, la in zip(predictions, labels)]
        return {"f1": 100 * f1_score(true_l, true_p)}

    return model, preprocess, DataCollatorForTokenClassification(tokenizer), compute_metrics, ["tokens", "ner_tags"]


def _hf_translation(spec, tokenizer, raw):
    import numpy as np
    from transformers import DataCollatorForSeq2Seq, EncoderDecoderModel

    # no pretrained encoder-decoder offline: bert2bert, both halves from the backbone (the decoder gets causal
    # self-attention and new cross-attention), as the EncoderDecoderModel docs show
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(spec["backbone"], spec["backbone"])
    model.config.decoder_start_token_id = tokenizer.cls_token_id
    model.config.eos_token_id = tokenizer.sep_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.decoder_start_token_id = tokenizer.cls_token_id
    model.generation_config.eos_token_id = tokenizer.sep_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    max_source, max_target = spec["max_length"], spec["max_target_length"]

    def preprocess(examples):  # run_translation.py
        inputs = [ex["en"] for ex in examples["translation"]]
        targets = [ex["de"] for ex in examples["translation"]]
        model_inputs = tokenizer(inputs, max_length=max_source, padding=False, truncation=True)
        labels = tokenizer(text_target=targets, max_length=max_target, padding=False, truncation=True)
        model_inputs["labels"] = labels["input_ids"]
        return model_inputs

    def compute_metrics(p):
        from sacrebleu.metrics import BLEU

        preds, labels = p
        preds = np.where(preds != -100, preds, tokenizer.pad_token_id)
        labels = np.where(labels != -100, labels, tokenizer.pad_token_id)
        hyps = [s.strip() for s in tokenizer.batch_decode(preds, skip_special_tokens=True)]
        refs = [s.strip() for s in tokenizer.batch_decode(labels, skip_special_tokens=True)]
        return {"bleu": BLEU().corpus_score(hyps, [refs]).score}

    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    return model, preprocess, collator, compute_metrics, ["translation"]


# ===================================================================================================
# orchestration
# ===================================================================================================
def code_version() -> str:
    """What the results are keyed by: nlpkit/, tasks/, the benchmark helpers and this script, as committed plus
    any uncommitted change."""
    return C.code_version("nlpkit", "tasks", "benchmarks/_common.py", str(SCRIPT.relative_to(C.ROOT)))


def _env(side_cache: Path) -> dict[str, str]:
    env = {**os.environ, **C.OFFLINE_ENV, "NLPKIT_CACHE": str(side_cache / "nlpkit-home"),
           "HF_DATASETS_CACHE": str(side_cache / "datasets"), "TOKENIZERS_PARALLELISM": "false"}
    return env


def run_pair(side: str, task: str, rows: int, files: dict[str, str], settings: dict[str, Any],
             verbose: bool) -> list[dict[str, Any]]:
    """The first run (the side's cache emptied) and the second (the cache as the first left it)."""
    name = f"{side}-{task}-{rows}"
    side_cache = home() / "caches" / name
    shutil.rmtree(side_cache, ignore_errors=True)
    side_cache.mkdir(parents=True)
    runs = []
    for which in ("first", "second"):
        out_dir = home() / "runs" / f"{name}-{which}"
        shutil.rmtree(out_dir, ignore_errors=True)
        log = home() / "logs" / f"{name}-{which}.log"
        spec = {**settings, "task": task, "train": files["train"], "dev": files["dev"], "output_dir": str(out_dir),
                "cache_dir": str(side_cache / ("features" if side == "nlpkit" else "datasets"))}
        t0 = time.time()
        if side == "nlpkit":
            res = nlpkit_run(spec, _env(side_cache), log)
        else:
            res = hf_run(spec, _env(side_cache), log)
        res.update(side=side, task=task, rows=rows, run=which, log=str(log))
        shutil.rmtree(out_dir, ignore_errors=True)  # the checkpoints: hundreds of MB per run with MiniLM
        runs.append(res)
        print(f"   {side:>6} {rows:>10,} {which:>6}: wall {res['wall_s']:7.1f} s  encode {C.fmt(res.get('encode_s'), 2):>7} s  "
              f"start-up {C.fmt(res.get('startup_s'), 2):>7} s  peak RSS {res['peak_rss_gb']:.2f} GB "
              f"(anon {res['peak_anon_gb']:.2f}, file {res['peak_file_gb']:.2f})  ({time.time() - t0:.0f} s)", flush=True)
        if verbose:
            print(log.read_text(errors="replace")[-3000:])
    shutil.rmtree(side_cache, ignore_errors=True)
    return runs


def hf_run(spec: dict[str, Any], env: dict[str, str], log: Path) -> dict[str, Any]:
    """``data_scale.py --worker SPEC``: the worker times its first step from the launch time in its spec."""
    Path(spec["output_dir"]).mkdir(parents=True, exist_ok=True)
    spec_path, result_path = Path(spec["output_dir"]) / "spec.json", Path(spec["output_dir"]) / "result.json"
    spec = {**spec, "system": "hf", "result": str(result_path), "workdir": spec["output_dir"], "launched_at": time.time()}
    spec_path.write_text(json.dumps(spec))
    res = launch([sys.executable, str(SCRIPT), "--worker", str(spec_path)], env, log)
    worker = json.loads(result_path.read_text())
    return {**res, **{k: v for k, v in worker.items() if k != "system"}}


def result_key(side: str, task: str, rows: int, settings: dict[str, Any], version: str, repeat: int = 0) -> str:
    keep = {k: v for k, v in settings.items() if k not in ("nlpkit_data_keys",)}
    blob = json.dumps({"side": side, "task": task, "rows": rows, "settings": keep, "code": version,
                       **({"repeat": repeat} if repeat else {})}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--task", action="append", choices=[*TASKS, "all"],
                   help="repeatable; 'all' for the three (default: classification)")
    p.add_argument("--rows", help="comma-separated row counts (default 100000,1000000,5000000; 2000 with --quick)")
    p.add_argument("--sides", default="nlpkit,hf", help="nlpkit,hf (default both)")
    p.add_argument("--num-proc", type=int, default=1, help="encode processes, both sides (default 1)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 20; 2 with --quick)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--dev-rows", type=int, default=None,
                   help="dev file rows (default 1000, 200 for translation: every dev sentence is generated; "
                        "50 and 20 with --quick)")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--data-root", help="the shared benchmark folder (default: found as the other benchmarks find it)")
    p.add_argument("--target-rows", help="R1,R2: the row counts the targets name (default 1000000,5000000; "
                                         "with --quick the smallest and largest --rows)")
    p.add_argument("--quick", action="store_true", help="tiny BERT, bundled data, 2000 rows, 2 steps: the plumbing")
    p.add_argument("--no-length-grouping", action="store_true",
                   help="nlpkit draws random batches as the HF Trainer does (performance.group_by_length=false); "
                        "default: each side's own default (nlpkit groups by length)")
    p.add_argument("--fresh", action="store_true", help="measure again what the result cache already holds")
    p.add_argument("--json", help="write the results here (default benchmarks/.cache/data_scale/last.json)")
    p.add_argument("--verbose", action="store_true", help="print the tail of every run's log")
    p.add_argument("--repeats", type=int, default=1,
                   help="measure each side this many times, the order of the sides alternating from one repeat to "
                        "the next; tables give medians, and the first-run wall ratio a bootstrap 95%% interval")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    tasks = args.task or ["classification"]
    args.tasks = list(TASKS) if "all" in tasks else list(dict.fromkeys(tasks))
    args.rows = [int(r.replace("_", "")) for r in (args.rows or ("2000" if args.quick else "100000,1000000,5000000")).split(",")]
    args.sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if not args.sides or set(args.sides) - {"nlpkit", "hf"}:
        p.error("--sides: nlpkit, hf or both")
    if args.num_proc < 1:
        p.error("--num-proc must be >= 1")
    args.steps = args.steps or (2 if args.quick else 20)
    if args.target_rows:
        args.target = [int(r) for r in args.target_rows.split(",")][:2]
    elif args.quick:
        args.target = [min(args.rows), max(args.rows)]
    else:
        args.target = [1_000_000, 5_000_000]
    return args


def main(argv=None) -> int:
    C.offline()
    args = parse_args(argv)
    info = C.device_info()
    print(C.device_line(info))
    print(C.versions() + f", datasets {__import__('datasets').__version__}")
    backbone = C.tiny_bert_folder() if args.quick else C.resolve_backbone(args.backbone)
    root = None if args.quick else C.data_root(args.data_root)
    data_keys = nlpkit_data_settings() if "nlpkit" in args.sides else set()
    version = code_version()
    print(f"backbone: {'tiny random BERT (--quick)' if args.quick else args.backbone} -> {backbone}")
    print(f"code: {version}; encode processes: {args.num_proc}; {args.steps} steps x batch {args.batch_size}, "
          f"max length {args.max_length}, fp32, lr 5e-5")
    if "nlpkit" in args.sides:
        missing = {"num_proc", "cache_dir"} - data_keys
        print("nlpkit data settings: " + (f"data.num_proc and data.cache_dir passed" if not missing else
              f"this nlpkit has no data.{' / data.'.join(sorted(missing))}: not passed ($NLPKIT_CACHE points to the "
              "side's cache folder all the same)"))
    print_differences(args)
    payload: dict[str, Any] = {"device": info, "versions": C.versions(), "code": version, "backbone": backbone,
                               "args": {k: v for k, v in vars(args).items()}, "tasks": {}}
    for task in args.tasks:
        dev_rows = args.dev_rows or {True: {"translation": 20}, False: {"translation": 200}}[args.quick].get(
            task, 50 if args.quick else 1000)
        pool, dev, desc = sources(task, args.quick, root, dev_rows)
        print(f"\n== {task}: {desc}, cycled to each row count", flush=True)
        settings = {"backbone": backbone, "steps": args.steps, "batch_size": args.batch_size,
                    "eval_batch_size": 2 * args.batch_size, "max_length": args.max_length,
                    "max_target_length": 32 if args.quick else args.max_length, "lr": 5e-5, "seed": 42,
                    "num_proc": args.num_proc, "dev_rows": len(dev), "source": "bundled" if args.quick else "shared",
                    "nlpkit_group_by_length": not args.no_length_grouping, "nlpkit_data_keys": sorted(data_keys)}
        runs: list[dict[str, Any]] = []
        for rows in args.rows:
            files = data_files(task, rows, pool, dev, settings["source"])
            for repeat in range(args.repeats):
                for side in args.sides if repeat % 2 == 0 else args.sides[::-1]:
                    cached = home() / "results" / f"{result_key(side, task, rows, settings, version, repeat)}.json"
                    if cached.exists() and not args.fresh:
                        pair = json.loads(cached.read_text())
                        print(f"   {side:>6} {rows:>10,} #{repeat + 1}: measured before with this code and settings "
                              f"({cached.name})")
                    else:
                        pair = run_pair(side, task, rows, files[side], settings, args.verbose)
                        cached.parent.mkdir(parents=True, exist_ok=True)
                        cached.write_text(json.dumps(pair, indent=2))
                    runs += [{**r, "repeat": repeat} for r in pair]
        print()
        summary = medians(runs)
        print(table(summary))
        for line in wall_ratios(runs):
            print(line)
        checks = targets(summary, args.target)
        print()
        print(C.markdown_table(["target", "measured", "met"], [[c["target"], c["measured"], c["met"]] for c in checks]))
        payload["tasks"][task] = {"data": desc, "settings": settings, "runs": runs, "checks": checks}
    out = args.json or str(home() / "last.json")
    C.save_json(out, payload)
    return 0


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (rows, side, run): the median of each figure over the repeats, and n."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["rows"], r["side"], r["run"]), []).append(r)
    out = []
    for (rows, side, run), rs in groups.items():
        row = {"rows": rows, "side": side, "run": run, "n": len(rs)}
        for key in rs[0]:
            values = [r[key] for r in rs if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
            if key not in row and len(values) == len(rs):
                row[key] = statistics.median(values)
        out.append(row)
    return out


def wall_ratios(runs: list[dict[str, Any]]) -> list[str]:
    """nlpkit's first-run wall time over the HF side's, per row count, with a bootstrap 95% interval."""
    lines = []
    for rows in sorted({r["rows"] for r in runs}):
        walls = {side: [r["wall_s"] for r in runs if r["rows"] == rows and r["side"] == side and r["run"] == "first"]
                 for side in ("nlpkit", "hf")}
        if walls["nlpkit"] and walls["hf"]:
            ratio, lo, hi = C.ratio_interval(walls["nlpkit"], walls["hf"])
            n = min(len(walls["nlpkit"]), len(walls["hf"]))
            lines.append(f"first-run wall at {rows:,} rows, nlpkit / HF: {ratio:.3f}x (95% bootstrap interval "
                         f"{lo:.3f}-{hi:.3f}, n={n} each; nlpkit {', '.join(f'{w:.1f}' for w in walls['nlpkit'])} s; "
                         f"HF {', '.join(f'{w:.1f}' for w in walls['hf'])} s)")
    return lines


def table(runs: list[dict[str, Any]]) -> str:
    rows = [[f"{r['rows']:,}", r["side"], r["run"], str(r.get("n", 1)), f"{r['wall_s']:.1f}", C.fmt(r.get("read_s"), 2), C.fmt(r.get("encode_s"), 2),
             C.fmt(r.get("startup_s"), 2), f"{r['peak_rss_gb']:.2f}", f"{r['peak_anon_gb']:.2f}",
             f"{r['peak_file_gb']:.2f}", C.fmt(r.get("peak_pss_gb"), 2)] for r in runs]
    return C.markdown_table(["rows", "side", "run", "n", "wall s", "read s", "encode s", "start-up s", "peak RSS GB",
                             "peak anon GB", "peak file GB", "peak PSS GB"], rows)


def targets(runs: list[dict[str, Any]], target: list[int]) -> list[dict[str, Any]]:
    """The issue's acceptance targets, for the runs there are (a target without its runs says so)."""
    def get(side, rows, which="first"):
        return next((r for r in runs if r["side"] == side and r["rows"] == rows and r["run"] == which), None)

    def verdict(ok):
        return "n/a" if ok is None else ("yes" if ok else "NO")

    r1, r2 = target[0], target[-1]
    out = []
    a, b = get("nlpkit", r1), get("hf", r1)
    ok = None if not (a and b) else a["peak_rss_gb"] <= 1.2 * b["peak_rss_gb"]
    out.append({"target": f"peak RSS at {r1:,} rows <= 1.2x HF's", "met": verdict(ok), "ok": ok,
                "measured": f"{a['peak_rss_gb']:.2f} GB vs {b['peak_rss_gb']:.2f} GB ({a['peak_rss_gb'] / b['peak_rss_gb']:.2f}x)"
                if a and b else "needs both sides at that size"})
    if r2 != r1:
        a, b = get("nlpkit", r1), get("nlpkit", r2)
        ok = None if not (a and b) else b["peak_anon_gb"] < 1.2 * a["peak_anon_gb"]
        hf1, hf2 = get("hf", r1), get("hf", r2)
        ref = (f"; HF {100 * (hf2['peak_anon_gb'] / hf1['peak_anon_gb'] - 1):+.0f}%" if hf1 and hf2 else "")
        out.append({"target": f"anonymous memory {r1:,} -> {r2:,} rows grows < 20%", "met": verdict(ok), "ok": ok,
                    "measured": f"{a['peak_anon_gb']:.2f} -> {b['peak_anon_gb']:.2f} GB "
                                f"({100 * (b['peak_anon_gb'] / a['peak_anon_gb'] - 1):+.0f}%){ref}" if a and b
                    else "needs nlpkit at both sizes"})
    for rows in dict.fromkeys([r1, r2]):
        a, b = get("nlpkit", rows), get("nlpkit", rows, "second")
        ok = None if not (a and b and a.get("startup_s") and b.get("startup_s")) else b["startup_s"] <= 0.25 * a["startup_s"]
        hf1, hf2 = get("hf", rows), get("hf", rows, "second")
        ref = (f"; HF {hf2['startup_s']:.1f} / {hf1['startup_s']:.1f} s = {100 * hf2['startup_s'] / hf1['startup_s']:.0f}%"
               if hf1 and hf2 and hf1.get("startup_s") and hf2.get("startup_s") else "")
        out.append({"target": f"second run's start-up <= 25% of the first's at {rows:,} rows", "met": verdict(ok), "ok": ok,
                    "measured": f"{b['startup_s']:.1f} / {a['startup_s']:.1f} s = {100 * b['startup_s'] / a['startup_s']:.0f}%{ref}"
                    if ok is not None else "needs both nlpkit runs at that size"})
    for rows in sorted({r["rows"] for r in runs}):
        a, b = get("nlpkit", rows), get("hf", rows)
        if a and b:
            ok = a["wall_s"] <= b["wall_s"]
            out.append({"target": f"first-run wall <= HF's at {rows:,} rows", "met": verdict(ok), "ok": ok,
                        "measured": f"{a['wall_s']:.1f} s vs {b['wall_s']:.1f} s ({a['wall_s'] / b['wall_s']:.2f}x)"})
    for r in runs:
        if r["rows"] >= 10_000_000 and r["run"] == "first":
            out.append({"target": f"{r['side']}: a {r['rows']:,}-row run completes", "met": "yes", "ok": True,
                        "measured": f"peak RSS {r['peak_rss_gb']:.2f} GB (anon {r['peak_anon_gb']:.2f}, "
                                    f"file {r['peak_file_gb']:.2f}), wall {r['wall_s']:.0f} s"})
    return out


def print_differences(args: argparse.Namespace) -> None:
    """What is not the same on the two sides, whatever the settings."""
    lines = [
        "both sides: fp32, batch 32 (eval 64), max length 128, AdamW lr 5e-5 (weight decay 0.01, linear schedule, "
        "no warm-up, clip 1.0), seed 42, dynamic padding, one evaluation at the end on the same dev rows, "
        "saving at the end: nlpkit best/ + a resumable step checkpoint, HF save_model() + checkpoint-N "
        "(model + optimizer); no TensorBoard/report_to, no plots, no progress bars in the trainers",
        ("same: both sides draw random batches (--no-length-grouping)" if args.no_length_grouping else
         "differs: nlpkit groups batches by length (its default performance.group_by_length); the HF Trainer samples at "
         "random (its default), so its batches pad more (--no-length-grouping: nlpkit draws random batches too)"),
        "differs: nlpkit's own CPU default stays on (performance.fast_dropout); the HF side is "
        "transformers as it comes",
        "differs: start-up is read from nlpkit's step-1 log record less its first_step phase, and from a "
        "TrainerCallback.on_step_begin on the HF side; both from the parent's launch time",
    ]
    if "ner" in args.tasks:
        lines.append("ner differs: nlpkit reads a CoNLL file, the HF side run_ner.py's JSON lines of the same sentences "
                     "(datasets has no CoNLL loader); HF's label set from Arrow (run_ner.py loops in Python); "
                     "both label the first sub-token of each word")
    if "translation" in args.tasks:
        lines.append("translation differs: nlpkit puts a decoder head (as many layers as the encoder, cross-attention, "
                     "embeddings shared with the backbone, new weights) on the encoder; the HF side is bert2bert "
                     "(EncoderDecoderModel: the decoder initialised from the backbone with its own embeddings and new "
                     "cross-attention) with Seq2SeqTrainer; both decode greedily at evaluation, up to "
                     f"{32 if args.quick else args.max_length} tokens, BLEU by sacreBLEU")
    for line in lines:
        print("   " + line)


if __name__ == "__main__":
    if not C.worker_main({"hf": hf_worker}):
        sys.exit(main())
