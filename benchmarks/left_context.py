#!/usr/bin/env python
"""What left context alone costs a token task: the same model with a bidirectional and a causal attention mask.

A decoder-only LLM tags each token from what precedes it, never from what follows. Comparing an encoder with a
decoder mixes that with everything else that differs (normalisation, activations, positions, pretraining), so this
script holds everything else fixed: the from-scratch BERT preset of nlpkit, trained twice on the same NER data with
the same seed, steps and learning rate, once as it is (every token sees the whole sentence) and once with
``is_decoder=True`` (BERT's own causal self-attention mask: each token sees itself and the tokens before it).
nlpkit treats the second as a decoder backbone, exactly as it treats Llama or GPT-2.

    python benchmarks/left_context.py                          # bundled NER data, presets mini and tiny, 600 steps
    python benchmarks/left_context.py --presets mini --steps 300
    python benchmarks/left_context.py --train conll/train.txt.gz --dev conll/valid.txt.gz
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from tempfile import TemporaryDirectory


def run(preset: str, causal: bool, seed: int, args: argparse.Namespace, folder: Path) -> dict:
    from nlpkit.backbone import PRESETS
    from nlpkit.config import RunConfig
    from nlpkit.trainer import Trainer

    name = f"{preset}-causal" if causal else preset
    PRESETS[name] = dict(PRESETS[preset], **({"is_decoder": True} if causal else {}))
    data = {"train": args.train, "dev": args.dev} if args.train else {}
    config = {"tasks": [{"type": "ner", "data": data}], "backbone": {"spec": name},
              "trainer": {"max_steps": args.steps, "seed": seed, "progress": False, "plots": False,
                          "tensorboard": False, "lr": args.lr},
              "output_dir": str(folder / f"{name}-{seed}")}
    start = time.perf_counter()
    trainer = Trainer(RunConfig.from_dict(config))
    metrics = trainer.run().metrics
    return {"preset": preset, "seed": seed, "mask": "causal" if causal else "bidirectional", "kind": trainer.backbone.kind,
            "f1": metrics["tasks"]["ner"]["f1"], "best_step": metrics["best_step"],
            "wall_s": time.perf_counter() - start}


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["mini", "tiny"])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=None, help="default: the preset's")
    p.add_argument("--seeds", type=int, nargs="+", default=[42], help="one pair of runs per seed")
    p.add_argument("--train", help="CoNLL train file (default: the bundled NER data)")
    p.add_argument("--dev", help="CoNLL dev file")
    args = p.parse_args()
    rows = []
    with TemporaryDirectory() as tmp:
        for preset in args.presets:
            for seed in args.seeds:
                for causal in (False, True):
                    rows.append(run(preset, causal, seed, args, Path(tmp)))
    print(f"\nNER dev F1, {args.steps} steps, data: {args.train or 'bundled'}\n")
    print("| preset | seed | attention mask | nlpkit backbone kind | dev F1 | best step | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['seed']} | {r['mask']} | {r['kind']} | {r['f1']:.2f} | {r['best_step']} | "
              f"{r['wall_s']:.0f} |")
    for preset in args.presets:
        gaps = [next(r["f1"] for r in rows if r["preset"] == preset and r["seed"] == seed and r["mask"] == "bidirectional")
                - next(r["f1"] for r in rows if r["preset"] == preset and r["seed"] == seed and r["mask"] == "causal")
                for seed in args.seeds]
        print(f"\n{preset}: bidirectional minus causal F1, per seed: {', '.join(f'{g:+.2f}' for g in gaps)}; "
              f"mean {sum(gaps) / len(gaps):+.2f}")


if __name__ == "__main__":
    main()
