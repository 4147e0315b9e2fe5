"""The minimal plugin: a task that returns a modeling strategy writes at most ten hooks (examples/minimal_plugin.py
writes nine, from 14 when a plugin had to write encode ... decode itself); a plugin written that older way, every
hook by hand, still trains, saves, reloads and predicts; and ``nlpkit.train`` hands back the model it trained."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import nlpkit
from nlpkit.sdk.data import pad_encodings
from nlpkit.sdk.heads import SequenceClassificationHead
from nlpkit.testing import check_task

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from minimal_plugin import IsQuestionTask  # noqa: E402

#: what the core calls on a task (nlpkit.sdk.task's docstring lists them)
HOOKS = {"default_data", "read", "read_hub", "fit", "check", "texts", "state_dict", "load_state_dict",
         "special_tokens", "modeling", "setup", "encode", "collate", "feature_length", "feature_lengths",
         "describe_features", "build_head", "predict_batch", "decode", "score", "parse_input", "format_prediction",
         "export_model", "export_logits", "export_tokenizer"}


def hooks_written(cls: type) -> set[str]:
    return {name for name in vars(cls) if name in HOOKS}


class HandWrittenIsQuestion(IsQuestionTask):
    """The model half of examples/minimal_plugin.py written by hand, as every plugin had to before strategies."""

    def modeling(self):
        return None

    def texts(self, examples):
        return (ex["text"] for ex in examples)

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


def test_the_minimal_plugin_writes_at_most_ten_hooks():
    written = hooks_written(IsQuestionTask)
    assert "modeling" in written and not written & {"encode", "collate", "build_head", "predict_batch", "decode"}
    assert len(written) <= 10, sorted(written)
    hand = hooks_written(HandWrittenIsQuestion) - {"modeling"}  # the same plugin without a strategy
    assert hand == {"texts", "encode", "collate", "build_head", "predict_batch", "decode"}
    assert len((written - {"modeling"}) | hand) == 14


@pytest.mark.parametrize("cls", [IsQuestionTask, HandWrittenIsQuestion], ids=["strategy", "hand-written"])
def test_both_styles_pass_the_contract(cls, lines_tsv):
    report = check_task(cls, train=lines_tsv)
    assert report.passed, report.summary()


def test_train_returns_the_model_it_trained_and_its_tasks(lines_tsv, tmp_path):
    from nlpkit.engine.model import MultiTaskModel

    config = {"tasks": [{"type": "is-question", "data": {"train": str(lines_tsv)}}],
              "backbone": {"spec": "mini", "vocab_size": 400},
              "trainer": {"max_steps": 3, "batch_size": 8, "eval_every": 3},
              "logging": {"progress": False, "plots": False, "report_to": []}, "checkpoint": {"save_minutes": None},
              "output_dir": str(tmp_path / "run"), "data": {"cache": False}}
    result = nlpkit.train(config)
    assert isinstance(result.model, MultiTaskModel) and set(result.tasks) == {"is-question"}
    task = result.tasks["is-question"]
    assert task.labels == ["question", "statement"] and task.strategy is not None
    example = task.parse_input("Where is the river ?")
    outputs = task.predict_batch(result.model.heads["is-question"], result.model.backbone,
                                 task.collate(task.encode([example])))
    reloaded = nlpkit.load(tmp_path / "run").predict("Where is the river ?")
    assert task.decode([example], [{}], outputs)[0]["label"] == reloaded["label"]
