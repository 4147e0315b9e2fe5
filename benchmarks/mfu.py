#!/usr/bin/env python
"""Model FLOPs utilisation: how much of the machine's measured matmul rate nlpkit's training step uses.

1. Peak: the best rate of ``torch.matmul`` on two large square matrices (N x N, 2*N^3 FLOPs each), in
   fp32 and bf16, on the device the benchmark runs on. "Peak" here is measured, not a datasheet figure.
2. Achieved: real (unpadded) tokens per second of ``nlpkit.train`` on the CoNLL-2003 slice with the
   backbone (fresh process per precision; optimizer steps only, as nlpkit's metrics.json reports them),
   times the model FLOPs per token:

       FLOPs/token = 6 * N  +  12 * L * d * s_eff

   N = parameters doing matmuls per token (backbone without its embedding tables, plus the head),
   6 = 2 (multiply-add) x 3 (forward, and backward for activations and weights); the second term is the
   attention scores and weighted sum (Q K^T and A V: 2 * 2 * s * d per token per layer, x 3 for
   backward) with L layers, width d and s_eff = sum(s^2) / sum(s) over the training sentences' real
   lengths (PaLM, Chowdhery et al. 2022, appendix B). The table also shows the cruder
   "6 x all parameters" figure (embeddings included), which overstates the work for small encoders.

    python benchmarks/mfu.py                 # MiniLM, fp32 and bf16 on the CPU (bf16 on a GPU too)
    python benchmarks/mfu.py --quick
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()


def matmul_rate(n: int, dtype_name: str, repeats: int, device: str) -> dict[str, float]:
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        torch.matmul(a, b)
    rates = [2 * n**3 / _seconds(lambda: torch.matmul(a, b), device) for _ in range(repeats)]
    return {"best": max(rates), "median": statistics.median(rates)}


def _seconds(work, device: str) -> float:
    """Wall time of ``work()``, with the GPU's queue drained before and after it."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    work()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def step_matmul_rate(tokens: int, hidden: int, intermediate: int, dtype_name: str, repeats: int,
                     device: str) -> float:
    """FLOP/s of the matmuls of one encoder layer's training step alone, at the step's own shapes: the six
    projections (Q, K, V, output, FFN up, FFN down) of ``tokens`` x ``hidden`` activations, forward and
    both backward products (input and weight gradients), run back to back. The attention score products
    are left out (a few percent of the FLOPs at these lengths). This is the rate the step would reach if
    it did nothing but its matmuls: the ceiling of its MFU on this machine, short of the square peak
    when the shapes are small."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    linears = [(hidden, hidden)] * 4 + [(hidden, intermediate), (intermediate, hidden)]  # (in, out)
    shapes = []
    for k, n in linears:
        shapes += [(tokens, k, n), (tokens, n, k), (n, tokens, k)]  # forward, input gradient, weight gradient
    pairs = [(torch.randn(m, k, device=device).to(dtype), torch.randn(k, n, device=device).to(dtype))
             for m, k, n in shapes]
    flops = sum(2 * m * k * n for m, k, n in shapes)

    def all_of_them():
        for a, b in pairs:
            torch.matmul(a, b)

    for _ in range(2):  # warm-up
        all_of_them()
    return max(flops / _seconds(all_of_them, device) for _ in range(repeats))


def train_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: a short nlpkit.train run; returns its throughput and the model's shape."""
    import json

    import nlpkit

    out = Path(spec["workdir"]) / "run"
    result = nlpkit.train({
        "tasks": [{"type": "ner", "data": {"train": spec["train"]}, "options": {"max_length": spec["max_length"]}}],
        "backbone": {"spec": spec["backbone"]},
        "trainer": {"max_steps": spec["steps"], "batch_size": spec["batch_size"], "lr": 5e-4, "seed": 42},
        "precision": {"compute": spec["precision"]},
        "logging": {"progress": False, "log_every": spec["steps"]},
        "output_dir": str(out),
    })
    best = out / "best"
    meta = json.loads((best / "nlpkit.json").read_text())
    config = json.loads((best / "backbone" / "config.json").read_text())
    from safetensors import safe_open

    with safe_open(str(best / "model.safetensors"), "pt") as f:
        sizes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    numel = {k: int(__import__("math").prod(s)) for k, s in sizes.items()}
    embedding = sum(n for k, n in numel.items() if ".embeddings." in k and k.endswith("embeddings.weight"))
    m = result.metrics
    return {"system": "nlpkit", "tokens_per_s": m["train_tokens_per_s"], "samples_per_s": m["train_samples_per_s"],
            "precision": m["precision"], "parameters": sum(numel.values()), "embedding_parameters": embedding,
            "backbone_parameters": meta["backbone"]["parameters"], "layers": config.get("num_hidden_layers"),
            "hidden": config.get("hidden_size"), "intermediate": config.get("intermediate_size")}


def effective_length(train_file: Path, backbone: str, max_length: int) -> tuple[float, float]:
    """(mean real length, sum(s^2)/sum(s)) of the training sentences as the backbone tokenizes them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(backbone)
    words = [w for w, _ in C.read_conll_sentences(train_file)]
    lengths = [len(ids) for ids in tokenizer(words, is_split_into_words=True, truncation=True,
                                             max_length=max_length)["input_ids"]]
    return sum(lengths) / len(lengths), sum(s * s for s in lengths) / sum(lengths)


def main(argv=None) -> int:
    C.offline()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--quick", action="store_true", help="tiny random BERT, small matmul, few steps")
    p.add_argument("--precisions", default=None, help="comma list of fp32,bf16 (default: both)")
    p.add_argument("--size", type=int, default=None, help="matmul N (default 2048 on CPU, 8192 on GPU; 512 --quick)")
    p.add_argument("--matmul-repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=None, help="training steps per precision (default 20; 6 --quick)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--train-sentences", type=int, default=None, help="default 2000 (256 with --quick)")
    p.add_argument("--data-root")
    p.add_argument("--json")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)

    import torch

    info = C.device_info()
    device = "cuda" if info["type"] == "cuda" else "cpu"
    print(C.device_line(info))
    print(C.versions())
    precisions = (args.precisions or "fp32,bf16").split(",")
    if device == "cuda" and not info["bf16"]:
        precisions = [q for q in precisions if q != "bf16"]
    size = args.size or (512 if args.quick else 8192 if device == "cuda" else 2048)
    steps = args.steps or (6 if args.quick else 20)

    peaks = {}
    for q in precisions:
        peaks[q] = matmul_rate(size, q, args.matmul_repeats, device)
    print()
    print(C.markdown_table(
        [f"matmul {size}x{size} ({device}, {torch.get_num_threads()} threads)", "best TFLOP/s", "median TFLOP/s"],
        [[q, f"{peaks[q]['best'] / 1e12:.3f}", f"{peaks[q]['median'] / 1e12:.3f}"] for q in precisions]), flush=True)

    backbone = C.tiny_bert_folder() if args.quick else C.resolve_backbone(args.backbone)
    root = C.data_root(args.data_root)
    n_train = args.train_sentences or (256 if args.quick else 2000)
    train_file = C.conll_slices(root, n_train, 128 if args.quick else 500)["train"]
    mean_len, s_eff = effective_length(train_file, backbone, args.max_length)
    runs = {}
    for q in precisions:
        spec = {"system": "nlpkit", "backbone": backbone, "train": str(train_file), "steps": steps,
                "batch_size": args.batch_size, "max_length": args.max_length, "precision": q}
        runs[q] = C.run_worker(SCRIPT, spec, f"nlpkit {q}", args.verbose)
        print(f"   nlpkit.train {q}: {runs[q]['tokens_per_s']:.0f} tokens/s", flush=True)

    r0 = runs[precisions[0]]
    step_tokens = args.batch_size * math.ceil(mean_len)
    ceilings = {q: step_matmul_rate(step_tokens, r0["hidden"], r0["intermediate"] or 4 * r0["hidden"], q,
                                    args.matmul_repeats * 4, device) for q in precisions}
    rows = []
    for q in precisions:
        r = runs[q]
        n_all = r["parameters"]
        n_matmul = n_all - r["embedding_parameters"]
        per_token = 6 * n_matmul + 12 * r["layers"] * r["hidden"] * s_eff
        achieved = per_token * r["tokens_per_s"]
        crude = 6 * n_all * r["tokens_per_s"]
        rows.append([q, r["tokens_per_s"], f"{achieved / 1e12:.4f}", f"{peaks[q]['best'] / 1e12:.3f}",
                     f"{100 * achieved / peaks[q]['best']:.1f}%", f"{100 * crude / peaks[q]['best']:.1f}%"])
        r["flops_per_token"] = per_token
        r["mfu"] = achieved / peaks[q]["best"]
        r["model_flops_per_s"], r["step_matmul_rate"] = achieved, ceilings[q]
    print(f"\nmodel: {r0['parameters'] / 1e6:.2f}M parameters ({r0['embedding_parameters'] / 1e6:.2f}M in embedding tables, "
          f"{(r0['parameters'] - r0['embedding_parameters']) / 1e6:.2f}M in matmuls), {r0['layers']} layers, width "
          f"{r0['hidden']}; training sentences: mean {mean_len:.1f} tokens, s_eff {s_eff:.1f}; "
          f"{steps} steps x batch {args.batch_size}")
    print(f"FLOPs per real token = 6 x {(r0['parameters'] - r0['embedding_parameters']) / 1e6:.2f}M + 12 x "
          f"{r0['layers']} x {r0['hidden']} x {s_eff:.1f} = {r0['flops_per_token'] / 1e6:.1f} MFLOP\n")
    print(C.markdown_table(["training precision", "real tokens/s", "model TFLOP/s", "matmul peak TFLOP/s",
                            "MFU", "MFU by 6 x all params"], rows))
    print(f"\nthe step's matmuls alone ({step_tokens} tokens = batch {args.batch_size} x {math.ceil(mean_len)}, one "
          "layer's six projections, forward and backward, back to back):\n")
    print(C.markdown_table(
        ["precision", "matmul TFLOP/s at the step's shapes", "of the square peak", "step's model rate / this"],
        [[q, f"{ceilings[q] / 1e12:.3f}", f"{100 * ceilings[q] / peaks[q]['best']:.1f}%",
          f"{100 * runs[q]['model_flops_per_s'] / ceilings[q]:.1f}%"] for q in precisions]))
    C.save_json(args.json, {"device": info, "args": vars(args), "peaks": peaks, "runs": runs,
                            "mean_length": mean_len, "s_eff": s_eff, "step_tokens": step_tokens})
    return 0


if __name__ == "__main__":
    if not C.worker_main({"nlpkit": train_worker}):
        sys.exit(main())
