"""What every text-to-text task shares: decoding options, encoding of (source, target) pairs,
the seq2seq head, generation with transformers' ``generate`` and the length bookkeeping around it.

A generation plugin (translation, summarization) subclasses ``Seq2SeqTask`` and adds only what is its
own: readers that produce ``{"source": str, "target": str, "line": int}`` examples, options, the
metric, and the T5-style prefix it wants. Examples without "target" are for prediction.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from . import options as _options
from .errors import DataError
from .task import Task, TaskOptions

log = logging.getLogger("nlpkit.generation")

#: warn when the mean output length reaches this share of ``max_new_tokens``
LIMIT_WARN_SHARE = 0.9


@dataclass
class GenerationOptions(TaskOptions):
    #: source tokens (prefix included); longer inputs are truncated and counted in a warning
    max_length: int = 256
    #: target tokens in training (EOS included); longer targets are truncated and counted in a warning
    max_target_length: int = 128
    #: T5-style task prefix put before every source: "auto" asks the backbone (T5 gets one); "" or null: none
    prefix: Optional[str] = "auto"
    #: 1 = greedy search; more = beam search
    num_beams: int = 1
    #: longest output; default max_target_length
    max_new_tokens: Optional[int] = None
    #: beam search: > 1 favours longer outputs, < 1 shorter ones
    length_penalty: float = 1.0
    #: never repeat an n-gram of this size (0 = off)
    no_repeat_ngram_size: int = 0
    #: beam search stops as soon as num_beams finished candidates exist
    early_stopping: bool = True
    label_smoothing: float = 0.0
    #: an empty source or target is an error (file:line); true skips the pair and counts it in a warning
    skip_empty: bool = False
    #: encoder-only backbones: decoder layers (default: as many as the encoder) and their dropout
    decoder_layers: Optional[int] = None
    dropout: float = 0.1

    def validate(self, key: str) -> None:
        super().validate(key)
        _options.require(2 <= self.max_target_length <= 100_000, f"{key}.max_target_length", "must be between 2 and 100000")
        _options.require(self.num_beams >= 1, f"{key}.num_beams", "must be >= 1")
        _options.require(self.max_new_tokens is None or self.max_new_tokens >= 1, f"{key}.max_new_tokens", "must be >= 1")
        _options.require(self.no_repeat_ngram_size >= 0, f"{key}.no_repeat_ngram_size", "must be >= 0")
        _options.require(0 <= self.label_smoothing < 1, f"{key}.label_smoothing", "must be in [0, 1)")
        _options.require(self.decoder_layers is None or self.decoder_layers >= 1, f"{key}.decoder_layers", "must be >= 1")
        _options.require(0 <= self.dropout < 1, f"{key}.dropout", "must be in [0, 1)")


def pair(source: Any, target: Any, where: tuple[str, int | None], skip_empty: bool,
         target_where: tuple[str, int | None] | None = None) -> dict | None:
    """One example from a source and a target string; None when an empty side is skipped."""
    for side, value, (path, line) in (("source", source, where), ("target", target, target_where or where)):
        if not isinstance(value, str):
            raise DataError(f"expected the {side} text to be a string, got {type(value).__name__}", path, line)
        if not value.strip():
            if skip_empty:
                return None
            raise DataError(f"empty {side} text (use the option skip_empty=true to drop such pairs)", path, line)
    return {"source": source.strip(), "target": target.strip(), "line": where[1]}


def hub_records(rows: Any) -> list[tuple[int, dict]]:
    """(record number, record) pairs of a ``datasets`` split, for the plugins' record readers."""
    return [(i, dict(r)) for i, r in enumerate(rows, 1)]


def warn_skipped(task: str, skipped: int, path: str) -> None:
    if skipped:
        log.warning(f"{task}: {path}: skipped {skipped} pair(s) with an empty source or target (skip_empty=true)")


class Seq2SeqTask(Task):
    """Shared hooks for tasks whose examples are {"source", "target"} text pairs."""

    Options = GenerationOptions
    generative = True

    # ---- what subclasses may override -------------------------------------------------------------
    def default_prefix(self, model_config: Any) -> str:
        """The task prefix the backbone expects (T5's "translate English to German: ")."""
        return ""

    # ---- data ---------------------------------------------------------------------------------------
    def texts(self, examples: Sequence[dict]) -> Iterable[str]:
        # both sides: a from-scratch tokenizer must cover the target language too
        for ex in examples:
            yield ex["source"]
            if "target" in ex:
                yield ex["target"]

    # ---- model --------------------------------------------------------------------------------------
    def setup(self, backbone: Any) -> None:
        from .heads.seq2seq import target_tokens

        super().setup(backbone)
        self.tokens = target_tokens(backbone)
        prefix = self.options.prefix
        self.prefix = self.default_prefix(backbone.model.config) if prefix == "auto" else (prefix or "")

    @property
    def max_new_tokens(self) -> int:
        return self.options.max_new_tokens or self.options.max_target_length

    def build_head(self, backbone: Any) -> Any:
        from .heads.seq2seq import Seq2SeqHead

        o = self.options
        positions = max(512, o.max_target_length + 1, self.max_new_tokens + 1)
        return Seq2SeqHead(backbone, o.decoder_layers, o.dropout, o.label_smoothing, positions)

    def encode(self, examples: Sequence[dict]) -> list[dict]:
        from .heads.seq2seq import target_ids

        o, tok = self.options, self.tokenizer
        sources = [self.prefix + ex["source"] for ex in examples]
        input_ids = tok(sources)["input_ids"]
        long = [i for i, ids in enumerate(input_ids) if len(ids) > o.max_length]
        if long:
            cut = tok([sources[i] for i in long], truncation=True, max_length=o.max_length)["input_ids"]
            for i, ids in zip(long, cut):
                input_ids[i] = ids
            log.warning(f"{self.name}: {len(long)} of {len(examples)} source(s) longer than max_length={o.max_length} "
                        f"tokens were truncated{_first_line(examples, long)}")
        features = [{"example_index": i, "input_ids": ids} for i, ids in enumerate(input_ids)]
        labelled = [i for i, ex in enumerate(examples) if "target" in ex]
        if labelled:
            labels, cut_targets = target_ids(tok, self.backbone_kind, [examples[i]["target"] for i in labelled],
                                             o.max_target_length, self.tokens.eos)
            for i, ids in zip(labelled, labels):
                features[i]["labels"] = ids
            if cut_targets:
                where = [labelled[k] for k in cut_targets]
                log.warning(f"{self.name}: {len(cut_targets)} of {len(labelled)} target(s) longer than "
                            f"max_target_length={o.max_target_length} tokens were truncated for training"
                            f"{_first_line(examples, where)}")
        return features

    def collate(self, features: Sequence[dict]) -> dict:
        from .data import pad, pad_encodings

        batch = pad_encodings(features, self.tokens.pad)
        if all("labels" in f for f in features):
            batch["labels"] = pad([f["labels"] for f in features], -100)
        return batch

    def predict_batch(self, head: Any, backbone: Any, batch: dict) -> list[tuple[list[int], bool]]:
        o = self.options
        out = head.generate(backbone, batch, num_beams=o.num_beams, max_new_tokens=self.max_new_tokens,
                            length_penalty=o.length_penalty, no_repeat_ngram_size=o.no_repeat_ngram_size,
                            early_stopping=o.early_stopping).cpu().tolist()
        results = []
        for row in out:
            if self.tokens.eos in row:
                results.append((row[: row.index(self.tokens.eos)], False))
            else:  # no EOS: generation ran into max_new_tokens (or only padding follows)
                ids = [t for t in row if t != self.tokens.pad] if self.tokens.pad != self.tokens.eos else row
                results.append((ids, len(row) >= self.max_new_tokens))
        return results

    def decode(self, examples: Sequence[dict], features: Sequence[dict], outputs: Sequence[Any]) -> list[dict]:
        preds = []
        for ids, at_limit in outputs:
            text = self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()
            preds.append({"text": text, "tokens": len(ids), "at_limit": at_limit})
        return preds

    # ---- metrics ------------------------------------------------------------------------------------
    def generation_stats(self, predictions: Sequence[dict]) -> dict[str, Any]:
        """Decoding settings and output lengths, logged with every score: cut outputs ruin BLEU/ROUGE."""
        n = max(1, len(predictions))
        mean = sum(p["tokens"] for p in predictions) / n
        at_limit = 100.0 * sum(bool(p["at_limit"]) for p in predictions) / n
        limit = self.max_new_tokens
        if predictions and mean >= LIMIT_WARN_SHARE * limit:
            log.warning(f"{self.name}: mean output length {mean:.1f} tokens is at the limit max_new_tokens={limit} "
                        f"({at_limit:.1f}% of outputs were cut there); scores are likely too low: "
                        f"raise max_new_tokens / max_target_length")
        return {"num_beams": self.options.num_beams, "max_new_tokens": limit, "mean_output_tokens": mean,
                "outputs_at_limit": at_limit}

    # ---- raw input ----------------------------------------------------------------------------------
    def parse_input(self, item: str | dict) -> dict:
        from .data import input_text

        if isinstance(item, dict):
            item = item.get("source", item.get("text", ""))
        return {"source": input_text(item, "source").strip()}

    def format_prediction(self, prediction: dict) -> str:
        return prediction["text"]


def _first_line(examples: Sequence[dict], indices: Sequence[int]) -> str:
    line = examples[indices[0]].get("line") if indices else None
    return f" (first at line/record {line})" if line is not None else ""
