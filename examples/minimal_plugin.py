"""A complete task plugin in one file: is a line a question or a statement?

Train it with:  nlpkit train --plugin minimal_plugin --task is-question --data train=lines.tsv
(with this folder on PYTHONPATH), or package it with an entry point in the ``nlpkit.tasks`` group.
Input files hold ``LABEL<TAB>TEXT`` lines.

The plugin writes only what is its own: how its files read, its labels, its metric and its raw input. How the
model answers (tokenize, a classifier head, probabilities back to labels) is the ready ``SequenceClassifier``
strategy, returned from ``modeling()``.
"""
from __future__ import annotations

from typing import Sequence

from nlpkit import DataError, Task, register_task
from nlpkit.sdk.data import open_text
from nlpkit.sdk.modeling import SequenceClassifier


@register_task("is-question")
class IsQuestionTask(Task):
    description = "toy binary classification of lines"
    main_score = "accuracy"

    def __init__(self, name=None, options=None):
        super().__init__(name, options)
        self.labels: list[str] = []

    def read(self, path: str) -> list[dict]:
        examples = []
        with open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                label, sep, text = line.rstrip("\n").partition("\t")
                if not sep or not text.strip():
                    raise DataError("expected LABEL<TAB>TEXT", path, lineno)
                examples.append({"label": label, "text": text, "line": lineno})
        return examples

    def fit(self, train_examples: Sequence[dict]) -> None:
        self.labels = sorted({ex["label"] for ex in train_examples})

    def check(self, examples, path):
        self.check_labels(examples, self.labels, "label", path)

    def state_dict(self):
        return {"labels": self.labels}

    def load_state_dict(self, state):
        self.labels = state["labels"]

    def modeling(self):
        return SequenceClassifier(self.labels, max_length=self.options.max_length)

    def score(self, predictions, examples):
        correct = sum(p["label"] == ex["label"] for p, ex in zip(predictions, examples))
        return {"accuracy": 100.0 * correct / len(examples)}

    def parse_input(self, item):
        return {"text": item if isinstance(item, str) else item["text"]}

    def format_prediction(self, prediction):
        return f"{prediction['label']} ({prediction['probability']:.2f})"
