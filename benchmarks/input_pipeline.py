#!/usr/bin/env python
"""What the input side of a training step costs, next to the step itself.

nlpkit tokenises every split once per run, in memory, before the first step (no per-epoch or per-step
tokenisation, no on-disk cache), and builds each batch with the task's ``collate``. This script times,
on the full CoNLL-2003 training set with the backbone's tokenizer:

- reading the file, ``fit`` (label set) and ``encode`` (tokenisation and label alignment, whole set);
- ``collate`` of every length-grouped batch of one epoch (the per-step Python work of the input side);
- a training step (forward, backward, AdamW) of the backbone on a few of those batches, for scale.

If tokenising the set costs about a second, an on-disk cache would save about a second per run; and if
collate costs well under 1% of a step, there is nothing to win there. Both are measured, not assumed.

    python benchmarks/input_pipeline.py                 # MiniLM, CoNLL-2003 train
    python benchmarks/input_pipeline.py --quick         # tiny random BERT, 2,000 sentences
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main(argv=None) -> int:
    C.offline()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--steps", type=int, default=None, help="training steps timed for scale (default 10; 3 --quick)")
    p.add_argument("--data-root")
    p.add_argument("--json")
    args = p.parse_args(argv)
    steps = args.steps or (3 if args.quick else 10)

    import nlpkit
    from nlpkit.engine.backbone import Backbone
    from nlpkit.sdk.data import LengthGroupedBatches
    from nlpkit.engine.optim import make_optimizer

    info = C.device_info()
    print(C.device_line(info))
    print(C.versions())
    root = C.data_root(args.data_root)
    train = root / "conll2003" / "train.txt.gz"
    if args.quick:
        train = C.conll_slices(root, 2000, 100)["train"]
    folder = C.tiny_bert_folder() if args.quick else C.resolve_backbone(args.backbone)
    backbone = Backbone.from_pretrained(str(folder))
    task = nlpkit.get_task_class("ner")(options={"max_length": args.max_length})

    t0 = time.perf_counter()
    examples = task.read(str(train))
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    task.fit(examples)
    task.setup(backbone)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    features = task.encode(examples)
    t_encode = time.perf_counter() - t0

    lengths = [task.feature_length(f) for f in features]
    batches = LengthGroupedBatches(lengths, args.batch_size, seed=42).batches(0)
    collate_ms = []
    collated = []
    for idx in batches:
        t0 = time.perf_counter()
        batch = task.collate([features[i] for i in idx])
        collate_ms.append(1000 * (time.perf_counter() - t0))
        collated.append(batch)

    head = task.build_head(backbone)
    from nlpkit.engine.model import MultiTaskModel

    model = MultiTaskModel(backbone, {task.name: head})
    model.train()
    optimizer = make_optimizer(model, 5e-4, 0.01)
    picks = [collated[k] for k in range(0, len(collated), max(1, len(collated) // (steps + 1)))][: steps + 1]
    step_ms = []
    for k, batch in enumerate(picks):
        t0 = time.perf_counter()
        loss = model(task.name, batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if k:  # the first step allocates; leave it out
            step_ms.append(1000 * (time.perf_counter() - t0))

    n = len(examples)
    tokens = sum(lengths)
    mean_collate, mean_step = statistics.mean(collate_ms), statistics.mean(step_ms)
    print(f"\ndata: {train} ({n} sentences, {tokens} tokens with specials); backbone {folder}; "
          f"batch {args.batch_size}, max length {args.max_length}\n")
    print(C.markdown_table(
        ["stage", "total s", "per sentence us", "note"],
        [["read (CoNLL reader)", f"{t_read:.3f}", 1e6 * t_read / n, "once per run"],
         ["fit + setup (labels, tokenizer)", f"{t_fit:.3f}", 1e6 * t_fit / n, "once per run"],
         ["encode (tokenise, align labels)", f"{t_encode:.3f}", 1e6 * t_encode / n, "once per run, in memory"],
         ["collate, all batches of an epoch", f"{sum(collate_ms) / 1000:.3f}", 1000 * sum(collate_ms) / n,
          f"{len(batches)} batches"]]))
    print()
    print(C.markdown_table(
        ["per batch", "mean ms", "median ms", "max ms"],
        [["collate", mean_collate, statistics.median(collate_ms), max(collate_ms)],
         ["training step (forward, backward, AdamW)", mean_step, statistics.median(step_ms), max(step_ms)]]))
    print(f"\ncollate is {100 * mean_collate / mean_step:.2f}% of a training step; tokenising the whole "
          f"training set once costs {t_encode / (mean_step / 1000):.1f} training steps")
    C.save_json(args.json, {"device": info, "args": vars(args), "read_s": t_read, "fit_s": t_fit,
                            "encode_s": t_encode, "collate_ms": collate_ms, "step_ms": step_ms,
                            "sentences": n, "tokens": tokens})
    return 0


if __name__ == "__main__":
    sys.exit(main())
