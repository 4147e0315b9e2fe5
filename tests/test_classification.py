"""Text classification: readers, column options, label errors, metrics, a tiny train -> evaluate -> predict."""
import gzip
import json
import re

import pytest

from conftest import benchmark_dir, tiny_config
import nlpkit
from nlpkit import ConfigError, DataError
from nlpkit.engine.backbone import train_tokenizer
from nlpkit.apps.cli import main
from nlpkit_tasks.classification import ClassificationTask


def write(tmp_path, name, text, newline="\n"):
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return str(path)


def read(path, **options):
    return list(ClassificationTask(options=options).read(path))


# ---- readers -------------------------------------------------------------------------------------
def test_csv_with_quotes_commas_bom_and_crlf(tmp_path):
    path = write(tmp_path, "a.csv", '\ufefftext,label\n"Hello, world",greeting\n\nplain text,other\n', "\r\n")
    examples = read(path)
    assert [(ex["text"], ex["label"], ex["line"]) for ex in examples] == [
        ("Hello, world", "greeting", 2), ("plain text", "other", 4)]


def test_glue_style_tsv_keeps_quotes_and_finds_the_sentence_column(tmp_path):
    path = write(tmp_path, "sst.tsv", 'sentence\tlabel\nit \'s a " charming movie\t1\n" dull\t0\n')
    examples = read(path)
    assert [ex["text"] for ex in examples] == ['it \'s a " charming movie', '" dull']
    assert [ex["label"] for ex in examples] == ["1", "0"] and "pair" not in examples[0]


def test_pair_columns_are_detected_and_can_be_named(tmp_path):
    rte = write(tmp_path, "rte.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA man sleeps.\tA person rests.\tentailment\n")
    ex = read(rte)[0]
    assert (ex["text"], ex["pair"], ex["label"]) == ("A man sleeps.", "A person rests.", "entailment")
    qnli = write(tmp_path, "qnli.tsv", "question\tsentence\tlabel\nWho?\tHim.\tentailment\n")
    assert read(qnli)[0]["pair"] == "Him."
    custom = write(tmp_path, "c.csv", "a,b,y\nfirst,second,same\n")
    ex = read(custom, text_column="a", pair_column="b", label_column="y")[0]
    assert (ex["text"], ex["pair"], ex["label"]) == ("first", "second", "same")
    assert "pair" not in read(rte, pair_column="none")[0]


def test_jsonl_and_gzip(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"text": "good", "label": 1}) + "\n\n" + json.dumps({"text": "bad", "label": 0}) + "\n")
    examples = read(str(path))
    assert [(ex["text"], ex["label"], ex["line"]) for ex in examples] == [("good", "1", 1), ("bad", "0", 3)]


def test_multi_label_from_separated_cells_and_json_lists(tmp_path):
    csv_path = write(tmp_path, "m.csv", 'text,labels\nt1,"sports, politics"\nt2,\nt3,sports\n')
    assert [ex["label"] for ex in read(csv_path, multi_label=True)] == [["sports", "politics"], [], ["sports"]]
    tsv_path = write(tmp_path, "m.tsv", "text\tlabels\nt1\ta|b\n")
    assert read(tsv_path, multi_label=True, label_separator="|")[0]["label"] == ["a", "b"]
    jsonl = write(tmp_path, "m.jsonl", json.dumps({"text": "t", "labels": ["x", "y", "x"]}) + "\n")
    assert read(jsonl, multi_label=True)[0]["label"] == ["x", "y"]


def test_hub_rows_map_class_ids_to_names():
    datasets = pytest.importorskip("datasets", reason="the optional hub extra is not installed")
    rows = datasets.Dataset.from_dict(
        {"sentence": ["good film", "bad film"], "label": [1, 0]},
        features=datasets.Features({"sentence": datasets.Value("string"),
                                    "label": datasets.ClassLabel(names=["negative", "positive"])}))
    examples = list(ClassificationTask().read_hub(rows, "hub:x:train"))
    assert [(ex["text"], ex["label"], ex["line"]) for ex in examples] == [("good film", "positive", 1),
                                                                          ("bad film", "negative", 2)]


# ---- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, text, options, line, message", [
    ("a.csv", "words,label\nhi,x\n", {}, 1, "no text column 'auto' (columns: words, label)"),
    ("a.csv", "text,label\nhi,x\n", {"text_column": "body"}, 1, "no text column 'body'"),
    ("a.csv", "text,tag\nhi,x\n", {}, 1, "no label column 'auto'"),
    ("a.csv", "text,label\nhi,x\n", {"pair_column": "other"}, 1, "no pair column 'other'"),
    ("a.csv", "text,label\nhi,x\n  ,y\n", {}, 3, "empty text in column 'text'"),
    ("a.csv", "text,label\nhi,x\nho,\n", {}, 3, "empty label in column 'label'"),
    ("a.tsv", "text\tlabel\nhi\tx\nho\n", {}, 3, "expected 2 TSV fields"),
    ("a.jsonl", '{"text": "a", "label": "x"}\n{"label": "y"}\n', {}, 2, "record has no field 'text'"),
    ("a.jsonl", '{"text": "a", "label": ["x", "y"]}\n', {}, 1, "set multi_label: true"),
    ("a.jsonl", '{"text": 3, "label": "x"}\n', {}, 1, "expected text in column 'text'"),
])
def test_bad_input_names_file_and_line(tmp_path, name, text, options, line, message):
    path = write(tmp_path, name, text)
    with pytest.raises(DataError, match=rf"{re.escape(path)}:{line}: .*{re.escape(message)}"):
        read(path, **options)


def test_unknown_format_and_bad_options():
    with pytest.raises(DataError, match="cannot tell the format"):
        read("data.txt")
    with pytest.raises(ConfigError, match="main_score: must be auto or one of"):
        ClassificationTask(options={"main_score": "f1"})
    with pytest.raises(ConfigError, match="threshold"):
        ClassificationTask(options={"multi_label": True, "threshold": 1.5})
    assert ClassificationTask(options={"multi_label": True}).main_score == "micro_f1"
    assert ClassificationTask(options={"main_score": "macro_f1"}).main_score == "macro_f1"


def test_unknown_label_at_evaluation_names_the_line():
    task = ClassificationTask()
    task.fit([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    with pytest.raises(DataError, match=r"dev.csv:5: label 'z' never occurred in the training data"):
        task.check([{"text": "c", "label": "x", "line": 4}, {"text": "c", "label": "z", "line": 5}], "dev.csv")
    with pytest.raises(DataError, match="single class"):
        ClassificationTask().fit([{"text": "a", "label": "x"}])


# ---- metrics -------------------------------------------------------------------------------------
def test_single_label_scores():
    task = ClassificationTask()
    gold = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", "c", "c"]
    task.fit([{"label": g} for g in gold])
    scores = task.score([{"label": p} for p in pred], [{"label": g} for g in gold])
    assert scores["accuracy"] == pytest.approx(400 / 6)
    # a: P 2/2 R 2/3 F 0.8; b: P 1/2 R 1/2 F 0.5; c: P 1/2 R 1/1 F 2/3
    assert scores["per_class"]["a"] == pytest.approx({"precision": 100, "recall": 200 / 3, "f1": 80, "support": 3})
    assert scores["macro_f1"] == pytest.approx(100 * (0.8 + 0.5 + 2 / 3) / 3)
    assert scores["weighted_f1"] == pytest.approx(100 * (0.8 * 3 + 0.5 * 2 + 2 / 3) / 6)


def test_multi_label_scores_micro_macro_and_exact_match():
    task = ClassificationTask(options={"multi_label": True})
    gold = [["a", "b"], ["a"], [], ["c"]]
    pred = [["a"], ["a", "c"], [], ["c"]]
    task.fit([{"label": g} for g in gold])
    scores = task.score([{"labels": p} for p in pred], [{"label": g} for g in gold])
    # tp 3 (a, a, c), fp 1 (c), fn 1 (b): micro P = R = F = 3/4
    assert scores["micro_f1"] == pytest.approx(75.0) and scores["micro_precision"] == pytest.approx(75.0)
    # a: F 1; b: F 0; c: P 1/2 R 1 F 2/3
    assert scores["macro_f1"] == pytest.approx(100 * (1 + 0 + 2 / 3) / 3)
    assert scores["accuracy"] == pytest.approx(50.0)  # exact match: the empty one and the last one


def test_multi_label_decoding_uses_the_threshold():
    task = ClassificationTask(options={"multi_label": True, "threshold": 0.4})
    task.labels = ["a", "b", "c"]
    pred = task.decode([{}], [{}], [[0.9, 0.1, 0.45]])[0]
    assert pred["labels"] == ["a", "c"] and pred["probabilities"]["b"] == 0.1
    assert task.format_prediction(pred) == "a (0.90), c (0.45)"
    assert "no label reaches" in task.format_prediction({"labels": [], "probabilities": {}})


# ---- encoding ------------------------------------------------------------------------------------
def test_pairs_get_segment_ids_and_multi_label_targets():
    class FakeBackbone:
        tokenizer = train_tokenizer(["a man sleeps", "a person rests"] * 10, vocab_size=300)
        kind = "encoder"

    task = ClassificationTask(options={"multi_label": True})
    train = [{"text": "a man sleeps", "pair": "a person rests", "label": ["x", "y"]},
             {"text": "a man", "pair": "rests", "label": []}]
    task.fit(train)
    task.setup(FakeBackbone())
    features = task.encode(train)
    assert features[0]["labels"] == [1.0, 1.0] and features[1]["labels"] == [0.0, 0.0]
    assert set(features[0]["token_type_ids"]) == {0, 1}
    batch = task.collate(features)
    assert batch["labels"].dtype.is_floating_point and batch["token_type_ids"].shape == batch["input_ids"].shape
    assert task.parse_input("a man\tsleeps") == {"text": "a man", "pair": "sleeps"}
    with pytest.raises(DataError, match="classifies text pairs"):
        task.parse_input("a man sleeps")
    with pytest.raises(DataError, match="empty input text"):
        task.parse_input("   ")


# ---- end to end ----------------------------------------------------------------------------------
def test_train_on_embedded_data_then_evaluate_and_predict(tmp_path, capsys):
    result = nlpkit.train(tiny_config("classification", tmp_path))
    scores = result.metrics["tasks"]["classification"]
    assert set(scores["per_class"]) <= {"arts", "business", "science", "sports"} and 0 <= scores["accuracy"] <= 100
    run = result.output_dir
    dev = ClassificationTask().default_data()["dev"]
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", f"dev={dev}", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)["classification/dev"]
    assert evaluated["accuracy"] == pytest.approx(scores["accuracy"])
    assert main(["predict", str(run), "The striker scored twice in the cup final ."]) == 0
    label, prob = capsys.readouterr().out.strip().split("\t")
    assert label in {"arts", "business", "science", "sports"}
    assert 0 < float(prob) <= 1


def test_pair_multi_label_run_through_the_python_api(tmp_path):
    rows = [{"premise": f"item {i} is red", "hypothesis": f"item {i} is {c}", "labels": lab}
            for i, (c, lab) in enumerate([("red", ["match", "color"]), ("blue", ["color"]), ("big", [])] * 8)]
    train = write(tmp_path, "train.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = tiny_config("classification", tmp_path, {"train": train, "dev": train})
    cfg["tasks"][0]["options"] = {"multi_label": True, "threshold": 0.5}
    result = nlpkit.train(cfg)
    assert "micro_f1" in result.metrics["tasks"]["classification"]
    pipe = nlpkit.load(result.output_dir)
    pred = pipe.predict({"text": "item 1 is red", "pair": "item 1 is blue"})
    assert set(pred["probabilities"]) == {"color", "match"} and set(pred["labels"]) <= {"color", "match"}


def test_cli_exits_2_on_a_missing_column_or_unknown_label(tmp_path, capsys):
    bad = write(tmp_path, "bad.csv", "body,label\nhello,x\n")
    assert main(["train", "--task", "classification", "--data", f"train={bad}", "--backbone", "mini",
                 "--max-steps", "1", "--output-dir", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1: no text column" in err and "Traceback" not in err
    train = write(tmp_path, "train.csv", "text,label\n" + "good,pos\nbad,neg\n" * 4)
    dev = write(tmp_path, "dev.csv", "text,label\ngood,pos\nodd,neutral\n")
    assert main(["train", "--task", "classification", "--data", f"train={train}", "--data", f"dev={dev}",
                 "--backbone", "mini", "--max-steps", "1", "--output-dir", str(tmp_path / "y"), "--no-progress"]) == 2
    assert f"{dev}:3: label 'neutral' never occurred" in capsys.readouterr().err


def test_label_first_format_reads_the_trec_release_as_it_is():
    path = benchmark_dir("trec") / "train_5500.label.gz"
    coarse = list(ClassificationTask(options={"format": "label-first", "label_part": "coarse"}).read(str(path)))
    assert len(coarse) == 5452
    counts = {}
    for ex in coarse:
        counts[ex["label"]] = counts.get(ex["label"], 0) + 1
    assert counts == {"ABBR": 86, "DESC": 1162, "ENTY": 1250, "HUM": 1223, "LOC": 835, "NUM": 896}
    fine = list(ClassificationTask(options={"format": "label-first"}).read(str(path)))
    assert len({ex["label"] for ex in fine}) == 50
    assert fine[0]["text"].startswith("How did serfdom develop")
