"""A complete task plugin in one file: is a line a question or a statement?

Train it with:  nlpkit train --plugin minimal_plugin --task is-question --data train=lines.tsv
(with this folder on PYTHONPATH), or package it with an entry point in the ``nlpkit.tasks`` group.
Input files hold ``LABEL<TAB>TEXT`` lines.
"""
from __future__ import annotations

from typing import Sequence

from nlpkit import DataError, Task, register_task
from nlpkit.sdk.data import open_text, pad_encodings
from nlpkit.sdk.heads import SequenceClassificationHead


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

    def texts(self, examples):
        return (ex["text"] for ex in examples)

    def state_dict(self):
        return {"labels": self.labels}

    def load_state_dict(self, state):
        self.labels = state["labels"]

    def encode(self, examples):
        enc = self.tokenizer([ex["text"] for ex in examples], truncation=True, max_length=self.options.max_length)
        return [{"example_index": i, "input_ids": ids,
                 **({"label": self.labels.index(ex["label"])} if "label" in ex else {})}
                for i, (ex, ids) in enumerate(zip(examples, enc["input_ids"]))]

    def collate(self, features):
        import torch

        batch = pad_encodings(features, self.tokenizer.pad_token_id)
        if "label" in features[0]:
            batch["labels"] = torch.tensor([f["label"] for f in features])
        return batch

    def build_head(self, backbone):
        return SequenceClassificationHead(backbone.hidden_size, len(self.labels))

    def predict_batch(self, head, backbone, batch):
        return head(backbone, batch)["logits"].softmax(-1).cpu().tolist()

    def decode(self, examples, features, outputs):
        return [{"label": self.labels[max(range(len(p)), key=p.__getitem__)], "probability": max(p)} for p in outputs]

    def score(self, predictions, examples):
        correct = sum(p["label"] == ex["label"] for p, ex in zip(predictions, examples))
        return {"accuracy": 100.0 * correct / len(examples)}

    def parse_input(self, item):
        return {"text": item if isinstance(item, str) else item["text"]}

    def format_prediction(self, prediction):
        return f"{prediction['label']} ({prediction['probability']:.2f})"
