"""Causal language modelling: next-token prediction on raw text, for decoder-only backbones.

The pretraining (or continued pretraining) of a decoder: ``nlpkit train --task causal-lm --backbone
tiny-decoder --data train=corpus.txt`` from scratch, or ``--backbone PATH`` for a pretrained GPT-2 /
Llama / Qwen folder. Documents (one per line, or separated by blank lines; .txt, .jsonl, .gz, a folder)
are tokenised once into the memory-mapped cache of ``nlpkit.sdk.corpus`` and packed into blocks of
``max_length`` tokens with no padding, as transformers' run_clm.py does: each document is followed by
the separator (the tokenizer's SEP, else EOS), and each block starts with the BOS token when the
tokenizer has one. ``within_document`` keeps every block inside one document instead.

The head owns no weights: the logits are the decoder's own LM head (``Backbone.lm_logits``) over the
hidden states of ``Backbone.encode``, and the loss is the mean next-token cross-entropy (fp32) over the
real positions of a batch, the loss transformers' ``model(input_ids, labels=input_ids)`` computes.

Evaluation is deterministic (no masking, no sampling): the summed negative log-likelihood, the number of
predicted tokens and the top-1 hits of each block are added up per document (the document a block
starts in), and the scores are perplexity, next-token accuracy (percent; the main score, as it is
bounded and higher-is-better, so it mixes with other tasks' scores in a multi-task run), the mean loss
and the token count. ``nlpkit predict`` takes a prompt and prints its greedy continuation (transformers'
``generate``), which stops at EOS or at the document separator.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nlpkit import register_task
from nlpkit.sdk.corpus import CorpusOptions, CorpusTask
from nlpkit.sdk.errors import ConfigError
from nlpkit.sdk.modeling import Modeling
from nlpkit.sdk.options import require

from . import DATA_DIR

log = logging.getLogger("nlpkit.causal_lm")


@dataclass
class CausalLmOptions(CorpusOptions):
    #: the block size: tokens per training sequence (the BOS prefix included)
    max_length: int = 128
    #: predict: the longest continuation of a prompt
    max_new_tokens: int = 64
    #: predict: 1 = greedy search; more = beam search
    num_beams: int = 1

    def validate(self, key: str) -> None:
        super().validate(key)
        require(bool(self.text_field), f"{key}.text_field", "must name a field")
        require(1 <= self.max_new_tokens <= 100_000, f"{key}.max_new_tokens", "must be between 1 and 100000")
        require(self.num_beams >= 1, f"{key}.num_beams", "must be >= 1")


@register_task("causal-lm")
class CausalLmTask(CorpusTask):
    sample_inputs = ["The council met on", "Once upon a time"]
    description = "causal language modelling on raw text (decoders: pretraining, domain adaptation; perplexity)"
    Options = CausalLmOptions
    main_score = "accuracy"
    curve_metric = "perplexity"
    backbone_kinds = ("decoder",)

    def default_data(self) -> dict[str, str]:
        folder = DATA_DIR / "pretraining"
        return {"train": str(folder / "train.txt"), "dev": str(folder / "dev.txt")}

    # ---- the model ------------------------------------------------------------------------------------
    def modeling(self) -> Modeling:
        return CausalLmModeling(self.name, self.options)

    # ---- scoring -------------------------------------------------------------------------------------
    def score(self, predictions: Sequence[dict], examples: Any) -> dict[str, Any]:
        nll = sum(p["nll"] for p in predictions)
        tokens = sum(p["tokens"] for p in predictions)
        correct = sum(p["correct"] for p in predictions)
        if not tokens:  # nothing to predict (every document a single token): no loss to report
            return {"accuracy": 0.0, "perplexity": float("nan"), "loss": float("nan"), "tokens": 0}
        loss = nll / tokens
        return {"accuracy": 100.0 * correct / tokens, "perplexity": math.exp(min(loss, 700.0)), "loss": loss,
                "tokens": tokens}

    # ---- raw input -----------------------------------------------------------------------------------
    def parse_input(self, item: str | dict) -> dict:
        from nlpkit.sdk.data import input_text

        if isinstance(item, dict):
            field = "prompt" if "prompt" in item else self.options.text_field
            return {"prompt": input_text(item.get(field), field)}
        return {"prompt": input_text(item, "prompt")}

    def format_prediction(self, prediction: dict) -> str:
        """A prompt and its continuation; or, for a scored document, its perplexity and accuracy."""
        if "prompt" in prediction:
            return prediction["prompt"] + prediction["text"]
        tokens = prediction["tokens"]
        if not tokens:
            return "no predicted tokens (the document's text lies in a block that starts in another document)"
        return (f"perplexity {math.exp(min(prediction['nll'] / tokens, 700)):.2f}, next-token accuracy "
                f"{100.0 * prediction['correct'] / tokens:.1f}% over {tokens} tokens")


class CausalLmModeling(Modeling):
    """Blocks of a corpus scored token by token, or a prompt continued."""

    generates_text = True

    def __init__(self, name: str, options: Any):
        self.name, self.options = name, options

    def setup(self, backbone: Any) -> None:
        from nlpkit.sdk.corpus import separator_id

        super().setup(backbone)
        tok = self.tokenizer
        self.prefix_ids = () if tok.bos_token_id is None else (int(tok.bos_token_id),)
        # generation ends where a document ends in training: at EOS, or at the separator put after each document
        self.stop_ids = sorted({int(t) for t in (tok.eos_token_id, separator_id(tok)) if t is not None})
        positions = getattr(backbone.model.config, "max_position_embeddings", None)
        if positions and self.options.max_length > positions:
            raise ConfigError(f"tasks.{self.name}.options.max_length: {self.options.max_length} tokens per block, but "
                              f"backbone {backbone.spec!r} has {positions} positions; lower max_length")

    def encode(self, examples: Any) -> Any:
        """Blocks of the corpus (labelled: every token is a target), or prompt features for ``predict``."""
        from nlpkit.sdk.corpus import pack

        if _is_prompts(examples):
            return self._encode_prompts(examples)
        o = self.options
        return pack(examples, self.tokenizer, o.max_length, within_document=o.within_document,
                    prefix_ids=self.prefix_ids, suffix_ids=())

    def _encode_prompts(self, examples: Sequence[dict]) -> list[dict]:
        """BOS + the prompt's tokens; a prompt longer than a block keeps its last tokens (the nearest context)."""
        room = self.options.max_length - len(self.prefix_ids)
        ids = self.tokenizer([ex["prompt"] for ex in examples], add_special_tokens=False)["input_ids"]
        cut = sum(len(x) > room for x in ids)
        if cut:
            log.warning(f"{self.name}: {cut} of {len(ids)} prompt(s) longer than max_length={self.options.max_length} "
                        "tokens keep only their last tokens")
        return [{"example_index": i, "input_ids": [*self.prefix_ids, *x[len(x) - room:]] if len(x) > room
                 else [*self.prefix_ids, *x], "prompt": True} for i, x in enumerate(ids)]

    def collate(self, features: Sequence[dict]) -> dict:
        """Blocks padded on the right, with labels (-100 on padding); prompts on the left, for ``generate``."""
        pad = self.tokenizer.pad_token_id
        rows = [np.asarray(f["input_ids"], dtype=np.int64) for f in features]
        width = max(len(r) for r in rows)
        input_ids = np.full((len(rows), width), pad, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        prompts = "prompt" in features[0]
        for i, r in enumerate(rows):
            span = slice(width - len(r), width) if prompts else slice(0, len(r))
            input_ids[i, span], mask[i, span] = r, 1
        batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
        if not prompts:
            batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return batch

    def build_head(self, backbone: Any) -> Any:
        return CausalLmHead()

    # ---- export --------------------------------------------------------------------------------------
    def export_model(self, backbone: Any, head: Any) -> tuple[Any, str]:
        """The decoder with its LM head is the whole model (the head owns no weights), in a copy whose
        generation config is predict's, so ``pipeline("text-generation")`` continues a prompt as ``nlpkit
        predict`` does (with the tokenizer of ``export_tokenizer``)."""
        import copy

        model = copy.deepcopy(backbone.model)
        model.generation_config = self.generation_config()
        return model, "AutoModelForCausalLM"

    def export_tokenizer(self, tokenizer: Any) -> Any:
        """A copy that puts BOS before a text and nothing after it, as predict frames a prompt (a from-scratch
        tokenizer adds [CLS] ... [SEP] for encoders; GPT-2's adds no BOS): the pipeline tokenises with the
        tokenizer's own special tokens."""
        import copy

        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.add_eos_token = False  # each setter rebuilds the template: "[BOS] $A", or "$A" with no BOS
        tokenizer.add_bos_token = bool(self.prefix_ids)
        return tokenizer

    def export_logits(self, backbone: Any, head: Any, batch: dict) -> torch.Tensor:
        """Next-token logits at every position, as training and evaluation compute them."""
        return backbone.lm_logits(backbone.encode(batch["input_ids"], batch["attention_mask"])).float()

    def generation_config(self) -> Any:
        """How predict continues a prompt (and an export's ``generate``, so both write the same text)."""
        from transformers import GenerationConfig

        o, tok = self.options, self.tokenizer
        return GenerationConfig(max_new_tokens=o.max_new_tokens, do_sample=False, num_beams=o.num_beams,
                                eos_token_id=self.stop_ids, pad_token_id=tok.pad_token_id,
                                bos_token_id=tok.bos_token_id)

    def predict_batch(self, head: Any, backbone: Any, batch: dict) -> list[dict]:
        if "labels" not in batch:
            return self._generate(backbone, batch)
        hidden = backbone.encode(batch["input_ids"], batch["attention_mask"])
        nll, correct, rows = next_token_stats(backbone, hidden, batch["labels"])
        n = batch["input_ids"].shape[0]
        sums = torch.zeros(n, dtype=torch.float64, device=nll.device).index_add_(0, rows, nll.double())
        tokens = torch.bincount(rows, minlength=n)
        hits = torch.bincount(rows, weights=correct.double(), minlength=n)
        return [{"nll": float(s), "tokens": int(t), "correct": int(h)}
                for s, t, h in zip(sums.tolist(), tokens.tolist(), hits.tolist())]

    def _generate(self, backbone: Any, batch: dict) -> list[dict]:
        """Greedy (or beam) continuations of left-padded prompts, cut at the first stop token."""
        out = backbone.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                      generation_config=self.generation_config())
        results = []
        for row in out[:, batch["input_ids"].shape[1]:].cpu().tolist():
            end = next((k for k, t in enumerate(row) if t in self.stop_ids), None)
            results.append({"ids": row if end is None else row[:end], "at_limit": end is None})
        return results

    def decode(self, examples: Any, features: Any, outputs: Sequence[dict]) -> list[dict]:
        if _is_prompts(examples):
            return [self._continuation(ex, f, out) for ex, f, out in zip(examples, features, outputs)]
        totals = [{"nll": 0.0, "tokens": 0, "correct": 0} for _ in range(len(examples))]
        for doc, out in zip(_example_indices(features), outputs):
            for key in totals[doc]:
                totals[doc][key] += out[key]
        return totals

    def _continuation(self, example: dict, feature: dict, output: dict) -> dict:
        """The generated text as it follows the prompt: decoded together with the prompt and cut after it,
        so a tokenizer that drops a leading space at the start of a text (SentencePiece) keeps it here."""
        tok, prompt_ids = self.tokenizer, list(feature["input_ids"])
        full = tok.decode(prompt_ids + output["ids"], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        head = tok.decode(prompt_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        text = full[len(head):] if full.startswith(head) else tok.decode(
            output["ids"], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return {"prompt": example["prompt"], "text": text, "tokens": len(output["ids"]),
                "at_limit": output["at_limit"]}


class CausalLmHead(nn.Module):
    """Next-token prediction with the decoder's own LM head; owns no weights (they are the backbone's)."""

    def forward(self, backbone: Any, batch: dict) -> dict:
        hidden = backbone.encode(batch["input_ids"], batch["attention_mask"])
        out: dict[str, Any] = {}
        if "labels" in batch:
            nll, _, _ = next_token_stats(backbone, hidden, batch["labels"])
            out["loss"] = nll.sum() / max(1, nll.numel())
        return out


def next_token_stats(backbone: Any, hidden: torch.Tensor, labels: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per predicted token: its NLL (fp32), whether the top-1 logit hit it, and its row in the batch.

    Position t predicts token t+1; only positions whose next token is real (label != -100) are projected
    onto the vocabulary, so padding costs no LM-head work."""
    targets = labels[:, 1:]
    keep = targets != -100
    logits = backbone.lm_logits(hidden[:, :-1][keep]).float()
    wanted = targets[keep]
    nll = F.cross_entropy(logits, wanted, reduction="none")
    return nll, logits.argmax(-1) == wanted, keep.nonzero()[:, 0]


def _is_prompts(examples: Any) -> bool:
    """Examples from ``parse_input`` (prompts to continue) rather than a corpus of documents."""
    return isinstance(examples, (list, tuple)) and bool(examples) and all("prompt" in ex for ex in examples)


def _example_indices(features: Any) -> Sequence[int]:
    """The document each block starts in; read from the blocks' index array when there is one."""
    docs = getattr(features, "docs", None)
    return docs.tolist() if isinstance(docs, np.ndarray) else [f["example_index"] for f in features]
