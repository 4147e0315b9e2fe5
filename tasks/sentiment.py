"""Sentiment analysis: the classification plugin with a sentiment label space.

Everything (readers, encoding, head, metrics) is the ``classification`` task's; what differs is the
label space: raw labels are mapped onto named polarity classes on a scale (negative/positive,
with neutral, or five-point), so ``0``/``1`` from SST-2, ``neg``/``pos`` and ``1``-``5`` stars all
predict readable names, and a checkpoint keeps the mapping.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from nlpkit import DataError, register_task
from nlpkit.sdk.options import require

from . import DATA_DIR
from .classification import ClassificationOptions, ClassificationTask

SCALES: dict[str, list[str]] = {
    "binary": ["negative", "positive"],
    "ternary": ["negative", "neutral", "positive"],
    "five": ["very negative", "negative", "neutral", "positive", "very positive"],
}
ALIASES = {
    "neg": "negative", "negative": "negative", "pos": "positive", "positive": "positive",
    "neu": "neutral", "neutral": "neutral", "very neg": "very negative", "very negative": "very negative",
    "very pos": "very positive", "very positive": "very positive",
}
NUMERIC = re.compile(r"-?\d+")


def normalize(label: str) -> str:
    """``Very_Negative`` -> ``very negative``."""
    return " ".join(label.lower().replace("_", " ").replace("-", " ").split())


@dataclass
class SentimentOptions(ClassificationOptions):
    #: classes: binary (negative, positive), ternary (+ neutral), five (very negative ... very positive);
    #: "auto" decides from the training labels. Numeric labels map in order: the lowest is the most negative.
    scale: Literal["auto", "binary", "ternary", "five"] = "auto"

    def validate(self, key: str) -> None:
        require(not self.multi_label, f"{key}.multi_label", "sentiment has one label per text; use the "
                "classification task for multi-label data")
        super().validate(key)


@register_task("sentiment")
class SentimentTask(ClassificationTask):
    sample_inputs = ["a wonderful , moving film", "the plot is dull and the acting is worse"]
    description = "sentiment analysis: negative/positive (optional neutral or 5-point), label + probability"
    Options = SentimentOptions
    list_label_hint = "sentiment has one label per text (the classification task takes multi-label data)"

    def default_data(self) -> dict[str, str]:
        folder = DATA_DIR / "sentiment"
        return {"train": str(folder / "train.tsv"), "dev": str(folder / "dev.tsv")}

    def label_space(self, raw_labels: set[str], examples: Sequence[dict]) -> tuple[list[str], dict[str, str]]:
        scale = self.options.scale
        if all(NUMERIC.fullmatch(raw) for raw in raw_labels):
            values = sorted(int(raw) for raw in raw_labels)
            if scale == "auto":
                scale = {2: "binary", 3: "ternary", 5: "five"}.get(len(values), "")
            names = SCALES.get(scale, [])
            contiguous = values == list(range(values[0], values[0] + len(values)))
            if len(values) != len(names) or (len(values) > 2 and not contiguous):
                raise DataError(
                    f"numeric sentiment labels {values} in the training data: expected 2 values (negative, "
                    "positive), 3 consecutive ones (with neutral) or 5 consecutive ones (1-5 stars)"
                    + (f" for scale {scale}" if self.options.scale != "auto" else "")
                    + "; set the option scale, or use the classification task for other label sets")
            return names, {str(v): name for v, name in zip(values, names)}
        mapping = {raw: ALIASES.get(normalize(raw), "") for raw in raw_labels}
        unknown = sorted(raw for raw, name in mapping.items() if not name)
        if unknown:
            line = next((ex.get("line") for ex in examples if unknown[0] in self.raw_labels(ex)), None)
            raise DataError(
                f"unknown sentiment label {unknown[0]!r} (training example at line {line}); expected negative, "
                "positive, neutral, very negative, very positive (or neg/pos/neu), or numbers; use the "
                "classification task for other label sets")
        if scale == "auto":
            found = set(mapping.values())
            scale = "five" if found & {"very negative", "very positive"} else "ternary" if "neutral" in found else "binary"
        outside = sorted(raw for raw, name in mapping.items() if name not in SCALES[scale])
        if outside:
            raise DataError(f"label {outside[0]!r} is not on the {scale} scale ({', '.join(SCALES[scale])})")
        return list(SCALES[scale]), mapping

    def canonical(self, raw: str) -> str | None:
        """A training label, or another spelling of a class name (``pos`` for ``positive``)."""
        found = self.label_map.get(raw)
        if found is None and not NUMERIC.fullmatch(raw):
            name = ALIASES.get(normalize(raw))
            found = name if name in self.labels else None
        return found

    def format_prediction(self, prediction: dict[str, Any]) -> str:
        return f"{prediction['label']} ({prediction['probability']:.2f})"
