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
    python benchmarks/left_context.py --quick                  # preset mini, 300 bundled sentences, 40 steps: plumbing

Each training run's result is kept under benchmarks/.cache/left_context/results, keyed by the code version (nlpkit/,
tasks/, the benchmark helpers and this script) and the run's settings, so running again trains only what is missing
(--fresh trains everything again).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()
BUNDLED = C.ROOT / "tasks" / "data" / "ner"


def home() -> Path:
    """Everything this script keeps (C.CACHE is read at call time: the tests point it elsewhere)."""
    return C.CACHE / "left_context"


def code_version() -> str:
    return C.code_version("nlpkit", "tasks", "benchmarks/_common.py", str(SCRIPT.relative_to(C.ROOT)))


def file_id(path: str | None) -> str | None:
    """A data file by content (the cache must not reuse a result for another file at the same path)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if path else None


def quick_data(folder: Path, sentences: int) -> tuple[str, str]:
    """The first ``sentences`` of the bundled NER train file and its whole dev file."""
    blocks = [b for b in (BUNDLED / "train.conll").read_text(encoding="utf-8").split("\n\n") if b.strip()]
    train = folder / f"bundled-ner-train-{sentences}.conll"
    train.write_text("\n\n".join(blocks[:sentences]) + "\n", encoding="utf-8")
    return str(train), str(BUNDLED / "dev.conll")


def run(preset: str, causal: bool, seed: int, args: argparse.Namespace, folder: Path) -> dict:
    from nlpkit.engine.backbone import PRESETS
    from nlpkit.engine.config import RunConfig
    from nlpkit.engine.trainer import Trainer

    name = f"{preset}-causal" if causal else preset
    PRESETS[name] = dict(PRESETS[preset], **({"is_decoder": True} if causal else {}))
    data = {"train": args.train, "dev": args.dev} if args.train else {}
    config = {"tasks": [{"type": "ner", "data": data}], "backbone": {"spec": name},
              "trainer": {"max_steps": args.steps, "seed": seed, "lr": args.lr,
                          **({"batch_size": args.batch_size} if args.batch_size else {})},
              "logging": {"progress": False, "plots": False, "tensorboard": False},
              "output_dir": str(folder / f"{name}-{seed}")}
    start = time.perf_counter()
    trainer = Trainer(RunConfig.from_dict(config))
    metrics = trainer.run().metrics
    return {"preset": preset, "seed": seed, "mask": "causal" if causal else "bidirectional", "kind": trainer.backbone.kind,
            "f1": metrics["tasks"]["ner"]["f1"], "best_step": metrics["best_step"],
            "wall_s": time.perf_counter() - start}


def main(argv=None) -> int:
    C.offline()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=None, help="default: mini tiny (mini with --quick)")
    p.add_argument("--steps", type=int, default=None, help="default 600 (40 with --quick)")
    p.add_argument("--lr", type=float, default=None, help="default: the preset's")
    p.add_argument("--batch-size", type=int, default=None, help="default: nlpkit's (16 with --quick)")
    p.add_argument("--seeds", type=int, nargs="+", default=[42], help="one pair of runs per seed")
    p.add_argument("--train", help="CoNLL train file (default: the bundled NER data)")
    p.add_argument("--dev", help="CoNLL dev file")
    p.add_argument("--quick", action="store_true",
                   help="preset mini, the first 300 bundled train sentences, 40 steps of 16: checks the plumbing")
    p.add_argument("--fresh", action="store_true", help="train again what the result cache already holds")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--data-root", help="ignored (the data are --train/--dev or bundled); accepted as the other "
                                       "benchmarks accept it")
    args = p.parse_args(argv)
    args.presets = args.presets or (["mini"] if args.quick else ["mini", "tiny"])
    args.steps = args.steps or (40 if args.quick else 600)
    if args.quick:
        args.batch_size = args.batch_size or 16
    info = C.device_info()
    print(C.device_line(info))
    version = code_version()
    cache = C.ResultCache(home() / "results", version, args.fresh)
    print(f"code: {version}")
    rows = []
    with TemporaryDirectory() as tmp:
        source = args.train or "bundled"
        if args.quick and not args.train:
            args.train, args.dev = quick_data(Path(tmp), 300)
            source = "bundled, its first 300 train sentences"
        data = {"train": file_id(args.train), "dev": file_id(args.dev)} if args.train else "bundled"
        for preset in args.presets:
            for seed in args.seeds:
                for causal in (False, True):
                    settings = {"preset": preset, "causal": causal, "seed": seed, "steps": args.steps, "lr": args.lr,
                                "batch_size": args.batch_size, "data": data, "device": info["type"]}
                    row = cache.get(settings)
                    if row is None:
                        row = run(preset, causal, seed, args, Path(tmp))
                        cache.put(settings, row)
                    else:
                        print(f"{preset} seed {seed} {row['mask']}: measured before with this code and settings "
                              f"({cache.path(settings).name})")
                    rows.append(row)
    print(f"\nNER dev F1, {args.steps} steps, data: {source}\n")
    print("| preset | seed | attention mask | nlpkit backbone kind | dev F1 | best step | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['seed']} | {r['mask']} | {r['kind']} | {r['f1']:.2f} | {r['best_step']} | "
              f"{r['wall_s']:.0f} |")
    gaps = {}
    for preset in args.presets:
        gaps[preset] = [next(r["f1"] for r in rows if r["preset"] == preset and r["seed"] == seed
                             and r["mask"] == "bidirectional")
                        - next(r["f1"] for r in rows if r["preset"] == preset and r["seed"] == seed and r["mask"] == "causal")
                        for seed in args.seeds]
        print(f"\n{preset}: bidirectional minus causal F1, per seed: {', '.join(f'{g:+.2f}' for g in gaps[preset])}; "
              f"mean {sum(gaps[preset]) / len(gaps[preset]):+.2f}")
    C.save_json(args.json, {"device": info, "code": version, "steps": args.steps, "data": source, "rows": rows,
                            "gaps": gaps})
    return 0


if __name__ == "__main__":
    sys.exit(main())
