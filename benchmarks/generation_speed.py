"""Generation speed of a trained translation / summarization checkpoint: sentences per second with
greedy search and with beam search, on the same inputs, after one warm-up batch.

    python benchmarks/generation_speed.py runs/translation-XXXX --data tasks/data/translation/dev.en \
        --n 300 --beams 1 4 --threads 1

Prints one line per beam size and, with --json, a JSON object at the end. Inputs are the sources of
a file the checkpoint's task reads (its dev data, say); scores on them are printed too, so a speed-up
that costs quality shows.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", required=True, help="a file the checkpoint's task reads (sources are used)")
    ap.add_argument("--task", help="task of the checkpoint (default: the only one)")
    ap.add_argument("--n", type=int, default=300, help="number of inputs")
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, help="override the checkpoint's limit")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    import nlpkit

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = nlpkit.load(args.checkpoint, device="cpu")
    task = pipe.task(args.task)
    examples = task.read(args.data)[: args.n]
    sources = [ex["source"] for ex in examples]
    extra = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
    pipe.predict(sources[: args.batch_size], task=args.task, batch_size=args.batch_size, **extra)  # warm-up
    results = []
    for beams in args.beams:
        start = time.perf_counter()
        preds = pipe.predict(sources, task=args.task, batch_size=args.batch_size, num_beams=beams, **extra)
        seconds = time.perf_counter() - start
        saved = task.options
        task.options = dataclasses.replace(task.options, num_beams=beams, **extra)
        scores = task.score(preds, examples)
        task.options = saved
        row = {"num_beams": beams, "sentences": len(sources), "seconds": round(seconds, 2),
               "sentences_per_s": round(len(sources) / seconds, 1),
               task.main_score: round(scores[task.main_score], 2),
               "mean_output_tokens": round(scores["mean_output_tokens"], 1)}
        results.append(row)
        print(f"num_beams={beams}: {row['sentences']} inputs in {seconds:.2f}s = {row['sentences_per_s']} sentences/s "
              f"({task.main_score} {row[task.main_score]}, mean output {row['mean_output_tokens']} tokens)", flush=True)
    info = {"checkpoint": str(pipe.path), "threads": torch.get_num_threads(), "batch_size": args.batch_size,
            "results": results}
    if args.json:
        print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
