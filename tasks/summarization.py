"""Abstractive summarization: JSONL / CSV records with a document and a summary; ROUGE out.

Field names are options; presets cover CNN/DailyMail (article, highlights), XSum (document, summary)
and DialogSum (dialogue, summary), and "auto" picks the first of those pairs a file has. Documents
longer than ``max_length`` tokens are truncated (and counted in a warning); summaries are generated up
to ``max_new_tokens`` (default ``max_target_length``).

Metrics are the rouge-score package's F-measures with Porter stemming, averaged over documents:
ROUGE-1, ROUGE-2, ROUGE-L, and ROUGE-Lsum on sentences split on newlines. Texts without newlines are
split into sentences here first (after . ! ? followed by white space; NLTK's punkt is not used since
its data cannot be downloaded offline), so Lsum measures summary-level LCS as intended.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from nlpkit import DataError, Task, register_task
from nlpkit.sdk.data import csv_rows, input_text, open_text, read_jsonl
from nlpkit.sdk.generation import (GenerationOptions, TextGeneration,
                                   hub_records, pair, source_input,
                                   warn_skipped)

from . import DATA_DIR

#: dataset -> (document field, summary field)
PRESETS = {"cnn_dailymail": ("article", "highlights"), "xsum": ("document", "summary"),
           "dialogsum": ("dialogue", "summary")}
#: field pairs "auto" looks for, in order
AUTO_FIELDS = [("document", "summary"), ("article", "highlights"), ("dialogue", "summary"), ("text", "summary"),
               ("source", "target")]
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@dataclass
class SummarizationOptions(GenerationOptions):
    #: document tokens (prefix included); longer documents are truncated, counted in a warning
    max_length: int = 512
    #: summary tokens in training; also the default generation limit (max_new_tokens)
    max_target_length: int = 128
    #: field names of a known dataset; "auto" picks the first known pair present in the data
    preset: Literal["auto", "cnn_dailymail", "xsum", "dialogsum"] = "auto"
    #: explicit field names (override the preset)
    document_field: Optional[str] = None
    summary_field: Optional[str] = None


def split_sentences(text: str) -> list[str]:
    """Newline-separated sentences as they are; otherwise split after sentence-final punctuation."""
    text = text.strip()
    parts = text.split("\n") if "\n" in text else SENTENCE_END.split(text)
    return [p.strip() for p in parts if p.strip()]


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean F-measure (percent) per ROUGE type, Lsum over newline-joined sentences."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score("\n".join(split_sentences(ref)), "\n".join(split_sentences(pred)))
        for key in ROUGE_TYPES:
            totals[key] += scores[key].fmeasure
    n = max(1, len(predictions))
    return {key: 100.0 * value / n for key, value in totals.items()}


# ---- the plugin ------------------------------------------------------------------------------------
@register_task("summarization")
class SummarizationTask(Task):
    sample_inputs = ["The city council met on Tuesday and agreed to build a new bridge over the river . "
                     "Work will start next year and should take three years ."]
    description = "abstractive summarization (JSONL / CSV; ROUGE-1/2/L/Lsum)"
    Options = SummarizationOptions
    main_score = "rougeL"
    #: on a decoder-only model: causal-LM fine-tuning on "instruction + document" prompts (nlpkit.sdk.generation)
    backbone_kinds = ("encoder", "encoder-decoder", "decoder")

    def default_data(self) -> dict[str, str]:
        folder = DATA_DIR / "summarization"
        return {"train": str(folder / "train.jsonl"), "dev": str(folder / "dev.jsonl")}

    # ---- reading -------------------------------------------------------------------------------------
    def fields(self, keys: Sequence[str], path: str, where: int | None) -> tuple[str, str]:
        o = self.options
        doc, summ = PRESETS.get(o.preset, (None, None))
        doc, summ = o.document_field or doc, o.summary_field or summ
        if doc is None or summ is None:
            found = next(((d, s) for d, s in AUTO_FIELDS if (doc or d) in keys and (summ or s) in keys), None)
            if found is None:
                raise DataError(f"no document/summary fields found among {sorted(keys)}: expected one of "
                                f"{', '.join(f'{d}/{s}' for d, s in AUTO_FIELDS)}, or set the options "
                                f"document_field and summary_field (or preset)", path, where)
            doc, summ = doc or found[0], summ or found[1]
        return doc, summ

    def read(self, path: str) -> list[dict]:
        kind = Path(path[:-3] if path.endswith(".gz") else path).suffix.lower()
        if kind in (".csv", ".tsv"):
            records = read_csv(path, "\t" if kind == ".tsv" else ",", self.options.encoding)
        elif kind in (".jsonl", ".json"):
            records = read_jsonl(path, self.options.encoding)
        else:
            raise DataError("expected a .jsonl, .json, .csv or .tsv file (optionally .gz) or hub:DATASET:SPLIT", path)
        return self._examples(records, path)

    def read_hub(self, rows: Any, spec: str) -> list[dict]:
        """A hub split, e.g. ``hub:abisee/cnn_dailymail:3.0.0:validation`` with the preset cnn_dailymail."""
        return self._examples(hub_records(rows), spec)

    def _examples(self, records, path: str) -> list[dict]:
        examples, skipped, names = [], 0, None
        for line, record in records:
            if names is None:
                names = self.fields(list(record), path, line)
            doc, summ = names
            missing = [f for f in (doc, summ) if f not in record]
            if missing:
                raise DataError(f"record has no field {missing[0]!r} (fields: {sorted(record)})", path, line)
            ex = pair(record[doc], record[summ], (path, line), self.options.skip_empty)
            if ex is None:
                skipped += 1
            else:
                examples.append(ex)
        warn_skipped(self.name, skipped, path)
        return examples

    # ---- the model: it writes the target text -----------------------------------------------------------
    def modeling(self) -> TextGeneration:
        return TextGeneration(self.name, self.options, instruction=self.instruction(),
                              response_cue=self.response_cue(), default_prefix=self.default_prefix)

    def default_prefix(self, model_config: Any) -> str:
        params = getattr(model_config, "task_specific_params", None) or {}
        known = params.get("summarization", {}).get("prefix")
        if known is not None:
            return known
        return "summarize: " if getattr(model_config, "model_type", "") == "t5" else ""

    def instruction(self) -> str:
        """The decoder-only prompt's first line (the T5 prefix stays for encoder-decoders)."""
        return "Summarize the text."

    def response_cue(self) -> str:
        return "Summary:"

    # ---- scoring -------------------------------------------------------------------------------------
    def score(self, predictions: Sequence[dict], examples: Sequence[dict]) -> dict[str, Any]:
        scores = rouge([p["text"] for p in predictions], [ex["target"] for ex in examples])
        return {**scores, "rouge": "rouge-score F-measure, Porter stemmer, Lsum on newline-split sentences",
                **self.strategy.stats(predictions)}

    def parse_input(self, item: str | dict) -> dict:
        if isinstance(item, dict):
            o = self.options
            for key in (o.document_field, *(d for d, _ in PRESETS.values()), "text"):
                if key and key in item:
                    item = input_text(item[key], key)
                    break
        return source_input(item)

    def format_prediction(self, prediction: dict) -> str:
        return prediction["text"]


def read_csv(path: str, delimiter: str = ",", encoding: str = "utf-8"):
    """(line, record) per CSV row; the header (the first non-blank row) names the fields; quoted fields
    may span lines."""
    with open_text(path, encoding) as f:
        header = None
        for line, cells in csv_rows(f, path, delimiter=delimiter):
            if not cells:  # a blank line
                continue
            if header is None:
                header = cells
                continue
            if len(cells) != len(header):
                more = "more" if len(cells) > len(header) else "fewer"
                raise DataError(f"row has {more} cells than the header ({len(header)})", path, line)
            yield line, dict(zip(header, cells))
        if header is None:
            raise DataError("expected a header row naming the fields", path, 1)
