"""Sentiment: the classification plumbing with polarity label spaces; SST-2 read as it is; a tiny run."""
import json

import pytest

from conftest import benchmark_dir, tiny_config
import nlpkit
from nlpkit import ConfigError, DataError, get_task_class
from nlpkit.apps.cli import main
from nlpkit_tasks.classification import ClassificationTask
from nlpkit_tasks.sentiment import SentimentTask


def fitted(labels, **options):
    task = SentimentTask(options=options)
    task.fit([{"text": "t", "label": lab, "line": i + 1} for i, lab in enumerate(labels)])
    return task


def test_registered_by_name_and_built_on_classification():
    cls = get_task_class("sentiment")
    assert cls is SentimentTask and issubclass(cls, ClassificationTask)
    assert SentimentTask.read is ClassificationTask.read and SentimentTask.score is ClassificationTask.score


def test_reads_sst2_as_it_is():
    task = SentimentTask()
    examples = list(task.read(str(benchmark_dir("sst2") / "train.tsv.gz")))
    assert len(examples) == 67349
    assert examples[0] == {"text": "hide new secretions from the parental units", "label": "0", "line": 2}
    task.fit(examples)
    assert task.labels == ["negative", "positive"] and task.label_map == {"0": "negative", "1": "positive"}
    assert sum(task.canonical(ex["label"]) == "positive" for ex in examples) == 37569


@pytest.mark.parametrize("labels, scale, classes, mapping", [
    (["0", "1"], "auto", ["negative", "positive"], {"0": "negative", "1": "positive"}),
    (["1", "2"], "auto", ["negative", "positive"], {"1": "negative", "2": "positive"}),
    (["-1", "0", "1"], "auto", ["negative", "neutral", "positive"], {"-1": "negative", "0": "neutral", "1": "positive"}),
    (["1", "2", "3", "4", "5"], "auto", ["very negative", "negative", "neutral", "positive", "very positive"],
     {"1": "very negative", "3": "neutral", "5": "very positive"}),
    (["0", "1", "2", "3", "4"], "five", None, {"0": "very negative", "4": "very positive"}),
    (["pos", "NEG"], "auto", ["negative", "positive"], {"pos": "positive", "NEG": "negative"}),
    (["positive", "Neutral", "negative"], "auto", ["negative", "neutral", "positive"], {"Neutral": "neutral"}),
    (["positive", "negative"], "ternary", ["negative", "neutral", "positive"], {"positive": "positive"}),
    (["Very_Negative", "positive"], "auto", None, {"Very_Negative": "very negative"}),
])
def test_label_spaces(labels, scale, classes, mapping):
    task = fitted(labels, scale=scale)
    if classes is not None:
        assert task.labels == classes
    assert mapping.items() <= task.label_map.items()


@pytest.mark.parametrize("labels, options, message", [
    (["1", "2", "3", "4"], {}, "numeric sentiment labels [1, 2, 3, 4]"),
    (["0", "1", "2"], {"scale": "binary"}, "for scale binary"),
    (["1", "3", "5"], {}, "3 consecutive ones"),
    (["positive", "great"], {}, "unknown sentiment label 'great' (training example at line 2)"),
    (["positive", "neutral"], {"scale": "binary"}, "not on the binary scale"),
])
def test_label_space_errors(labels, options, message):
    with pytest.raises(DataError, match=rf".*{__import__('re').escape(message)}"):
        fitted(labels, **options)


def test_other_spellings_are_accepted_at_evaluation_but_unknown_labels_are_not():
    task = fitted(["positive", "negative"])
    assert task.canonical("pos") == "positive" and task.canonical("1") is None
    task.check([{"text": "x", "label": "POS", "line": 1}], "dev.tsv")
    with pytest.raises(DataError, match=r"dev.tsv:2: label '1' never occurred"):
        task.check([{"text": "x", "label": "neg", "line": 1}, {"text": "y", "label": "1", "line": 2}], "dev.tsv")


def test_multi_label_is_refused():
    with pytest.raises(ConfigError, match="sentiment has one label per text"):
        SentimentTask(options={"multi_label": True})


def test_prediction_has_label_and_probability():
    task = fitted(["0", "1"])
    pred = task.decode([{}], [{}], [[0.2, 0.8]])[0]
    assert pred == {"label": "positive", "probability": 0.8, "probabilities": {"negative": 0.2, "positive": 0.8}}
    assert task.format_prediction(pred) == "positive (0.80)"


def test_train_on_embedded_data_then_evaluate_and_predict(tmp_path, capsys):
    result = nlpkit.train(tiny_config("sentiment", tmp_path))
    scores = result.metrics["tasks"]["sentiment"]
    assert {"accuracy", "macro_f1"} <= set(scores) and result.metrics["best_step"] == 4
    capsys.readouterr()
    assert main(["predict", str(result.output_dir), "--json", "the food was not great at all ."]) == 0
    pred = json.loads(capsys.readouterr().out)["prediction"]
    assert pred["label"] in ("negative", "positive") and 0.5 <= pred["probability"] <= 1
    # a model trained on negative/positive names cannot score SST-2's 0/1 labels: a clear error, exit 2
    sst = tmp_path / "sst.tsv"
    sst.write_bytes(b"label\tsentence\r\n0\tdull\r\n1\tfun\r\n")
    assert main(["evaluate", str(result.output_dir), "--data", f"dev={sst}"]) == 2
    assert f"{sst}:2: label '0' never occurred" in capsys.readouterr().err


def test_cli_exits_2_on_empty_text(tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\ngood\tpositive\n\tnegative\n")
    assert main(["train", "--task", "sentiment", "--data", f"train={bad}", "--backbone", "mini",
                 "--max-steps", "1", "--output-dir", str(tmp_path / "x"), "--no-progress"]) == 2
    assert f"{bad}:3: empty text in column 'sentence'" in capsys.readouterr().err
