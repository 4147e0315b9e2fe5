"""Text classification: single-label (softmax), multi-label (sigmoid + threshold) and sentence pairs.

Data: CSV, TSV with a header row (GLUE style: tab-separated, no quoting) or JSONL, each with a text
column, an optional second text (pair) column and a label column; or ``hub:DATASET[:CONFIG]:SPLIT``
when the optional ``datasets`` package is installed. The label space is learned from the training
data; a sub-class (``sentiment``) may map raw labels (``0``/``1``) onto names through ``label_space``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Iterator, Literal, Sequence

from nlpkit import DataError, Task, TaskOptions, register_task
from nlpkit.sdk.data import (csv_rows, input_text, open_text, read_jsonl,
                             read_text_lines)
from nlpkit.sdk.modeling import SequenceClassifier
from nlpkit.sdk.options import require

from . import DATA_DIR

#: (text column, its pair column) tried in order when ``text_column``/``pair_column`` are "auto"
TEXT_COLUMNS: list[tuple[str, str | None]] = [
    ("text", "text_pair"), ("text", "pair"), ("text_a", "text_b"), ("sentence1", "sentence2"),
    ("premise", "hypothesis"), ("question1", "question2"), ("question", "sentence"), ("sentence", None),
    ("review", None), ("content", None), ("document", None),
]
#: the TREC release's encoding, used for format label-first unless the option encoding names another
LABEL_FIRST_ENCODING = "latin-1"
LABEL_COLUMNS = ["label", "labels", "gold_label", "class", "category", "sentiment", "target"]
#: label_part -> label column of TREC's hub layout (text, coarse_label, fine_label), used when none of the above is there
TREC_COLUMNS = {"coarse": "coarse_label", "full": "fine_label"}

SINGLE_SCORES = ("accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall")
MULTI_SCORES = ("micro_f1", "macro_f1", "weighted_f1", "accuracy", "micro_precision", "micro_recall")


@dataclass
class ClassificationOptions(TaskOptions):
    max_length: int = 128
    #: file format; "auto" goes by the extension (.csv, .tsv, .jsonl/.json, optionally .gz)
    #: "label-first": one example per line, the label first and the text after the first space (the
    #: TREC release; read as Latin-1); `label_part` picks the coarse "DESC" of a "DESC:manner" label
    format: Literal["auto", "csv", "tsv", "jsonl", "label-first"] = "auto"
    #: label-first files: "full" keeps "COARSE:fine" (TREC-50), "coarse" the part before the colon (TREC-6);
    #: tables with TREC's hub columns (coarse_label, fine_label) and label_column auto: fine_label or coarse_label
    label_part: Literal["full", "coarse"] = "full"
    #: column (JSON key) of the text; "auto": the first of text, text_a, sentence1, premise, question1,
    #: question, sentence, review, content, document that the file has
    text_column: str = "auto"
    #: column of the second text of a pair; "auto": the partner of the text column (sentence2 for
    #: sentence1, hypothesis for premise, ...) when the file has it; "none": never a pair
    pair_column: str = "auto"
    #: "auto": the first of label, labels, gold_label, class, category, sentiment, target (else, as TREC on the
    #: hub, coarse_label or fine_label by label_part)
    label_column: str = "auto"
    #: several labels per text (sigmoid + binary cross-entropy) instead of exactly one (softmax)
    multi_label: bool = False
    #: splits a multi-label cell ("sports,politics"); JSON may give a list instead
    label_separator: str = ","
    #: multi-label: a label is predicted when its probability reaches this
    threshold: float = 0.5
    #: selection metric; "auto": accuracy (single-label) or micro_f1 (multi-label)
    main_score: str = "auto"
    #: how a text becomes one vector. auto: the [CLS] state on an encoder, the last real token on a decoder
    #: (the only position that saw the whole text); or cls, mean, last
    pooling: Literal["auto", "cls", "mean", "last"] = "auto"
    dropout: float = 0.1

    def validate(self, key: str) -> None:
        super().validate(key)
        require(0 < self.threshold < 1, f"{key}.threshold", "must be between 0 and 1")
        require(0 <= self.dropout < 1, f"{key}.dropout", "must be in [0, 1)")
        require(bool(self.label_separator), f"{key}.label_separator", "must not be empty")
        allowed = MULTI_SCORES if self.multi_label else SINGLE_SCORES
        require(self.main_score == "auto" or self.main_score in allowed, f"{key}.main_score",
                f"must be auto or one of {', '.join(allowed)} ({'multi' if self.multi_label else 'single'}-label)")


# ---- reading ---------------------------------------------------------------------------------------
def detect_format(path: str) -> str:
    name = re.sub(r"\.gz$", "", str(path).lower())
    for ext, fmt in ((".csv", "csv"), (".tsv", "tsv"), (".jsonl", "jsonl"), (".json", "jsonl"), (".ndjson", "jsonl")):
        if name.endswith(ext):
            return fmt
    raise DataError("cannot tell the format from the file name (expected .csv, .tsv, .jsonl, optionally .gz); "
                    "set the option format=csv|tsv|jsonl", str(path))


def read_label_first(path: str, coarse: bool, encoding: str = LABEL_FIRST_ENCODING) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, row) for ``LABEL text ...`` lines, as in the TREC question classification release."""
    yield 0, {"__header__": ["label", "text"]}
    for lineno, raw in read_text_lines(path, encoding):
        line = raw.strip()
        if not line:
            continue
        label, _, text = line.partition(" ")
        if not text.strip():
            raise DataError("expected a label, a space and the text", path, lineno)
        yield lineno, {"label": label.split(":")[0] if coarse else label, "text": text.strip()}


def read_table(path: str, fmt: str, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, row) for a CSV file or a GLUE-style TSV file, whose first non-blank line is the header.

    TSV is split on tabs only: GLUE's files hold unbalanced quotes that a CSV reader would swallow.
    """
    with open_text(path, encoding) as f:
        if fmt == "csv":
            rows = csv_rows(f, path)
        else:
            rows = ((n, raw.rstrip("\r\n").split("\t")) for n, raw in enumerate(f, 1))
        header = None
        for lineno, cells in rows:
            if not any(c.strip() for c in cells):
                continue
            if header is None:
                header = [c.strip() for c in cells]
                yield lineno, {"__header__": header}
                continue
            if len(cells) != len(header):
                raise DataError(f"expected {len(header)} {fmt.upper()} fields like the header "
                                f"({', '.join(header)}), got {len(cells)}", path, lineno)
            yield lineno, dict(zip(header, cells))


def resolve_columns(columns: Sequence[str], options: ClassificationOptions, path: str, line: int | None
                    ) -> tuple[str, str | None, str]:
    """(text, pair or None, label) column names from the options and what the file has."""
    have = set(columns)
    listing = ", ".join(columns)

    def missing(what: str, name: str, hint: str) -> DataError:
        return DataError(f"no {what} column {name!r} (columns: {listing}); {hint}", path, line)

    text = options.text_column
    if text == "auto":
        text = next((t for t, _ in TEXT_COLUMNS if t in have), "")
        if not text:
            raise missing("text", "auto", "name the text column with the option text_column")
    elif text not in have:
        raise missing("text", text, "set the option text_column")
    pair = options.pair_column
    if pair == "auto":
        pair = next((p for t, p in TEXT_COLUMNS if t == text and p in have), None)
    elif pair == "none":
        pair = None
    elif pair not in have:
        raise missing("pair", pair, "set the option pair_column (or none)")
    label = options.label_column
    if label == "auto":
        label = next((c for c in LABEL_COLUMNS if c in have), "")
        if not label and TREC_COLUMNS[options.label_part] in have:  # TREC on the hub: label_part picks the column
            label = TREC_COLUMNS[options.label_part]
        if not label:
            raise missing("label", "auto", "name the label column with the option label_column")
    elif label not in have:
        raise missing("label", label, "set the option label_column")
    return text, pair, label


def natural_sorted(labels: Iterable[str]) -> list[str]:
    """Numbers in numeric order (2 before 10), then names alphabetically."""
    def key(label: str):
        return (0, int(label), "") if re.fullmatch(r"-?\d+", label) else (1, 0, label)

    return sorted(set(labels), key=key)


def label_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def scalar_label(value: Any, column: str, path: str, line: int | None) -> str:
    """One label as text: a string, an integer, a boolean or a whole number (1.0). Anything else (an
    object, a fraction, null inside a list) would silently become a class named after its repr."""
    if isinstance(value, str) or isinstance(value, (bool, int)) or (isinstance(value, float) and value.is_integer()):
        return label_text(value)
    if value is None:
        got = "null"
    else:
        what = {dict: "a JSON object", list: "a list", float: "a fractional number"}.get(type(value), type(value).__name__)
        got = f"{what} {_short(value)}"
    raise DataError(f"field {column!r}: a label must be a string or an integer, got {got}", path, line)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# ---- the plugin ------------------------------------------------------------------------------------
@register_task("classification")
class ClassificationTask(Task):
    sample_inputs = ["The team won the cup final after extra time .", "Shares fell sharply on Wall Street ."]
    description = "text classification: single-label, multi-label, sentence pairs (CSV/TSV/JSONL)"
    Options = ClassificationOptions
    main_score = "accuracy"
    input_fields = ("text", "pair")  # predict DIR --text T --pair P for sentence-pair models
    #: a decoder classifies from its last real token (pooling auto)
    backbone_kinds = ("encoder", "encoder-decoder", "decoder")

    def __init__(self, name=None, options=None):
        super().__init__(name, options)
        opts = self.options
        self.main_score = opts.main_score if opts.main_score != "auto" else (
            "micro_f1" if opts.multi_label else "accuracy")
        self.labels: list[str] = []  # class names, in the order of the head's outputs
        self.label_map: dict[str, str] = {}  # raw label in the data -> class name
        self.pair = False  # trained on sentence pairs

    def default_data(self) -> dict[str, str]:
        folder = DATA_DIR / "classification"
        return {"train": str(folder / "train.csv"), "dev": str(folder / "dev.csv")}

    # ---- reading -------------------------------------------------------------------------------------
    def read(self, path: str) -> Iterator[dict]:
        """Examples streamed from the file (a large file never sits in memory)."""
        fmt = self.options.format if self.options.format != "auto" else detect_format(path)
        encoding = self.options.encoding
        if fmt == "jsonl":
            return self._records(read_jsonl(path, encoding), path)
        if fmt == "label-first":
            encoding = encoding or LABEL_FIRST_ENCODING  # not named: the format's own encoding
            return self._records(read_label_first(path, self.options.label_part == "coarse", encoding), path)
        return self._records(read_table(path, fmt, encoding), path)

    def read_hub(self, rows: Any, spec: str) -> Iterator[dict]:
        """Rows of a ``datasets`` table (hub split, Parquet, Arrow, saved folder); ClassLabel ids become their names."""
        features = getattr(rows, "features", None) or {}
        names: dict[str, Any] = {}
        for column, feature in features.items():
            inner = getattr(feature, "feature", feature)  # Sequence(ClassLabel) for multi-label
            if hasattr(inner, "int2str"):
                names[column] = inner.int2str

        def rows_with_lines():
            yield None, {"__header__": list(getattr(rows, "column_names", None) or features)}
            for i, row in enumerate(rows):
                row = dict(row)
                for column, to_name in names.items():
                    value = row.get(column)
                    if isinstance(value, list):
                        row[column] = [to_name(v) if isinstance(v, int) and v >= 0 else v for v in value]
                    elif isinstance(value, int) and value >= 0:
                        row[column] = to_name(value)
                yield i + 1, row

        return self._records(rows_with_lines(), spec)

    def _records(self, rows: Iterable[tuple[int | None, dict]], path: str) -> Iterator[dict]:
        """Examples from (line, row) pairs; a leading {"__header__": columns} row fixes the columns, else
        (JSONL) the first record does."""
        columns = None
        for lineno, row in rows:
            if "__header__" in row:
                columns = resolve_columns(row["__header__"], self.options, path, lineno)
                continue
            if columns is None:  # JSONL: the first record decides the columns
                columns = resolve_columns(list(row), self.options, path, lineno)
            text_col, pair_col, label_col = columns
            for col in (text_col, pair_col, label_col):
                if col is not None and col not in row:
                    raise DataError(f"record has no field {col!r} (fields: {', '.join(row)})", path, lineno)
            example = {"text": self._text(row[text_col], text_col, path, lineno), "line": lineno}
            if pair_col is not None:
                example["pair"] = self._text(row[pair_col], pair_col, path, lineno)
            example["label"] = self._label(row[label_col], label_col, path, lineno)
            yield example

    @staticmethod
    def _text(value: Any, column: str, path: str, line: int | None) -> str:
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"empty text in column {column!r}" if isinstance(value, str) or value is None
                            else f"expected text in column {column!r}, got {value!r}", path, line)
        return value

    #: what to do about a list where one label is expected (sentiment has no multi-label mode)
    list_label_hint: ClassVar[str] = "set multi_label: true (--option multi_label=true) for several labels per text"

    def _label(self, value: Any, column: str, path: str, line: int | None) -> str | list[str]:
        if self.options.multi_label:
            if isinstance(value, (list, tuple)):
                labels = [scalar_label(v, column, path, line) for v in value]
            elif value is None:
                labels = []
            else:
                labels = [part.strip() for part in
                          scalar_label(value, column, path, line).split(self.options.label_separator)]
            labels = [lab for lab in labels if lab]
            return list(dict.fromkeys(labels))  # an example may have no label at all
        if isinstance(value, (list, tuple)):
            raise DataError(f"field {column!r} holds a list {_short(value)}, but a single label is expected: "
                            f"{self.list_label_hint}", path, line)
        label = "" if value is None else scalar_label(value, column, path, line)
        if not label:
            raise DataError(f"empty label in column {column!r}", path, line)
        return label

    # ---- label space -------------------------------------------------------------------------------
    def label_space(self, raw_labels: set[str], examples: Sequence[dict]) -> tuple[list[str], dict[str, str]]:
        """(class names in output order, raw label -> class name); sub-classes rename classes here."""
        labels = natural_sorted(raw_labels)
        return labels, {lab: lab for lab in labels}

    def canonical(self, raw: str) -> str | None:
        return self.label_map.get(raw)

    def raw_labels(self, example: dict) -> list[str]:
        label = example["label"]
        return list(label) if isinstance(label, list) else [label]

    def fit(self, train_examples: Sequence[dict]) -> None:
        raw: set[str] = set()
        self.pair = False
        for ex in train_examples:  # one pass: the examples may be a table of millions of rows
            raw.update(self.raw_labels(ex))
            self.pair = self.pair or "pair" in ex
        if not raw:
            raise DataError("the training data has no labels at all")
        self.labels, self.label_map = self.label_space(raw, train_examples)
        if not self.options.multi_label and len(self.labels) < 2:
            raise DataError(f"the training data has a single class ({self.labels[0]!r}); a classifier needs two")

    def check(self, examples: Sequence[dict], path: str) -> None:
        for ex in examples:
            for raw in self.raw_labels(ex):
                if self.canonical(raw) is None:
                    raise DataError(f"label {raw!r} never occurred in the training data "
                                    f"(known: {', '.join(self.label_map)})", path, ex.get("line"))
            if self.pair and "pair" not in ex:
                raise DataError("this model classifies text pairs, but the example has no pair text", path, ex.get("line"))

    def state_dict(self) -> dict[str, Any]:
        return {"labels": self.labels, "label_map": self.label_map, "pair": self.pair}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.labels, self.label_map, self.pair = list(state["labels"]), dict(state["label_map"]), bool(state["pair"])

    # ---- the model: a classifier on the pooled text (or pair) ------------------------------------------
    def modeling(self) -> SequenceClassifier:
        o = self.options
        return SequenceClassifier(self.labels, max_length=o.max_length, pair=self.pair, multi_label=o.multi_label,
                                  threshold=o.threshold, pooling=o.pooling, dropout=o.dropout,
                                  label_ids=self.label_ids)

    def label_ids(self, example: dict) -> list[int]:
        """The classes of an example, raw labels mapped to class names (sentiment's ``pos`` is ``positive``)."""
        index = {lab: i for i, lab in enumerate(self.labels)}
        return [index[self.canonical(raw)] for raw in self.raw_labels(example)]

    # ---- scoring -------------------------------------------------------------------------------------
    def score(self, predictions, examples) -> dict[str, Any]:
        import numpy as np
        from sklearn.metrics import precision_recall_fscore_support

        k = len(self.labels)
        index = {lab: i for i, lab in enumerate(self.labels)}
        gold = np.zeros((len(examples), k), dtype=int)
        pred = np.zeros((len(examples), k), dtype=int)
        for row, (ex, p) in enumerate(zip(examples, predictions)):
            for raw in self.raw_labels(ex):
                gold[row, index[self.canonical(raw)]] = 1
            for lab in (p["labels"] if self.options.multi_label else [p["label"]]):
                pred[row, index[lab]] = 1
        # classes neither in the gold data nor predicted have no precision or recall: leave them out
        seen = [j for j in range(k) if gold[:, j].any() or pred[:, j].any()]
        prec, rec, f1, support = precision_recall_fscore_support(gold[:, seen], pred[:, seen], average=None,
                                                                 zero_division=0)
        per_class = {self.labels[j]: {"precision": 100 * float(prec[i]), "recall": 100 * float(rec[i]),
                                      "f1": 100 * float(f1[i]), "support": int(support[i])}
                     for i, j in enumerate(seen)}
        weights = support / max(1, support.sum())
        scores = {
            "accuracy": 100 * float((gold == pred).all(axis=1).mean()),
            "macro_f1": 100 * float(f1.mean()),
            "macro_precision": 100 * float(prec.mean()),
            "macro_recall": 100 * float(rec.mean()),
            "weighted_f1": 100 * float((f1 * weights).sum()),
        }
        if self.options.multi_label:
            mp, mr, mf, _ = precision_recall_fscore_support(gold, pred, average="micro", zero_division=0)
            scores.update({"micro_f1": 100 * float(mf), "micro_precision": 100 * float(mp),
                           "micro_recall": 100 * float(mr)})
        scores["per_class"] = per_class
        return scores

    # ---- raw input -----------------------------------------------------------------------------------
    def parse_input(self, item) -> dict:
        """A text; for pair models ``TEXT<TAB>PAIR`` or a record {"text": ..., "pair": ...}."""
        if isinstance(item, dict):
            text = item.get("text", item.get(self.options.text_column))
            pair = item.get("pair", item.get(self.options.pair_column))
        else:
            text, pair = item, None
            if self.pair and isinstance(item, str) and "\t" in item:
                text, pair = item.split("\t", 1)
        text = input_text(text, "text")
        example = {"text": text}
        if self.pair:
            if pair is not None and not isinstance(pair, str):
                input_text(pair, "pair")
            if not isinstance(pair, str) or not pair.strip():
                raise DataError("this model classifies text pairs: give TEXT<TAB>PAIR, a JSON record with "
                                "\"text\" and \"pair\", or --text ... --pair ...")
            example["pair"] = pair
        return example

    def format_prediction(self, prediction: dict) -> str:
        if "labels" in prediction:
            probs = prediction["probabilities"]
            if not prediction["labels"]:
                return f"(no label reaches the threshold {self.options.threshold:g})"
            return ", ".join(f"{lab} ({probs[lab]:.2f})" for lab in prediction["labels"])
        return f"{prediction['label']}\t{prediction['probability']:.2f}"
