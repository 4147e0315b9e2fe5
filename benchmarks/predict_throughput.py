#!/usr/bin/env python
"""Inference throughput: ``nlpkit.load(DIR).predict`` against ``transformers.pipeline("token-classification")``.

One model, two runtimes. An nlpkit NER checkpoint (trained here on the CoNLL-2003 slice unless
--checkpoint is given; cached) is exported weight for weight into an AutoModelForTokenClassification
folder, which the Hugging Face pipeline loads. Exporting (rather than importing an HF-trained model)
keeps nlpkit's checkpoint the single source of truth, and the export fails unless every HF weight is
matched, so both sides compute the same function.

Both get the same sentences (the first N of CoNLL-2003 valid) as lists of words, the same batch size,
and fp32. The pipeline runs with ``aggregation_strategy="first"`` (a word takes the label of its first
sub-token: the rule nlpkit trains and decodes with) and ``is_split_into_words=True``. A "word" must
mean the same on both sides: the pipeline's "first" strategy treats every WordPiece word (BERT splits
"U.S." into u . s .) as a word, so by default each CoNLL token is split into the tokenizer's
pre-tokenizer pieces before either side sees it (``--words conll`` keeps CoNLL tokens; then the two
differ by definition on tokens such as "U.S." or "1-0"). The input ids the model sees are identical
either way.

Compared per sentence, for equality: the list of entities as (type, start character, end character)
in the text "words joined by one space" (both sides build that same text), in order. Scores (the mean
probability of the entity's words) are compared with a tolerance and reported as the largest difference.
Timed: the whole call, from word lists to entity lists (tokenisation, batching, the model, decoding).

With onnx/onnxruntime installed (``nlpkit[onnx]``) a third row runs the checkpoint exported by
``nlpkit export --format onnx`` under onnxruntime, inside nlpkit's own encoding, batching and decoding
(``nlpkit.load(DIR, runtime="onnxruntime")``), so it differs from the first row by the runtime alone; its entities
are compared with nlpkit's the same way (``--no-onnx`` leaves it out).

With the bf16 variant (default), the pipeline also runs in bf16 (``dtype=torch.bfloat16``): nlpkit bf16 is
compared with that, like for like; how many sentences' entities differ from fp32 is printed for both sides.
Ratios are ratios of the medians over alternating repeats, with a bootstrap 95% interval.

    python benchmarks/predict_throughput.py                 # MiniLM, 2,000 sentences, 5 repeats
    python benchmarks/predict_throughput.py --quick
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def train_checkpoint(args: argparse.Namespace, backbone: str, root: Path) -> Path:
    """Train (once; cached) the nlpkit NER model the benchmark serves."""
    name = Path(backbone).name
    out = C.CACHE / "predict-model" / f"{name}-{args.train_sentences}-{args.train_steps}"
    if (out / "best" / "nlpkit.json").is_file():
        print(f"model: cached nlpkit checkpoint {out / 'best'}")
        return out / "best"
    files = C.conll_slices(root, args.train_sentences, 128 if args.quick else 500)
    cmd = [sys.executable, "-m", "nlpkit", "train", "--task", "ner", "--data", f"train={files['train']}",
           "--data", f"dev={files['dev']}", "--backbone", backbone, "--max-steps", str(args.train_steps),
           "--batch-size", "32", "--lr", str(args.train_lr), "--seed", "42", "--output-dir", str(out),
           "--no-progress", "--set", f"trainer.eval_every={args.train_steps}",
           "--set", f"logging.log_every={args.train_steps}"]
    print("model: training the nlpkit checkpoint once:", " ".join(cmd[1:]), flush=True)
    env = {**__import__("os").environ, **C.OFFLINE_ENV}
    subprocess.run(cmd, check=True, env=env)
    return out / "best"


def input_words(args: argparse.Namespace, root: Path, tokenizer: Any) -> list[list[str]]:
    sentences = C.read_conll_sentences(root / "conll2003" / "valid.txt.gz")[: args.sentences]
    if len(sentences) < args.sentences:
        sys.exit(f"conll2003 valid has only {len(sentences)} sentences")
    if args.words == "conll":
        return [words for words, _ in sentences]
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    return [[piece for w in words for piece, _ in pre.pre_tokenize_str(w)] for words, _ in sentences]


def nlpkit_entities(predictions: list[dict]) -> list[list[tuple]]:
    return [[(e["type"], e["start"], e["end"], e["score"]) for e in p["entities"]] for p in predictions]


def hf_entities(outputs: list[list[dict]]) -> list[list[tuple]]:
    return [[(e["entity_group"], int(e["start"]), int(e["end"]), float(e["score"])) for e in out] for out in outputs]


def compare(a: list[list[tuple]], b: list[list[tuple]], words: list[list[str]], tol: float) -> dict[str, Any]:
    same, examples, max_score_diff, n_entities = 0, [], 0.0, 0
    for i, (x, y) in enumerate(zip(a, b)):
        n_entities += len(x)
        if [e[:3] for e in x] == [e[:3] for e in y]:
            same += 1
            for ex, ey in zip(x, y):
                max_score_diff = max(max_score_diff, abs(ex[3] - ey[3]))
        elif len(examples) < 5:
            text = " ".join(words[i])
            examples.append({"sentence": i, "text": text[:160],
                             "nlpkit": [(t, s, e, text[s:e]) for t, s, e, _ in x],
                             "hf": [(t, s, e, text[s:e]) for t, s, e, _ in y]})
    return {"sentences": len(a), "identical": same, "entities_nlpkit": n_entities,
            "entities_hf": sum(len(y) for y in b), "max_score_diff": max_score_diff,
            "scores_within_tolerance": max_score_diff <= tol, "differences": examples}


VARIANT_ARGS = {"bf16": 'precision="bf16"', "int8": 'quantize="int8"'}


def dev_file(args: argparse.Namespace, root: Path) -> Path:
    """The scored inputs with their gold labels, as a CoNLL file (the same sentences, CoNLL tokens)."""
    out = C.CACHE / f"predict-gold-{args.sentences}.conll"
    if not out.is_file():
        sentences = C.read_conll_sentences(root / "conll2003" / "valid.txt.gz")[:args.sentences]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join("".join(f"{w} {t}\n" for w, t in zip(words, tags)) + "\n" for words, tags in sentences))
    return out


def main(argv=None) -> int:
    C.offline()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="minilm", help="alias or local model folder for the trained model (default minilm)")
    p.add_argument("--checkpoint", help="an existing nlpkit NER checkpoint or run folder (skips training)")
    p.add_argument("--quick", action="store_true", help="tiny random BERT, 200 sentences, 1 repeat")
    p.add_argument("--sentences", type=int, default=None, help="default 2000 (200 with --quick)")
    p.add_argument("--batch-size", type=int, default=64, help="both sides (default 64)")
    p.add_argument("--repeats", type=int, default=None, help="default 5 (1 with --quick), the order alternating")
    p.add_argument("--words", choices=["pieces", "conll"], default="pieces")
    p.add_argument("--hf-batch-size", type=int, default=None,
                   help="give the pipeline a different batch size (its own default is 1)")
    p.add_argument("--train-sentences", type=int, default=None, help="default 2000 (256 with --quick)")
    p.add_argument("--train-steps", type=int, default=None, help="default 60 (20 with --quick)")
    p.add_argument("--train-lr", type=float, default=5e-4)
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed score difference")
    p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=None,
                   help="add an onnxruntime row (default: when onnxruntime is installed)")
    p.add_argument("--variants", default="bf16,int8",
                   help="cheaper nlpkit rows, compared with fp32: bf16 autocast, int8 Linear layers (CPU); '' for none")
    p.add_argument("--data-root")
    p.add_argument("--json")
    args = p.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    if args.onnx is None:
        import importlib.util

        args.onnx = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))
    args.sentences = args.sentences or (200 if args.quick else 2000)
    args.repeats = args.repeats or (1 if args.quick else 5)
    args.train_steps = args.train_steps or (20 if args.quick else 60)
    args.train_sentences = args.train_sentences or (256 if args.quick else 2000)

    import torch
    from transformers import AutoTokenizer, pipeline

    import nlpkit

    info = C.device_info()
    print(C.device_line(info))
    print(C.versions())
    root = C.data_root(args.data_root)
    if args.checkpoint:
        ckpt = nlpkit.engine.checkpoint.resolve(args.checkpoint) if hasattr(nlpkit, "checkpoint") else Path(args.checkpoint)
    else:
        backbone = C.tiny_bert_folder() if args.quick else C.resolve_backbone(args.backbone)
        ckpt = train_checkpoint(args, backbone, root)
    from nlpkit.engine import checkpoint as nlpkit_checkpoint

    ckpt = nlpkit_checkpoint.resolve(ckpt)
    hf_dir = C.export_token_classification(ckpt, C.CACHE / "predict-export" / ckpt.parent.name)
    print(f"nlpkit checkpoint {ckpt}\nexported to {hf_dir} (AutoModelForTokenClassification, same weights)")

    device = "cuda" if info["type"] == "cuda" else "cpu"
    nlp = nlpkit.load(ckpt, device=device)
    hf = pipeline("token-classification", model=str(hf_dir), tokenizer=str(hf_dir),
                  aggregation_strategy="first", device=0 if device == "cuda" else -1)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    words = input_words(args, root, tokenizer)
    n_tokens = sum(len(ids) for ids in tokenizer(words, is_split_into_words=True)["input_ids"])
    hf_bs = args.hf_batch_size or args.batch_size
    print(f"inputs: the first {len(words)} sentences of CoNLL-2003 valid ({n_tokens} tokens with specials), "
          f"words = {'tokenizer pre-tokenizer pieces of each CoNLL token' if args.words == 'pieces' else 'CoNLL tokens'}; "
          f"batch size nlpkit {args.batch_size}, HF {hf_bs}; fp32; HF aggregation_strategy=first", flush=True)

    def run_nlpkit():
        return nlp.predict([{"tokens": w} for w in words], batch_size=args.batch_size)

    def run_hf():
        return hf(words, batch_size=hf_bs, is_split_into_words=True)

    systems = [("nlpkit", run_nlpkit), ("hf", run_hf)]
    hf_bf16 = None
    if "bf16" in args.variants:  # the like-for-like partner of nlpkit's bf16 row: the same pipeline in bf16
        hf_bf16 = pipeline("token-classification", model=str(hf_dir), tokenizer=str(hf_dir), dtype=torch.bfloat16,
                           aggregation_strategy="first", device=0 if device == "cuda" else -1)
        systems.append(("hf_bf16", lambda: hf_bf16(words, batch_size=hf_bs, is_split_into_words=True)))
    # cheaper nlpkit variants, each compared with nlpkit fp32 (agreement) and scored on gold labels
    variants: dict[str, Any] = {}
    for name, load_args in [("bf16", {"precision": "bf16"}), ("int8", {"quantize": "int8"})]:
        if name in args.variants and not (name == "int8" and device != "cpu"):
            variants[name] = nlpkit.load(ckpt, device=device, **load_args)
            systems.append((name, lambda v=variants[name]: v.predict([{"tokens": w} for w in words],
                                                                     batch_size=args.batch_size)))
    if args.onnx:
        run_onnx = onnx_runner(ckpt, words, args.batch_size)
        systems.append(("onnxruntime", run_onnx))

    # warm-up: first calls allocate and pick kernels
    nlp.predict([{"tokens": w} for w in words[:64]], batch_size=args.batch_size)
    for v in variants.values():
        v.predict([{"tokens": w} for w in words[:64]], batch_size=args.batch_size)
    hf(words[:64], batch_size=hf_bs, is_split_into_words=True)
    if hf_bf16 is not None:
        hf_bf16(words[:64], batch_size=hf_bs, is_split_into_words=True)

    timings: dict[str, list[float]] = {name: [] for name, _ in systems}
    outputs: dict[str, Any] = {}
    for r in range(args.repeats):
        order = systems
        for name, fn in order if r % 2 == 0 else order[::-1]:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = fn()
            if device == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            timings[name].append(len(words) / dt)
            outputs.setdefault(name, out)
            print(f"   repeat {r + 1} {name:>6}: {len(words) / dt:8.1f} sentences/s ({dt:.1f} s)", flush=True)

    result = compare(nlpkit_entities(outputs["nlpkit"]), hf_entities(outputs["hf"]), words, args.tolerance)
    ratios = [a / b for a, b in zip(timings["nlpkit"], timings["hf"])]
    import statistics

    print()
    print(C.markdown_table(
        ["system", "sentences/s (median)", "min", "max", "tokens/s (median)"],
        [["nlpkit.load(DIR).predict", statistics.median(timings["nlpkit"]), min(timings["nlpkit"]), max(timings["nlpkit"]),
          statistics.median(timings["nlpkit"]) * n_tokens / len(words)],
         ["transformers.pipeline", statistics.median(timings["hf"]), min(timings["hf"]), max(timings["hf"]),
          statistics.median(timings["hf"]) * n_tokens / len(words)]]
        + [[f"nlpkit.load(DIR, {VARIANT_ARGS[n]}).predict", statistics.median(timings[n]), min(timings[n]),
            max(timings[n]), statistics.median(timings[n]) * n_tokens / len(words)] for n in variants]
        + ([['transformers.pipeline(dtype=torch.bfloat16)', statistics.median(timings["hf_bf16"]),
             min(timings["hf_bf16"]), max(timings["hf_bf16"]),
             statistics.median(timings["hf_bf16"]) * n_tokens / len(words)]] if hf_bf16 is not None else [])
        + ([['nlpkit.load(DIR, runtime="onnxruntime").predict', statistics.median(timings["onnxruntime"]),
             min(timings["onnxruntime"]), max(timings["onnxruntime"]),
             statistics.median(timings["onnxruntime"]) * n_tokens / len(words)]] if args.onnx else [])))
    def ratio(a: str, b: str) -> list[str]:
        r, lo, hi = C.ratio_interval(timings[a], timings[b])
        return [f"{r:.2f}x", f"{lo:.2f}-{hi:.2f}"]

    rows = [["nlpkit fp32 / HF pipeline fp32 (like for like)", *ratio("nlpkit", "hf")]]
    for n in variants:
        if n == "bf16" and hf_bf16 is not None:
            rows.append(["nlpkit bf16 / HF pipeline bf16 (like for like)", *ratio("bf16", "hf_bf16")])
        rows.append([f"nlpkit {n} / HF pipeline fp32 (not like for like)", *ratio(n, "hf")])
        rows.append([f"nlpkit {n} / nlpkit fp32", *ratio(n, "nlpkit")])
    if hf_bf16 is not None:
        rows.append(["HF pipeline bf16 / HF pipeline fp32", *ratio("hf_bf16", "hf")])
    if args.onnx:
        for base, label in (("hf", "HF pipeline fp32"), ("nlpkit", "nlpkit fp32")):
            rows.append([f"nlpkit onnxruntime / {label} (runtime against runtime)", *ratio("onnxruntime", base)])
    print()
    print(f"sentences/s ratios: ratio of the medians, bootstrap 95% interval, n={args.repeats} repeats each")
    print(C.markdown_table(["sentences/s ratio", "median", "95% CI"], rows))
    print()
    print(f"outputs: {result['identical']}/{result['sentences']} sentences with identical entity lists "
          f"(type, start, end); entities nlpkit {result['entities_nlpkit']}, HF {result['entities_hf']}; "
          f"largest score difference {result['max_score_diff']:.2e} "
          f"({'within' if result['scores_within_tolerance'] else 'OVER'} tolerance {args.tolerance:g})")
    for d in result["differences"]:
        print(f"   differs: sentence {d['sentence']}: {d['text']!r}\n      nlpkit {d['nlpkit']}\n      HF     {d['hf']}")
    onnx_ok = True
    if args.onnx:
        onnx_result = compare(nlpkit_entities(outputs["nlpkit"]), nlpkit_entities(outputs["onnxruntime"]), words,
                              args.tolerance)
        onnx_ok = onnx_result["identical"] == onnx_result["sentences"] and onnx_result["scores_within_tolerance"]
        print(f"onnxruntime: {onnx_result['identical']}/{onnx_result['sentences']} sentences with the same entity "
              f"lists as nlpkit; largest score difference {onnx_result['max_score_diff']:.2e}")
        result["onnxruntime"] = onnx_result
    if variants:
        gold = dev_file(args, root)
        print(f"\nagreement with nlpkit fp32 on the {len(words)} inputs, and entity F1 on gold labels "
              f"({gold.name}, untimed):")
        f1 = {"fp32": nlp.evaluate(str(gold))["f1"]}
        table = [["fp32", "-", "-", f1["fp32"]]]
        for n, v in variants.items():
            same = compare(nlpkit_entities(outputs["nlpkit"]), nlpkit_entities(outputs[n]), words, args.tolerance)
            f1[n] = v.evaluate(str(gold))["f1"]
            table.append([n, f"{same['identical']}/{same['sentences']}", f"{same['max_score_diff']:.2e}", f1[n]])
            result[n] = {**same, "f1": f1[n]}
        result["f1_fp32"] = f1["fp32"]
        if hf_bf16 is not None:
            same = compare(hf_entities(outputs["hf"]), hf_entities(outputs["hf_bf16"]), words, args.tolerance)
            table.append(["HF pipeline bf16 (against HF fp32)", f"{same['identical']}/{same['sentences']}",
                          f"{same['max_score_diff']:.2e}", "-"])
            result["hf_bf16"] = same
        print(C.markdown_table(["nlpkit precision", "sentences with the same entities as fp32",
                                "largest score difference", "entity F1"], table))
    C.save_json(args.json, {"device": info, "args": vars(args), "timings": timings, "ratios": ratios,
                            "comparison": result, "tokens": n_tokens})
    return 0 if result["identical"] == result["sentences"] and result["scores_within_tolerance"] and onnx_ok else 1


def onnx_runner(ckpt: Path, words: list[list[str]], batch_size: int):
    """``nlpkit.load(DIR, runtime="onnxruntime")``: the graph nlpkit exports (cached under benchmarks/.cache),
    run by onnxruntime under nlpkit's own encoding, batching and decoding: the row shows what the runtime alone
    changes."""
    import os
    import tempfile

    import torch

    import nlpkit

    # an empty cache, so the export (done once per checkpoint, then read from the cache) is measured; it is not
    # part of the timed predictions
    os.environ["NLPKIT_CACHE"] = tempfile.mkdtemp(prefix="onnx-", dir=C.CACHE)
    t0 = time.perf_counter()
    pipe = nlpkit.load(ckpt, runtime="onnxruntime")
    print(f"onnx: {pipe._runner.folders[pipe.task().name] / 'model.onnx'} (onnxruntime, {torch.get_num_threads()} "
          f"threads); export, check and session start took {time.perf_counter() - t0:.1f} s, once per checkpoint "
          "(later loads read the cache), not timed below")
    items = [{"tokens": w} for w in words]
    pipe.predict(items[:64], batch_size=batch_size)  # warm-up
    return lambda: pipe.predict(items, batch_size=batch_size)


if __name__ == "__main__":
    sys.exit(main())
