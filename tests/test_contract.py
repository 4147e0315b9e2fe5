"""The plugin contract test (nlpkit.testing.check_task): every built-in passes it, and it catches the
failures it promises to catch (a head that comes back random, a state_dict that does not round-trip,
scores without main_score, predictions that are not JSON, bad input that is not a DataError)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import nlpkit
from nlpkit import DataError
from nlpkit.testing import CHECKS, ContractError, check_task

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from minimal_plugin import IsQuestionTask  # noqa: E402


# ---- data ------------------------------------------------------------------------------------------
RELATIONS = [  # (template, label): the SemEval-2010 Task 8 format, directions as distinct classes
    ("The <e1>{a}</e1> was caused by the <e2>{b}</e2> .", "Cause-Effect(e2,e1)"),
    ("The <e1>{a}</e1> caused the <e2>{b}</e2> .", "Cause-Effect(e1,e2)"),
    ("The <e1>{a}</e1> is a part of the <e2>{b}</e2> .", "Component-Whole(e1,e2)"),
    ("The <e1>{a}</e1> stood next to the <e2>{b}</e2> .", "Other"),
]
NOUNS = ["fire", "spark", "flood", "storm", "wheel", "engine", "door", "house", "crack", "quake", "leaf", "tree"]


@pytest.fixture(scope="module")
def semeval_files(tmp_path_factory) -> dict[str, str]:
    """relation-extraction has no embedded data: a small file in its release format, train and dev."""
    folder = tmp_path_factory.mktemp("re")
    records = []
    for i in range(64):
        template, label = RELATIONS[i % len(RELATIONS)]
        a, b = NOUNS[i % len(NOUNS)], NOUNS[(i * 5 + 3) % len(NOUNS)]
        records.append(f'{i + 1}\t"{template.format(a=a, b=b)}"\n{label}\nComment:\n\n')
    (folder / "train.txt").write_text("".join(records[:48]))
    (folder / "dev.txt").write_text("".join(records[48:]))
    return {"train": str(folder / "train.txt"), "dev": str(folder / "dev.txt")}


# ---- every built-in passes -------------------------------------------------------------------------
BUILTINS = ["ner", "classification", "sentiment", "relation-extraction", "translation", "summarization", "qa",
            "reading-comprehension"]
#: smaller slices where one example is long (four options over a passage)
SETTINGS = {"reading-comprehension": {"max_examples": 24}}


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_passes_the_contract(name, semeval_files):
    data = semeval_files if name == "relation-extraction" else {}
    report = check_task(nlpkit.get_task_class(name), **data, **SETTINGS.get(name, {}))
    assert report.passed and report.task == name
    assert [c.name for c in report.checks] == list(CHECKS)
    assert all(c.status == "passed" for c in report.checks), report.summary()
    assert "identical after reload" in report["reload"].detail


def test_the_minimal_example_plugin_passes(lines_tsv, tmp_path):
    report = check_task(IsQuestionTask, train=lines_tsv, output_dir=tmp_path / "run",
                        backbone={"spec": "mini", "vocab_size": 300}, raw_input="Where is the bridge ?")
    assert report.passed and report.task == "is-question"
    assert report.output_dir == str(tmp_path / "run")
    pipe = nlpkit.load(tmp_path / "run")
    assert len(pipe.model.backbone.tokenizer) < 400  # the backbone given, not the default
    assert pipe.predict("Where is the bridge ?")["label"] in ("question", "statement")
    assert report["bad_input"].detail.startswith("non-UTF-8 byte on line 2")
    assert report["predict"].detail.startswith("'Where is the bridge ?' -> ")


class EntryPointOnly(IsQuestionTask):
    """Registered by an entry point only (no decorator), as a plugin package may be."""


def test_a_class_registered_by_an_entry_point_is_checked_under_its_name(lines_tsv, monkeypatch):
    from importlib.metadata import EntryPoint

    from nlpkit.sdk import registry

    registry.list_tasks()  # the real entry points are scanned first, then ours is added
    ep = EntryPoint("ep-question", f"{EntryPointOnly.__module__}:EntryPointOnly", registry.ENTRY_POINT_GROUP)
    monkeypatch.setitem(registry._REGISTRY, "ep-question", registry.TaskInfo("ep-question", None, "plugin x", ep))
    assert "type_name" not in EntryPointOnly.__dict__  # not loaded yet: the entry point names it
    report = check_task(EntryPointOnly, train=lines_tsv)
    assert report.passed and report.task == "ep-question"


# ---- an unregistered class: registered for the check only ------------------------------------------
class Unregistered(IsQuestionTask):
    """Inherits the name of a registered class but is not registered itself."""


def test_an_unregistered_class_is_checked_under_a_temporary_name(lines_tsv):
    before = {(i.name, i.cls) for i in nlpkit.list_tasks()}
    report = check_task(Unregistered, train=lines_tsv)
    assert report.passed and report.task.startswith("check-task-unregistered-")
    assert {(i.name, i.cls) for i in nlpkit.list_tasks()} == before
    assert "type_name" not in Unregistered.__dict__ and Unregistered.type_name == "is-question"
    assert "read" not in Unregistered.__dict__ and "build_head" not in Unregistered.__dict__


# ---- check_task catches what it promises to catch --------------------------------------------------
def failed(excinfo) -> set[str]:
    return {c.name for c in excinfo.value.report.failures}


class FreshRandomHead(nn.Module):
    """Its output projection is a plain tensor attribute: not a parameter, so never saved nor loaded."""

    def __init__(self, hidden: int, n: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.projection = torch.randn(hidden, n)

    def forward(self, backbone, batch):
        states = backbone.encode(batch["input_ids"], batch["attention_mask"])[:, 0]
        logits = self.dense(states) @ self.projection
        out = {"logits": logits}
        if "labels" in batch:
            out["loss"] = nn.functional.cross_entropy(logits, batch["labels"])
        return out


class RandomAfterReload(IsQuestionTask):
    def build_head(self, backbone):
        return FreshRandomHead(backbone.hidden_size, len(self.labels))


def test_a_head_that_comes_back_random_fails_reload(lines_tsv):
    with pytest.raises(ContractError) as excinfo:
        check_task(RandomAfterReload, train=lines_tsv)
    assert failed(excinfo) == {"reload"}
    message = str(excinfo.value)
    assert "FAILED   reload" in message and "predictions after reload differ" in message
    assert "nn.Parameter" in message  # says what to do


def test_without_the_model_in_memory_two_loads_must_agree(lines_tsv, monkeypatch):
    """When there is no model in memory, the saved checkpoint stands in for it."""
    import nlpkit.testing as testing

    monkeypatch.setattr(testing, "_trained_in_memory", lambda trainer: None)
    report = check_task(IsQuestionTask, train=lines_tsv)
    assert report.passed
    with pytest.raises(ContractError) as excinfo:
        check_task(RandomAfterReload, train=lines_tsv)
    assert failed(excinfo) == {"reload"}
    assert "predictions after reload differ from a first load's (no model in memory)" in str(excinfo.value)


class ForgetfulState(IsQuestionTask):
    def load_state_dict(self, state):
        self.labels = sorted(state["labels"], reverse=True)  # the label order is lost


def test_a_state_dict_that_does_not_round_trip_fails(lines_tsv):
    with pytest.raises(ContractError) as excinfo:
        check_task(ForgetfulState, train=lines_tsv)
    assert {"state_dict", "reload"} <= failed(excinfo)
    assert "a fresh instance given load_state_dict(state) returns a different state_dict()" in str(excinfo.value)


class NoMainScore(IsQuestionTask):
    def score(self, predictions, examples):
        return {"acc": super().score(predictions, examples)["accuracy"]}


def test_scores_without_main_score_fail(lines_tsv):
    with pytest.raises(ContractError) as excinfo:
        check_task(NoMainScore, train=lines_tsv)
    assert "main_score" in failed(excinfo)
    assert "score() has no 'accuracy', the task's main_score (it has: acc)" in str(excinfo.value)


class NotFiniteMainScore(IsQuestionTask):
    def score(self, predictions, examples):
        return {"accuracy": float("nan")}


def test_a_main_score_that_is_not_finite_fails(lines_tsv):
    with pytest.raises(ContractError) as excinfo:
        check_task(NotFiniteMainScore, train=lines_tsv)
    assert failed(excinfo) == {"main_score"}
    assert "main_score 'accuracy' is nan; it must be a finite number" in str(excinfo.value)


class TensorPredictions(IsQuestionTask):
    def decode(self, examples, features, outputs):
        return [{"label": p["label"], "probabilities": torch.tensor(o)}
                for p, o in zip(super().decode(examples, features, outputs), outputs)]


def test_predictions_that_are_not_json_fail(lines_tsv):
    with pytest.raises(ContractError) as excinfo:
        check_task(TensorPredictions, train=lines_tsv)
    assert {"json", "predict"} <= failed(excinfo)
    assert "prediction 0 (line " in str(excinfo.value) and "is not JSON-serialisable" in str(excinfo.value)


class FormatNotStr(IsQuestionTask):
    def format_prediction(self, prediction):
        return prediction


def test_format_prediction_must_return_a_str(lines_tsv):
    with pytest.raises(ContractError) as excinfo:
        check_task(FormatNotStr, train=lines_tsv)
    assert "json" in failed(excinfo)
    assert "format_prediction(prediction 0) returned dict, not str" in str(excinfo.value)


class PlainOpen(IsQuestionTask):
    def read(self, path):
        with open(path, encoding="utf-8") as f:  # not the shared reader: bad bytes become a traceback
            rows = [line.rstrip("\n").split("\t", 1) for line in f if line.strip()]
        return [{"label": label, "text": text, "line": i} for i, (label, text) in enumerate(rows, 1)]


def test_a_reader_that_lets_bad_bytes_through_fails_bad_input(lines_tsv):
    with pytest.raises(ContractError) as excinfo:
        check_task(PlainOpen, train=lines_tsv)
    assert failed(excinfo) == {"bad_input"}
    assert "raised UnicodeDecodeError" in str(excinfo.value) and "instead of DataError" in str(excinfo.value)


def test_explicit_bad_files_must_raise_data_error_at_their_line(lines_tsv, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("question\tWhere ?\nstatement\tHere .\nno tab on this line\n")
    report = check_task(IsQuestionTask, train=lines_tsv, bad={bad: 3})
    assert report["bad_input"].detail == "1 bad file(s) raised DataError at the expected line"
    with pytest.raises(ContractError) as excinfo:
        check_task(IsQuestionTask, train=lines_tsv, bad={bad: 2})
    assert failed(excinfo) == {"bad_input"}
    assert "DataError at line 3, expected line 2" in str(excinfo.value)


def test_check_task_reports_every_check_with_its_time(lines_tsv):
    hooks = dict(vars(IsQuestionTask))
    report = check_task(IsQuestionTask, train=lines_tsv, max_examples=16)
    assert dict(vars(IsQuestionTask)) == hooks  # the plugin class is left as it was
    assert [c.name for c in report.checks] == list(CHECKS)
    assert report["read"].detail == "16 train, 16 dev examples"
    assert all(c.seconds >= 0 for c in report.checks) and report.seconds >= report["train"].seconds > 0
    assert f"all {len(CHECKS)} checks passed" in report.summary()


class DecoderOnly(IsQuestionTask):
    backbone_kinds = ("decoder",)


def test_a_task_that_cannot_run_on_the_default_backbone_is_told_to_pass_one(lines_tsv):
    with pytest.raises(ContractError) as excinfo:
        check_task(DecoderOnly, train=lines_tsv)
    assert failed(excinfo) == {"train"}
    assert "runs on decoder backbones, not on the default from-scratch mini encoder: pass backbone=" in str(
        excinfo.value)


def test_a_class_that_is_not_a_task_is_refused():
    with pytest.raises(TypeError, match="subclass of nlpkit.Task"):
        check_task(dict)


def test_importing_nlpkit_does_not_import_the_contract_test_nor_torch():
    import subprocess

    code = ("import sys, nlpkit; print('nlpkit.testing' in sys.modules, 'torch' in sys.modules); "
            "import nlpkit.testing; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False"]  # torch comes when a check runs
    assert DataError is nlpkit.DataError
