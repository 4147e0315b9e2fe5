"""Do two tasks' gradients on the shared backbone conflict, and how do their sizes compare?

For a pair of tasks on one backbone, this sets up the joint run nlpkit would train, then at a few points
of training measures, on the backbone's parameters only (the heads are not shared):

- each task's mean gradient over K batches, its norm, and the mean norm of one batch's gradient;
- the cosine between the two tasks' mean gradients;
- the same cosine between two disjoint halves of ONE task's batches: the agreement a task has with
  itself at this batch count, the yardstick the cross-task cosine is read against.

A cross-task cosine below 0 means the tasks pull the shared weights apart (what PCGrad projects away);
near 0 means they are unrelated; and a ratio of gradient norms far from 1 means a shared Adam state
lets one task set the step size of the other's updates.

    python benchmarks/multitask_conflict.py --pair conll-semeval --steps 0,300,900
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import data_root, offline  # noqa: E402
from multitask_quality import PAIRS, pair_tasks  # noqa: E402


def flat_grad(params):
    import torch

    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])


def measure(trainer, k: int) -> dict:
    import torch

    model = trainer.raw_model
    shared = [p for p in model.backbone.parameters() if p.requires_grad]
    out = {}
    grads = {}
    for t in trainer.tasks:
        stream = trainer.streams[t.name]
        batch_grads = []
        for _ in range(k):
            idx = stream.next_indices()
            from nlpkit.engine.evaluation import to_device

            batch = to_device(t.collate([stream.features[i] for i in idx]), trainer.acc.device)
            model.zero_grad(set_to_none=True)
            with trainer.acc.autocast():
                loss = model(t.name, batch)["loss"]
            loss.backward()
            batch_grads.append(flat_grad(shared))
        model.zero_grad(set_to_none=True)
        g = torch.stack(batch_grads)
        grads[t.name] = g
        out[t.name] = {"mean_grad_norm": float(g.mean(0).norm()), "batch_grad_norm": float(g.norm(dim=1).mean())}
    cos = torch.nn.functional.cosine_similarity
    a, b = [t.name for t in trainer.tasks]
    out["cosine_between_tasks"] = float(cos(grads[a].mean(0), grads[b].mean(0), dim=0))
    h = k // 2
    for n in (a, b):
        out[n]["cosine_within_task"] = float(cos(grads[n][:h].mean(0), grads[n][h:].mean(0), dim=0))
    out["norm_ratio"] = out[a]["mean_grad_norm"] / max(out[b]["mean_grad_norm"], 1e-12)
    out["batch_norm_ratio"] = out[a]["batch_grad_norm"] / max(out[b]["batch_grad_norm"], 1e-12)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", default="conll-semeval",
                    help="two of conll, semeval, wnut, sst2, trec joined by '-' (default conll-semeval)")
    ap.add_argument("--steps", default="0,300", help="joint training steps at which to measure (comma-separated)")
    ap.add_argument("--batches", type=int, default=16, help="batches per task per measurement (default 16)")
    ap.add_argument("--train-examples", type=int,
                    help="training examples per task (default: the sizes benchmarks/multitask_quality.py uses)")
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--data-root")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="trainer settings of the joint run, e.g. --set sampler=round-robin")
    args = ap.parse_args()
    offline()
    import yaml

    from nlpkit.engine.config import RunConfig
    from nlpkit.engine.renamed_keys import upgrade
    from nlpkit.engine.trainer import Trainer

    root = data_root(args.data_root)
    steps = sorted({int(s) for s in args.steps.split(",")})
    trainer_cfg = {"batch_size": 32, "lr": 1e-4, "seed": 42, "progress": False, "plots": False, "tensorboard": False,
                   "max_steps": max(steps[-1], 1), "eval_every": 10**9, "save_minutes": None}
    for item in args.set:
        key, _, value = item.partition("=")
        trainer_cfg[key] = yaml.safe_load(value)
    with tempfile.TemporaryDirectory() as tmp:
        sizes = args.train_examples or PAIRS.get(args.pair, {}).get("train")
        config = {"tasks": pair_tasks(args.pair, root, sizes), "backbone": {"spec": args.backbone},
                  "trainer": trainer_cfg, "output_dir": str(Path(tmp) / "run")}
        upgrade(config)  # --set names a setting by key alone (sampler=round-robin): each into its config section
        cfg = RunConfig.from_dict(config)
        trainer = Trainer(cfg)
        trainer.setup()
        rows = []
        import torch

        for target in steps:
            while trainer.state.step < target:
                trainer.train_step()
            trainer.model.eval()  # no dropout: the measured gradients differ by data, not by masks
            state = torch.random.get_rng_state()
            positions = {n: s.state_dict() for n, s in trainer.streams.items()}
            row = {"step": target, **measure(trainer, args.batches)}
            for n, s in trainer.streams.items():  # measuring must not move training's data position
                s.load_state_dict(positions[n])
            torch.random.set_rng_state(state)
            trainer.model.train()
            rows.append(row)
            print(json.dumps(row), flush=True)
        trainer._close()
    a, b = args.pair.split("-")
    print(f"\n| step | cos({a},{b}) | cos within {a} | cos within {b} | |g_{a}| / |g_{b}| (mean grad) | "
          f"per-batch norm ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['cosine_between_tasks']:.3f} | {r[a]['cosine_within_task']:.3f} | "
              f"{r[b]['cosine_within_task']:.3f} | {r['norm_ratio']:.2f} | {r['batch_norm_ratio']:.2f} |")


if __name__ == "__main__":
    main()
