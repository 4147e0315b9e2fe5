"""Does multi-task training help or hurt? Each task alone and the pair jointly, at the same per-task budget.

For a pair of tasks this trains, one run after the other (never side by side: two cores), each task
alone and then the two jointly under one or more settings, and prints one table: every task's dev
score alone and jointly (at the checkpoint the run selects, and at the task's own best evaluation), the
difference, and the wall time of every run.

Equal budgets: every run trains for the same number of epochs of each task's own data, so with the
``proportional`` sampler (the default) each task makes exactly as many optimizer steps jointly as alone,
and sees every one of its training examples as often. A setting that changes how often a task is drawn
(``temperature``, ``annealed``) keeps the run's total step count, so its per-task budgets differ; the
table prints the steps each task made.

Dev splits only: CoNLL-2003 valid, WNUT-17 dev, and seeded carves of SemEval, SST-2 and TREC train
(the test splits stay held out). Training sets are seeded samples where the full set would not train
to convergence on two CPU cores in reasonable time (``--train-examples``).

    python benchmarks/multitask_quality.py --pair conll-semeval
    python benchmarks/multitask_quality.py --pair sst2-trec --setting default --setting annealed:sampler=annealed
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import CACHE, ROOT, data_root, offline  # noqa: E402

#: per pair: training examples per task (None: all) and epochs, chosen so that each task's dev curve
#: flattens within the budget on MiniLM (the curves in docs/multitask.md show it)
PAIRS = {
    "conll-semeval": {"train": {"conll": 3000, "semeval": 4000}, "epochs": 5},
    "conll-wnut": {"train": {"conll": 3000, "wnut": None}, "epochs": 5},
    "sst2-trec": {"train": {"sst2": 6000, "trec": None}, "epochs": 4},
}


def task_entry(name: str, root: Path, train_examples: int | None) -> dict:
    cap = {"max_train_examples": train_examples} if train_examples else {}
    entries = {
        "conll": {"type": "ner", "data": {"train": "conll2003/train.txt.gz", "dev": "conll2003/valid.txt.gz"}},
        "wnut": {"type": "ner", "data": {"train": "wnut17/wnut17train.conll.gz", "dev": "wnut17/emerging.dev.conll.gz"}},
        "semeval": {"type": "relation-extraction", "data": {"train": "semeval2010_task8/TRAIN_FILE.TXT.gz"},
                    "options": {"dev_split": 0.1}},
        "sst2": {"type": "sentiment", "data": {"train": "sst2/train.tsv.gz"},
                 "options": {"dev_split": 0.05, "max_length": 66}},
        "trec": {"type": "classification", "data": {"train": "trec/train_5500.label.gz"},
                 "options": {"format": "label-first", "label_part": "coarse", "dev_split": 0.1, "max_length": 64}},
    }
    e = entries[name]
    return {"type": e["type"], "name": name, "data": {k: str(root / v) for k, v in e["data"].items()},
            "options": {**e.get("options", {}), **cap}}


def pair_tasks(pair: str, root: Path, train_examples: dict | int | None = None) -> list[dict]:
    names = pair.split("-")
    sizes = train_examples if isinstance(train_examples, dict) else {n: train_examples for n in names}
    return [task_entry(n, root, sizes.get(n)) for n in names]


def run_one(label: str, tasks: list[dict], trainer: dict, backbone: str, out: Path) -> dict:
    """One `nlpkit train` in its own process; its metrics.json plus the wall time around it."""
    recipe = {"description": f"multitask_quality {label}", "tasks": tasks, "backbone": {"spec": backbone},
              "trainer": trainer, "output_dir": str(out)}
    out.parent.mkdir(parents=True, exist_ok=True)
    recipe_path = out.parent / f"{out.name}.json"
    recipe_path.write_text(json.dumps(recipe, indent=2))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "nlpkit", "train", "--recipe", str(recipe_path), "--resume", "never",
                           "--no-progress"], env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    (out.parent / f"{out.name}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        sys.exit(f"{label} failed (exit {done.returncode}); its output: {out.parent / (out.name + '.log')}\n"
                 + (done.stdout + done.stderr)[-3000:])
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["process_wall_s"] = wall
    (out.parent / f"{out.name}.wall").write_text(f"{wall:.1f}\n")  # for --reuse
    return metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", required=True, choices=sorted(PAIRS))
    ap.add_argument("--setting", action="append", default=[], metavar="NAME[:KEY=VALUE,...]",
                    help="a joint setting: a name and trainer overrides, e.g. rr:sampler=round-robin, or a task "
                         "entry's key as tasks.NAME.KEY=VALUE (repeatable; default: one setting 'default' with "
                         "nlpkit's defaults)")
    ap.add_argument("--single-setting", metavar="NAME:KEY=VALUE,...",
                    help="train the single-task runs with these trainer overrides too (their runs are named "
                         "single-TASK@NAME), to tell a setting that helps multi-task training from one that "
                         "helps every run")
    ap.add_argument("--only", choices=["single", "joint"], help="run only the single-task runs or only the joint ones")
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--epochs", type=float, help="override the pair's epochs")
    ap.add_argument("--reuse", action="store_true", help="reuse finished runs of the same label (their metrics.json)")
    ap.add_argument("--data-root")
    ap.add_argument("--out", default=str(CACHE / "multitask"), help="where the runs go (default benchmarks/.cache/multitask)")
    args = ap.parse_args()
    offline()
    import yaml

    root, spec = data_root(args.data_root), PAIRS[args.pair]
    base = {"epochs": args.epochs or spec["epochs"], "batch_size": 32, "lr": args.lr, "seed": args.seed,
            "tensorboard": False, "save_minutes": None}
    tasks = pair_tasks(args.pair, root, spec["train"])
    out_dir = Path(args.out) / args.pair / ("" if args.seed == 42 else f"seed{args.seed}")
    def parse(item: str) -> tuple[str, dict]:
        name, _, rest = item.partition(":")
        overrides = {}
        for kv in filter(None, rest.split(",")):
            key, _, value = kv.partition("=")
            overrides[key.strip()] = yaml.safe_load(value)
        return name, overrides

    settings = [parse(item) for item in args.setting or ["default"]]
    suffix, single_overrides = parse(args.single_setting) if args.single_setting else ("", {})
    suffix = f"@{suffix}" if suffix else ""

    def done(label: str) -> dict | None:
        out = out_dir / label
        if not (out / "metrics.json").is_file():
            return None
        metrics = json.loads((out / "metrics.json").read_text())
        wall = out.parent / f"{out.name}.wall"
        metrics["process_wall_s"] = float(wall.read_text()) if wall.is_file() else metrics.get("wall_time_s")
        return metrics

    def get(label: str, run_tasks: list[dict], trainer: dict) -> dict:
        out = out_dir / label
        if args.reuse and done(label):
            return done(label)
        print(f"running {label} ...", flush=True)
        m = run_one(label, run_tasks, trainer, args.backbone, out)
        print(f"  done in {m['process_wall_s']:.0f} s", flush=True)
        return m

    single = {}
    if args.only != "joint":
        for t in tasks:
            single[t["name"]] = get(f"single-{t['name']}{suffix}", [t], {**base, **single_overrides})
    joint = {}
    if args.only != "single":
        for name, overrides in settings:
            run_tasks = [dict(t) for t in tasks]
            for key, value in overrides.items():  # tasks.NAME.KEY=VALUE: a key of that task's entry (weight, ...)
                if key.startswith("tasks."):
                    _, task_name, field = key.split(".", 2)
                    next(t for t in run_tasks if t["name"] == task_name)[field] = value
            trainer = {k: v for k, v in overrides.items() if not k.startswith("tasks.")}
            joint[name] = get(f"joint-{name}", run_tasks, {**base, **trainer})
    if args.reuse or args.only:  # the table also takes runs made by earlier invocations
        for t in tasks:
            if t["name"] not in single and done(f"single-{t['name']}{suffix}"):
                single[t["name"]] = done(f"single-{t['name']}{suffix}")
    report(args.pair, tasks, single, joint, settings, base, single_overrides)


def score_of(metrics: dict, task: str, main: str, own_best: bool = False) -> float | None:
    if own_best:
        best = (metrics.get("best_per_task") or {}).get(task)
        return best["score"] if best else None
    got = (metrics.get("tasks") or {}).get(task)
    return got[main] if got and main in got else None


def report(pair: str, tasks: list[dict], single: dict, joint: dict, settings, base: dict,
           single_overrides: dict | None = None) -> None:
    from nlpkit.registry import get_task_class

    mains = {t["name"]: get_task_class(t["type"]).main_score for t in tasks}
    print(f"\n{pair}: MiniLM, {base['epochs']:g} epochs of each task's data, batch {base['batch_size']}, "
          f"lr {base['lr']:g}, seed {base['seed']}")
    print("| run | setting | " + " | ".join(f"{n} {mains[n]}" for n in mains) + " | steps | wall time |")
    print("|---|---|" + "---|" * len(mains) + "---|---|")
    for n, m in single.items():
        cells = [f"{score_of(m, n, mains[n]):.2f}" if k == n else "–" for k in mains]
        said = ", ".join(f"{k}={v}" for k, v in (single_overrides or {}).items()) or "nlpkit defaults"
        print(f"| {n} alone | {said} | " + " | ".join(cells) + f" | {m['steps']} | {m.get('process_wall_s', 0):.0f} s |")
    for name, overrides in settings:
        m = joint.get(name)
        if m is None:
            continue
        cells = []
        for n in mains:
            s, own = score_of(m, n, mains[n]), score_of(m, n, mains[n], own_best=True)
            alone = score_of(single[n], n, mains[n]) if n in single else None
            delta = f" ({s - alone:+.2f})" if alone is not None and s is not None else ""
            cells.append(f"{s:.2f}{delta}; own best {own:.2f}" if own is not None else f"{s:.2f}{delta}")
        said = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "nlpkit defaults"
        per_task = m.get("steps_per_task") or {}
        steps = f"{m['steps']}" + (f" ({', '.join(f'{k} {v}' for k, v in per_task.items())})" if per_task else "")
        print(f"| joint | {name}: {said} | " + " | ".join(cells) + f" | {steps} | {m.get('process_wall_s', 0):.0f} s |")


if __name__ == "__main__":
    main()
