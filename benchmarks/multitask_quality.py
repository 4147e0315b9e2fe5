"""Does multi-task training help or hurt? Each task alone and the pair jointly, over several seeds.

For a pair of tasks this trains, for every seed (``--seeds``, default 42,43,44), each task alone and the pair
jointly, one run after the other (never side by side: two cores), scores every run's selected checkpoint on a
report split that neither training nor checkpoint selection saw, and prints per task: the score alone and jointly
(mean ± sd over the seeds and every seed's value), the difference joint − alone, a verdict, and every run's wall
time. Everything also goes to a JSON file (``--json``).

Budget rule, fixed before any run and the same for every pair and every task:
    every run trains 8 epochs of each task's own training data, lr 1e-4, batch 32, evaluated on the selection
    split after every epoch; joint runs draw batches with the proportional sampler, so a task makes exactly as
    many optimizer steps jointly as alone and sees each of its training examples as often.
The one input to the rule: the single-task dev curves of the earlier runs in docs/multitask.md had flattened by
8 epochs for every task. ``--epochs N`` overrides it and is printed as a departure from the rule.
Everything else is nlpkit's defaults (heads at 10x the backbone's learning rate in joint runs, checkpoint
selection by the mean of the tasks' main scores).

Selection and report splits: checkpoint selection (best/) uses each task's selection split: CoNLL-2003 valid,
WNUT-17 dev, and a carved part of train for SemEval (10%), SST-2 (5%) and TREC (10%). The scores this script
reports come from a second part of train, the report split: min(10%, 1,000) examples, carved first. Both carved
parts are removed from the training data, carved once with a fixed data seed (the same for every training seed,
so the seeds' spread is the training's own) and written in each task's own format to
benchmarks/.cache/multitask/data/. Carves keep related examples on one side: CoNLL-2003 whole documents, SST-2
whole sentence groups (every phrase goes with the longest row containing it: _common.sst2_group_split; the
phrases two sentences share remain, and the script prints how many held-out rows occur inside a training row),
and identical texts elsewhere. Training sets are then seeded samples where the whole set would not train for 8
epochs in reasonable time on two CPU cores: CoNLL-2003 3,000 sentences, SemEval 4,000, SST-2 6,000; WNUT-17 and
TREC whole (what is left of them). Test splits are never read.

Verdict per task, on the report split: with d_s = joint(seed s) − alone(seed s), "gain" when
mean(d) − sd(d) > 0, "loss" when mean(d) + sd(d) < 0, else "no difference within the seeds' spread" (sd: the
sample standard deviation over the seeds; one seed decides nothing).

Every run is kept in benchmarks/.cache/multitask/runs/, keyed by a hash of the code version (the git trees of
nlpkit/, tasks/, this script and _common.py plus their uncommitted changes), the run's whole recipe, its seed and
the content hashes of its data files (training, selection and report); a single-task run is shared by every pair
that has the task. A rerun only trains what is missing, so a measurement can span sessions; ``--fresh`` trains
everything again.

    python benchmarks/multitask_quality.py --pair conll-semeval
    python benchmarks/multitask_quality.py --pair sst2-trec --setting default --setting heads1:head_lr_scale=1
    python benchmarks/multitask_quality.py --quick   # tiny random BERT, data made from tasks/data: plumbing, ~1 min
"""
from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()
BUNDLED = C.ROOT / "tasks" / "data"

#: the budget rule (see the docstring); --epochs is the one override, printed as a departure
RULE = {"epochs": 8, "lr": 1e-4, "batch_size": 32, "sampler": "proportional"}
RULE_WORDS = ("every run trains 8 epochs of each task's own training data, lr 1e-4, batch 32, evaluated after every "
              "epoch; joint runs use the proportional sampler (each task makes as many steps jointly as alone)")
VERDICT_WORDS = ("verdict on the report split, d = joint - alone per seed: gain if mean(d) - sd(d) > 0, loss if "
                 "mean(d) + sd(d) < 0, else no difference within the seeds' spread (sd over seeds, n-1)")
#: the carves do not move with the training seed
DATA_SEED = 0
REPORT_FRACTION, REPORT_MAX = 0.1, 1000


@dataclass
class TaskSpec:
    type: str
    metric: str  # the task's main score, as metrics.json and nlpkit evaluate name it
    fmt: str  # conll | semeval | sst2 | label-first
    train: str  # the release's training file, relative to the data root
    dev: str | None = None  # the release's dev file, the selection split as it is (else a carve of train)
    select_fraction: float | None = None
    train_examples: int | None = None  # a seeded sample of what is left after the carves (None: all of it)
    documents: bool = False  # CoNLL-2003: carve whole documents (-DOCSTART- blocks)
    options: dict[str, Any] = field(default_factory=dict)
    encoding: str = "utf-8"
    title: str = ""


TASKS = {
    "conll": TaskSpec("ner", "f1", "conll", "conll2003/train.txt.gz", dev="conll2003/valid.txt.gz",
                      train_examples=3000, documents=True, title="CoNLL-2003"),
    "wnut": TaskSpec("ner", "f1", "conll", "wnut17/wnut17train.conll.gz", dev="wnut17/emerging.dev.conll.gz",
                     title="WNUT-17"),
    "semeval": TaskSpec("relation-extraction", "macro_f1", "semeval", "semeval2010_task8/TRAIN_FILE.TXT.gz",
                        select_fraction=0.1, train_examples=4000, title="SemEval-2010 Task 8"),
    "sst2": TaskSpec("sentiment", "accuracy", "sst2", "sst2/train.tsv.gz", select_fraction=0.05, train_examples=6000,
                     options={"max_length": 66}, title="SST-2"),
    "trec": TaskSpec("classification", "accuracy", "label-first", "trec/train_5500.label.gz", select_fraction=0.1,
                     options={"format": "label-first", "label_part": "coarse", "max_length": 64},
                     encoding="latin-1", title="TREC-6"),
}
PAIRS = ("conll-semeval", "conll-wnut", "sst2-trec")
#: --quick: sizes in examples (a plumbing check on generated data, not a measurement)
QUICK = {"report": 32, "select": 32, "train": 96}
EXT = {"conll": "conll", "semeval": "txt", "sst2": "tsv", "label-first": "label"}


def home() -> Path:
    return C.CACHE / "multitask"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_text(path: Path, encoding: str) -> str:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read().decode(encoding)


# ---- examples of each format: (group, text to write) ------------------------------------------------------
def conll_units(text: str, documents: bool) -> list[tuple[Any, str]]:
    """Sentences (their lines as in the file); the group is the document for CoNLL-2003, else the sentence."""
    units, doc, lines = [], 0, []

    def flush() -> None:
        if lines:
            block = "\n".join(lines)
            units.append((doc if documents else block, block))
            lines.clear()

    for line in text.splitlines():
        if not line.strip():
            flush()
        elif line.startswith("-DOCSTART-"):
            flush()
            doc += 1
        else:
            lines.append(line.rstrip("\r"))
    flush()
    return units


def semeval_units(text: str) -> list[tuple[Any, str]]:
    """4-line examples; the group is the sentence without its entity markers."""
    units = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        lines = [l for l in block.split("\n") if l.strip()]
        if not lines:
            continue
        sentence = lines[0].split("\t", 1)[-1]
        units.append((re.sub(r"</?e[12]>", "", sentence), "\n".join(lines)))
    return units


def label_first_units(text: str) -> list[tuple[Any, str]]:
    """One question a line; the group is the question (identical questions stay together)."""
    return [(" ".join(line.split(" ", 1)[-1].split()), line.rstrip("\r"))
            for line in text.splitlines() if line.strip()]


def write_units(path: Path, fmt: str, units: list[str], encoding: str) -> None:
    if fmt == "conll":
        body = "".join(u + "\n\n" for u in units)
    elif fmt == "semeval":
        body = "".join(u + "\n\n" for u in units)
    elif fmt == "sst2":
        body = "label\tsentence\n" + "".join(u + "\n" for u in units)
    else:
        body = "".join(u + "\n" for u in units)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(body.encode(encoding))
    os.replace(tmp, path)


def prepare_task(name: str, root: Path, quick: bool) -> dict[str, Any]:
    """The task's training, selection and report files, carved once: kept in a folder keyed by the source files'
    content, the carve's sizes and seed, and the version of the code that carves (this script and _common.py)."""
    spec = TASKS[name]
    sources = {"train": root / spec.train, **({"dev": root / spec.dev} if spec.dev else {})}
    for path in sources.values():
        if not path.is_file():
            sys.exit(f"{name}: {path} not found")
    carve = {"code": C.code_version(str(SCRIPT.relative_to(C.ROOT)), "benchmarks/_common.py"), "seed": DATA_SEED,
             "quick": quick, "fmt": spec.fmt, "documents": spec.documents,
             "select": QUICK["select"] if quick else spec.select_fraction,
             "train_examples": QUICK["train"] if quick else spec.train_examples,
             "report": QUICK["report"] if quick else [REPORT_FRACTION, REPORT_MAX],
             "sources": {k: sha256_file(p) for k, p in sources.items()}}
    key = hashlib.sha256(json.dumps(carve, sort_keys=True).encode()).hexdigest()[:12]
    folder = home() / "data" / f"{name}-{key}"
    info_path = folder / "info.json"
    if info_path.is_file():
        return json.loads(info_path.read_text())

    overlap = None
    if spec.fmt == "sst2":
        rows = C.read_tsv(sources["train"])
    else:
        text = read_text(sources["train"], spec.encoding)
        units = (conll_units(text, spec.documents) if spec.fmt == "conll" else
                 semeval_units(text) if spec.fmt == "semeval" else label_first_units(text))
    n = len(rows) if spec.fmt == "sst2" else len(units)
    report_n = QUICK["report"] if quick else min(REPORT_MAX, round(REPORT_FRACTION * n))
    sizes = [report_n]
    if not spec.dev:
        sizes.append(QUICK["select"] if quick else round(spec.select_fraction * n))
    if spec.fmt == "sst2":
        rest_rows, parts_rows, overlap = C.sst2_group_split(rows, sizes, seed=DATA_SEED)
        rest = [f"{label}\t{sentence}" for label, sentence in rest_rows]
        parts = [[f"{label}\t{sentence}" for label, sentence in p] for p in parts_rows]
    else:
        rest_i, parts_i = C.take_groups([g for g, _ in units], sizes, seed=DATA_SEED)
        rest, parts = [units[i][1] for i in rest_i], [[units[i][1] for i in p] for p in parts_i]
    keep = carve["train_examples"]
    if keep and keep < len(rest):
        chosen = sorted(random.Random(DATA_SEED).sample(range(len(rest)), keep))
        train = [rest[i] for i in chosen]
    else:
        train = rest
    folder.mkdir(parents=True, exist_ok=True)
    ext = EXT[spec.fmt]
    files = {"train": folder / f"train.{ext}", "report": folder / f"report.{ext}"}
    write_units(files["train"], spec.fmt, train, spec.encoding)
    write_units(files["report"], spec.fmt, parts[0], spec.encoding)
    if spec.dev:
        files["select"] = sources["dev"]
        select_words = f"the release's dev file ({sources['dev'].name})"
        select_n = None
    else:
        files["select"] = folder / f"select.{ext}"
        write_units(files["select"], spec.fmt, parts[1], spec.encoding)
        select_words = f"{len(parts[1]):,} carved from train"
        select_n = len(parts[1])
    info: dict[str, Any] = {
        "task": name, "folder": str(folder), "files": {k: str(v) for k, v in files.items()},
        "sha256": {k: sha256_file(v) for k, v in files.items()}, "source_examples": n,
        "report_examples": len(parts[0]), "select_examples": select_n, "train_pool": len(rest),
        "train_examples": len(train), "carve": carve,
        "words": (f"train {len(train):,} of the {len(rest):,} left, selection {select_words}, report "
                  f"{len(parts[0]):,} carved from train" + (" (whole documents)" if spec.documents else ""))}
    if overlap is not None:  # SST-2: what the sentence groups could not keep apart
        trained = C.TrainingTexts(line.split("\t", 1)[1] for line in train)
        info["overlap_with_train_side"] = overlap
        info["overlap_with_training_sample"] = {
            part: trained.overlap([line.split("\t", 1)[1] for line in p])
            for part, p in (("report", parts[0]), ("select", parts[1]))}
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return info


# ---- --quick: a data root in the releases' layout, made from nlpkit's bundled data ---------------------------
def quick_root() -> Path:
    """CoNLL-2003, WNUT-17, SemEval, SST-2 and TREC files in the releases' formats, generated from tasks/data (the
    same every time): no shared folder needed. SST-2 rows get a phrase of each sentence as a row of its own, as
    the real file has, and SemEval examples mark two entities of a bundled NER sentence."""
    root = home() / "quick-data"
    done = root / ".complete"
    if done.is_file():
        return root
    sentences = C.read_conll_sentences(BUNDLED / "ner" / "train.conll")
    dev = C.read_conll_sentences(BUNDLED / "ner" / "dev.conll")

    def put(rel: str, text: str, encoding: str = "utf-8") -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(text.encode(encoding), mtime=0))

    def conll(sents, sep: str, docs: int = 0) -> str:
        out = []
        for i, (words, tags) in enumerate(sents):
            if docs and i % docs == 0:
                out.append("-DOCSTART- -X- -X- O\n\n")
            out.append("".join(f"{w}{sep}{t}\n" for w, t in zip(words, tags)) + "\n")
        return "".join(out)

    put("conll2003/train.txt.gz", conll(sentences[:600], " ", docs=12))
    put("conll2003/valid.txt.gz", conll(dev[:64], " ", docs=12))
    put("wnut17/wnut17train.conll.gz", conll(sentences[600:1000], "\t"))
    put("wnut17/emerging.dev.conll.gz", conll(dev[64:128], "\t"))

    relation = {("PER", "ORG"): "Member-Collection(e1,e2)", ("ORG", "PER"): "Member-Collection(e2,e1)",
                ("PER", "LOC"): "Entity-Destination(e1,e2)", ("LOC", "PER"): "Entity-Destination(e2,e1)"}
    examples = []
    for words, tags in sentences:
        spans = [(i, t[2:]) for i, t in enumerate(tags) if t.startswith("B-")]
        if len(spans) < 2:
            continue
        (a, ta), (b, tb) = spans[0], spans[1]
        marked = list(words)
        marked[a], marked[b] = f"<e1>{words[a]}</e1>", f"<e2>{words[b]}</e2>"
        examples.append(f'{len(examples) + 1}\t"{" ".join(marked)}"\n{relation.get((ta, tb), "Other")}\nComment:\n\n')
    put("semeval2010_task8/TRAIN_FILE.TXT.gz", "".join(examples[:400]))

    rows = []
    with open(BUNDLED / "sentiment" / "train.tsv", encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            label = "1" if r["label"] == "positive" else "0"
            words = r["sentence"].split()
            rows.append(f"{label}\t{r['sentence']}\r\n")
            if len(words) > 4:  # a phrase of the sentence, as SST-2 has them
                rows.append(f"{label}\t{' '.join(words[-4:])}\r\n")
    put("sst2/train.tsv.gz", "label\tsentence\r\n" + "".join(rows[:800]))

    with open(BUNDLED / "classification" / "train.csv", encoding="utf-8", newline="") as f:
        questions = [f"{r['label'].upper()}:other {r['text']}\n" for r in csv.DictReader(f)]
    put("trec/train_5500.label.gz", "".join(questions[:400]), encoding="latin-1")
    done.write_text("")
    return root


# ---- one run: train, then score best/ on the report split ------------------------------------------------
def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def task_entry(name: str, data: dict[str, Any]) -> dict[str, Any]:
    spec = TASKS[name]
    return {"type": spec.type, "name": name, "data": {"train": data["files"]["train"], "dev": data["files"]["select"]},
            "options": dict(spec.options)}


def run_key(recipe: dict[str, Any], data: dict[str, dict], version: str) -> str:
    """The hash a run is kept under: code version, the recipe with every data path replaced by its file's content
    hash (so the key does not depend on where the cache is), the report files' hashes, package versions."""
    keyed = json.loads(json.dumps(recipe))
    keyed.pop("output_dir", None)
    for t in keyed["tasks"]:
        d = data[t["name"]]
        t["data"] = {"train": d["sha256"]["train"], "dev": d["sha256"]["select"], "report": d["sha256"]["report"]}
    blob = json.dumps({"code": version, "recipe": keyed, "packages": package_versions(),
                       "evaluate": "nlpkit.load(best/).evaluate(report file)"},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def run_one(label: str, recipe: dict[str, Any], data: dict[str, dict], folder: Path,
            keep_checkpoints: bool) -> dict[str, Any]:
    """One run in a fresh process (``--worker``): train, then score best/ on each task's report file; the result.
    train_wall_s runs from the process's launch to the end of training (imports included, as a whole `nlpkit
    train` process would take), evaluate_wall_s from there to the end of scoring."""
    if folder.exists():
        shutil.rmtree(folder)  # an interrupted attempt: start over
    folder.mkdir(parents=True)
    out = folder / "run"
    names = [t["name"] for t in recipe["tasks"]]
    recipe = {**recipe, "output_dir": str(out)}
    (folder / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    spec = {"recipe": str(folder / "recipe.json"), "report": {n: data[n]["files"]["report"] for n in names},
            "metrics": {n: TASKS[n].metric for n in names}, "result": str(folder / "scores.json"),
            "launch_time": time.time()}
    (folder / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")
    log = folder / "run.log"
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, str(SCRIPT), "--worker", str(folder / "spec.json")],
                              env={**os.environ, **C.OFFLINE_ENV}, cwd=C.ROOT, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0 or not Path(spec["result"]).is_file():
        sys.exit(f"{label} failed (exit {done.returncode}); its output: {log}\n" + log.read_text()[-3000:])
    scores = json.loads(Path(spec["result"]).read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    if not keep_checkpoints:  # resume states: the selected model (best/) stays
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return {
        "label": label, "tasks": names, "seed": recipe["trainer"]["seed"], "trainer": recipe["trainer"],
        "train_wall_s": scores["train_wall_s"], "evaluate_wall_s": scores["evaluate_wall_s"],
        "select": {n: metrics["tasks"][n][TASKS[n].metric] for n in names},
        "report": {n: scores["report"][n][TASKS[n].metric] for n in names},
        "report_metrics": scores["report"],
        "steps": metrics["steps"], "best_step": metrics["best_step"],
        "steps_per_task": {n: metrics["steps_per_task"][n] for n in names} if metrics.get("steps_per_task") else None,
        "best_per_task": metrics.get("best_per_task"), "stop_reason": metrics.get("stop_reason"),
        "trainer_wall_s": metrics.get("wall_time_s"), "folder": str(folder),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def worker(spec_path: str) -> None:
    """In the run's own process: nlpkit.train(recipe), then nlpkit.load(best/).evaluate(report file) per task."""
    C.offline()
    spec = json.loads(Path(spec_path).read_text())
    import nlpkit
    from nlpkit.engine.renamed_keys import upgrade

    recipe = json.loads(Path(spec["recipe"]).read_text())
    recipe["trainer"] = {**recipe["trainer"], "progress": False}
    upgrade(recipe)  # the settings are named by key alone (rr:sampler=round-robin): each into its config section
    nlpkit.train(recipe)
    trained = time.time()
    pipe = nlpkit.load(Path(recipe["output_dir"]) / "best")
    report = {}
    for name, path in spec["report"].items():
        report[name] = pipe.evaluate(path, task=name)
        print(f"{name}: report split {path}: {spec['metrics'][name]} {report[name][spec['metrics'][name]]:.2f}",
              flush=True)
    Path(spec["result"]).write_text(json.dumps({"train_wall_s": trained - spec["launch_time"],
                                                "evaluate_wall_s": time.time() - trained, "report": report},
                                               indent=2) + "\n")


# ---- summary ----------------------------------------------------------------------------------------------
def mean_sd(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def verdict(diffs: list[float]) -> str:
    """The rule of the docstring: gain if mean - sd > 0, loss if mean + sd < 0 (sd over the seeds)."""
    m, sd = mean_sd(diffs)
    if sd is None:
        return "undecided (one seed: no spread to compare with)"
    if m - sd > 0:
        return "gain"
    if m + sd < 0:
        return "loss"
    return "no difference within the seeds' spread"


def summarize(names: list[str], seeds: list[int], single: dict, joint: dict) -> dict[str, Any]:
    """Per task: alone and jointly per seed (report and selection scores), the differences, the verdict."""
    out = {}
    for n in names:
        entry: dict[str, Any] = {"metric": TASKS[n].metric}
        for split in ("report", "select"):
            alone = [single[(n, s)][split][n] for s in seeds]
            together = [joint[s][split][n] for s in seeds]
            diffs = [j - a for j, a in zip(together, alone)]
            entry[split] = {"alone": alone, "joint": together, "difference": diffs,
                            "seeds_above_0": sum(d > 0 for d in diffs)}
            for k, v in (("alone", alone), ("joint", together), ("difference", diffs)):
                entry[split][f"{k}_mean"], entry[split][f"{k}_sd"] = mean_sd(v)
        entry["verdict"] = verdict(entry["report"]["difference"])
        out[n] = entry
    return out


def pm(mean: float, sd: float | None, sign: bool = False) -> str:
    f = "+.2f" if sign else ".2f"
    return f"{mean:{f}} ± {sd:.2f}" if sd is not None else f"{mean:{f}}"


def print_tables(pair: str, seeds: list[int], setting: str, summary: dict, runs: list[dict]) -> None:
    for split, words in (("report", "report split (carved from train; neither training nor selection saw it)"),
                         ("select", "selection split (the one best/ was chosen on: optimistic)")):
        print(f"\n{pair}, joint setting {setting!r}: {words}")
        rows = []
        for n, e in summary.items():
            s = e[split]
            label = f"{TASKS[n].title} {e['metric']}"
            rows.append([f"{label}: alone", *[f"{v:.2f}" for v in s["alone"]], pm(s["alone_mean"], s["alone_sd"])])
            rows.append([f"{label}: jointly", *[f"{v:.2f}" for v in s["joint"]], pm(s["joint_mean"], s["joint_sd"])])
            rows.append([f"{label}: joint - alone", *[f"{v:+.2f}" for v in s["difference"]],
                         pm(s["difference_mean"], s["difference_sd"], sign=True)])
        print(C.markdown_table(["task: run", *[f"seed {s}" for s in seeds], "mean ± sd"], rows))
    print()
    for n, e in summary.items():
        s = e["report"]
        sd = s["difference_sd"]
        bound = (f"; mean - sd = {s['difference_mean'] - sd:+.2f}, mean + sd = {s['difference_mean'] + sd:+.2f}"
                 if sd is not None else "")
        print(f"{TASKS[n].title}: joint - alone on the report split {pm(s['difference_mean'], sd, sign=True)} "
              f"({s['seeds_above_0']} of {len(seeds)} seeds above 0{bound}): {e['verdict'].upper()}")
    print(f"\nruns ({pair}, setting {setting!r}):")
    rows = []
    for r in runs:
        steps = str(r["steps"]) + (" (" + " + ".join(f"{k} {v}" for k, v in r["steps_per_task"].items()) + ")"
                                   if r.get("steps_per_task") else "")
        rows.append([r["label"], str(r["seed"]), steps, str(r["best_step"]), f"{r['train_wall_s']:.0f}",
                     f"{r['evaluate_wall_s']:.1f}", "cache" if r.get("from_cache") else "this run"])
    print(C.markdown_table(["run", "seed", "steps", "selected step", "train wall s", "evaluate wall s", "measured"],
                           rows))


# ---- main ---------------------------------------------------------------------------------------------------
def parse_setting(item: str) -> tuple[str, dict[str, Any]]:
    import yaml

    name, _, rest = item.partition(":")
    overrides = {}
    for kv in filter(None, rest.split(",")):
        key, _, value = kv.partition("=")
        overrides[key.strip()] = yaml.safe_load(value)
    return name, overrides


def code_version() -> str:
    return C.code_version("nlpkit", "tasks", str(SCRIPT.relative_to(C.ROOT)), "benchmarks/_common.py")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", choices=PAIRS, help="the pair of tasks (required unless --quick: sst2-trec)")
    ap.add_argument("--seeds", help="comma-separated training seeds (default 42,43,44; 42,43 with --quick)")
    ap.add_argument("--setting", action="append", default=[], metavar="NAME[:KEY=VALUE,...]",
                    help="a joint setting: a name and trainer overrides (rr:sampler=round-robin), or a task entry's "
                         "key as tasks.NAME.KEY=VALUE (repeatable; default: 'default', nlpkit's defaults); the "
                         "single-task runs always follow the rule")
    ap.add_argument("--epochs", type=float, help="override the budget rule's 8 epochs (printed as a departure)")
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--data-root", help="the folder holding conll2003/, sst2/, ... (ignored with --quick)")
    ap.add_argument("--fresh", action="store_true", help="train every run again, ignoring the run cache")
    ap.add_argument("--keep-checkpoints", action="store_true",
                    help="keep each run's resume checkpoints (default: only best/ is kept)")
    ap.add_argument("--json", help="write everything here (default benchmarks/.cache/multitask/PAIR[-quick].json)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny random BERT, data generated from tasks/data, 1 epoch, 2 seeds: a plumbing check")
    args = ap.parse_args(argv)
    C.offline()
    if not args.pair and not args.quick:
        ap.error("--pair is required (or --quick)")
    pair = args.pair or "sst2-trec"
    seeds = [int(s) for s in (args.seeds or ("42,43" if args.quick else "42,43,44")).split(",")]
    names = pair.split("-")
    settings = [parse_setting(item) for item in args.setting or ["default"]]

    print(C.device_line(C.device_info()))
    print(f"budget rule: {RULE_WORDS}")
    epochs = args.epochs if args.epochs is not None else (1 if args.quick else RULE["epochs"])
    departures = []
    if args.quick:
        departures.append("--quick: tiny random BERT, generated data, 1 epoch: a plumbing check, not a measurement")
    if args.epochs is not None:
        departures.append(f"--epochs {args.epochs:g} instead of the rule's {RULE['epochs']}")
    for name, overrides in settings:
        if overrides:
            departures.append(f"joint setting {name!r}: " + ", ".join(f"{k}={v}" for k, v in overrides.items())
                              + (" (changes how often each task is drawn: per-task budgets differ from alone)"
                                 if "sampler" in overrides or "temperature" in overrides else ""))
    for d in departures:
        print(f"DEPARTURE from the rule: {d}")
    print(VERDICT_WORDS)

    root = quick_root() if args.quick else C.data_root(args.data_root)
    backbone = C.tiny_bert_folder() if args.quick else args.backbone
    data = {}
    for n in names:
        t0 = time.time()
        data[n] = prepare_task(n, root, args.quick)
        print(f"{TASKS[n].title} ({n}): {data[n]['words']}  [{data[n]['folder']}]"
              + (f", prepared in {time.time() - t0:.1f} s" if time.time() - t0 > 1 else ""))
        if "overlap_with_train_side" in data[n]:
            o, parts = data[n]["overlap_with_train_side"], data[n]["overlap_with_training_sample"]
            print(f"  {TASKS[n].title} held-out rows in whole sentence groups ({o['groups']:,} groups); against the "
                  f"whole training side: {C.overlap_words(o)}")
            for part, po in parts.items():
                print(f"  {part} split against the {data[n]['train_examples']:,} training rows: {C.overlap_words(po)}")

    version = code_version()
    print(f"code version {version}; backbone {'tiny random BERT (--quick)' if args.quick else backbone}; seeds "
          + ", ".join(map(str, seeds)))
    base = {"epochs": epochs, "batch_size": RULE["batch_size"], "lr": RULE["lr"], "sampler": RULE["sampler"],
            "tensorboard": False, "save_minutes": None}

    def recipe_for(run_names: list[str], seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
        tasks = [task_entry(n, data[n]) for n in run_names]
        for key, value in overrides.items():  # tasks.NAME.KEY=VALUE: a key of that task's entry (weight, ...)
            if key.startswith("tasks."):
                _, task_name, fld = key.split(".", 2)
                next(t for t in tasks if t["name"] == task_name)[fld] = value
        trainer = {**base, "seed": seed, **{k: v for k, v in overrides.items() if not k.startswith("tasks.")}}
        return {"tasks": tasks, "backbone": {"spec": backbone}, "trainer": trainer}

    plan = []  # (id, label, recipe), seed by seed: an interrupted measurement leaves whole seeds
    for seed in seeds:
        for n in names:
            plan.append((("single", n, seed), n, recipe_for([n], seed, {})))
        for setting, overrides in settings:
            plan.append((("joint", setting, seed), "+".join(names) + ("" if setting == "default" else f"@{setting}"),
                         recipe_for(names, seed, overrides)))
    runs_dir = home() / "runs"
    keyed = [(ident, label, recipe, run_key(recipe, data, version)) for ident, label, recipe in plan]
    folders = {ident: runs_dir / f"{label}-seed{ident[2]}-{key}" for ident, label, _, key in keyed}
    todo = {ident for ident, folder in folders.items() if args.fresh or not (folder / "result.json").is_file()}
    print(f"{len(keyed)} runs: {len(keyed) - len(todo)} from the cache (same code, recipe, seed and data), "
          f"{len(todo)} to train")

    results: dict[tuple, dict] = {}
    for ident, label, recipe, key in keyed:
        folder = folders[ident]
        if ident not in todo:
            result = json.loads((folder / "result.json").read_text())
            result["from_cache"] = True
        else:
            print(f"training {label}, seed {ident[2]} ...", flush=True)
            result = run_one(label, recipe, data, folder, args.keep_checkpoints)
            result["key"], result["code_version"] = key, version
            (folder / "result.json").write_text(json.dumps(result, indent=2) + "\n")
            result["from_cache"] = False
            print(f"  trained in {result['train_wall_s']:.0f} s, scored best/ in {result['evaluate_wall_s']:.0f} s: "
                  + ", ".join(f"{n} report {result['report'][n]:.2f}, selection {result['select'][n]:.2f}"
                              for n in result["tasks"]), flush=True)
        results[ident] = result

    single = {(n, s): results[("single", n, s)] for n in names for s in seeds}
    summaries = {}
    for setting, _ in settings:
        joint = {s: results[("joint", setting, s)] for s in seeds}
        summaries[setting] = summarize(names, seeds, single, joint)
        runs = [single[(n, s)] for s in seeds for n in names] + [joint[s] for s in seeds]
        print_tables(pair, seeds, setting, summaries[setting], runs)
    total = sum(r["train_wall_s"] + r["evaluate_wall_s"] for r in results.values())
    print(f"\nwall time of all {len(results)} runs (training + scoring, whenever they ran): {total / 60:.1f} min")
    payload = {"pair": pair, "seeds": seeds, "rule": RULE_WORDS, "verdict_rule": VERDICT_WORDS,
               "departures": departures,
               "trainer": base, "backbone": backbone, "quick": args.quick, "code_version": version,
               "settings": {n: o for n, o in settings}, "data": data, "summary": summaries,
               "runs": [{**r, "id": list(ident)} for ident, r in results.items()],
               "wall_s_all_runs": total}
    C.save_json(args.json or str(home() / f"{pair}{'-quick' if args.quick else ''}.json"), payload)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        main()
