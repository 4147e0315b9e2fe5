"""The reading-comprehension plugin: JSONL and RACE readers and their errors, the multiple-choice head
with differing option counts, accuracy, and a tiny train -> evaluate -> predict run."""
import io
import json
import sys

import pytest
import torch

import nlpkit
from nlpkit import DataError
from nlpkit.engine.backbone import PRESETS, Backbone, train_tokenizer
from nlpkit.apps.cli import main
from nlpkit_tasks.reading_comprehension import ReadingComprehensionTask, pair_text, read_rc

PASSAGE = "Anna Okafor was born in Lisbon. Boris Novak was born in Osaka. Anna plays the violin."


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def jsonl(*records):
    return "".join(json.dumps(r) + "\n" for r in records)


def record(**changes):
    base = {"article": PASSAGE, "question": "Where was Boris born?", "options": ["Lisbon", "Osaka", "Quito"],
            "answer": "B"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


# ---- readers ---------------------------------------------------------------------------------------
def test_reads_jsonl_with_letters_indices_and_context_names(tmp_path):
    path = write(tmp_path / "d.jsonl", jsonl(
        record(), record(answer=2), record(answer="0"),
        {"context": PASSAGE, "question": "Q", "options": ["a", "b"], "answer": "a", "id": "x"}))
    exs = read_rc(path)
    assert [e["label"] for e in exs] == [1, 2, 0, 0]
    assert exs[3]["id"] == "x" and exs[0]["id"] == "d-0" and [e["line"] for e in exs] == [1, 2, 3, 4]
    assert exs[0]["context"] == PASSAGE and exs[0]["options"] == ["Lisbon", "Osaka", "Quito"]


RACE_ARTICLE = {"answers": ["B", "A"], "options": [["Lisbon", "Osaka", "Quito", "Hanoi"], ["violin", "harp"]],
                "questions": ["Boris was born in _ .", "Which instrument does Anna play?"], "article": PASSAGE,
                "id": "high1.txt"}


def test_reads_race_files_and_folders(tmp_path):
    write(tmp_path / "RACE" / "dev" / "high" / "1.txt", json.dumps(RACE_ARTICLE))
    write(tmp_path / "RACE" / "dev" / "middle" / "2.txt", json.dumps({**RACE_ARTICLE, "id": "middle2.txt"}))
    exs = read_rc(str(tmp_path / "RACE" / "dev"))
    assert [e["id"] for e in exs] == ["high1.txt-0", "high1.txt-1", "middle2.txt-0", "middle2.txt-1"]
    assert [e["label"] for e in exs] == [1, 0, 1, 0] and len(exs[1]["options"]) == 2
    single = read_rc(str(tmp_path / "RACE" / "dev" / "high" / "1.txt"))
    assert [e["question"] for e in single] == RACE_ARTICLE["questions"]


def test_cloze_questions_take_the_option_in_the_blank():
    assert pair_text("Boris was born in _ .", "Osaka") == "Boris was born in Osaka ."
    assert pair_text("Where was Boris born?", "Osaka") == "Where was Boris born? Osaka"


@pytest.mark.parametrize("bad, message", [
    (record(answer="E"), "answer 'E' is out of range for 3 options (A-C, or 0-2)"),
    (record(answer=3), "answer 3 is out of range for 3 options"),
    (record(answer="maybe"), "neither a letter"),
    (record(answer=None), "missing field 'answer'"),
    (record(article=None), "missing field 'article' (or 'context'/'passage')"),
    (record(question=None), "missing field 'question'"),
    (record(options=["only one"]), "must be a list of 2 to 26 options"),
    (record(options=["a", ""]), "option 1 must be a non-empty string"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, bad, message):
    path = write(tmp_path / "bad.jsonl", jsonl(record(), bad))
    with pytest.raises(DataError) as err:
        read_rc(path)
    assert str(err.value).startswith(f"{path}:2: ") and message in str(err.value)


def test_race_errors_name_file_and_record(tmp_path):
    path = write(tmp_path / "a.txt", json.dumps({**RACE_ARTICLE, "answers": ["B", "C"]}))
    with pytest.raises(DataError, match=r"a.txt: record questions\[1\]: answer 'C' is out of range for 2 options"):
        read_rc(path)
    path = write(tmp_path / "b.txt", json.dumps({**RACE_ARTICLE, "answers": ["B"]}))
    with pytest.raises(DataError, match=r"b.txt: RACE article: questions, options and answers must be lists of the "
                                        r"same length \(got 2, 2, 1\)"):
        read_rc(path)
    folder = tmp_path / "race"
    write(folder / "c.txt", '{"article": "x",\n "questions": [}')
    with pytest.raises(DataError, match=r"c.txt:2: invalid JSON"):
        read_rc(str(folder))


# ---- model -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def task_and_backbone():
    tok = train_tokenizer([PASSAGE, "Where was Boris born? Lisbon Osaka Quito Hanoi violin harp"] * 10, vocab_size=300)
    preset = {k: v for k, v in PRESETS["mini"].items() if k != "vocab_size"}
    backbone = Backbone.from_scratch(preset, tok, "mini")
    task = ReadingComprehensionTask(options={"max_length": 24})
    task.setup(backbone)
    return task, backbone


def test_options_of_different_counts_share_a_batch(task_and_backbone):
    task, backbone = task_and_backbone
    exs = [{"context": PASSAGE, "question": "Boris was born in _ .", "options": ["Lisbon", "Osaka", "Quito", "Hanoi"],
            "label": 1},
           {"context": PASSAGE, "question": "Which instrument?", "options": ["violin", "harp"], "label": 0}]
    feats = task.encode(exs)
    assert [len(f["input_ids"]) for f in feats] == [4, 2]
    assert all(len(ids) <= 24 for f in feats for ids in f["input_ids"])  # the passage was cut
    assert task.tokenizer.decode(feats[0]["input_ids"][1]).rstrip().endswith("Boris was born in Osaka .[SEP]")
    batch = task.collate(feats)
    assert batch["input_ids"].shape[0] == 6
    # default pooling averages the question + option segment only: exactly the tokens after the first [SEP]
    pooled_ids = batch["input_ids"][1][batch["pool_mask"][1].bool()].tolist()
    assert task.tokenizer.decode(pooled_ids).strip() == "Boris was born in Osaka ."
    assert batch["pool_mask"].sum(1).tolist() == [sum(m) for f in feats for m in f["pool_mask"]]
    assert batch["choice_mask"].tolist() == [[True] * 4, [True, True, False, False]]
    head = task.build_head(backbone)
    out = head(backbone, batch)
    assert out["logits"].shape == (2, 4) and torch.isfinite(out["loss"])
    probs = task.predict_batch(head, backbone, batch)
    assert [len(p) for p in probs] == [4, 2] and all(sum(p) == pytest.approx(1.0) for p in probs)
    preds = task.decode(exs, feats, [[0.1, 0.6, 0.2, 0.1], [0.3, 0.7]])
    assert preds[0]["letter"] == "B" and preds[0]["option"] == "Osaka" and preds[1]["answer"] == 1


def test_accuracy_is_the_share_of_right_choices():
    task = ReadingComprehensionTask()
    examples = [{"label": 0}, {"label": 1}, {"label": 2}, {"label": 1}]
    preds = [{"answer": 0}, {"answer": 1}, {"answer": 0}, {"answer": 3}]
    assert task.score(preds, examples) == {"accuracy": 50.0, "total": 4}


# ---- end to end ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from pathlib import Path

    folder = tmp_path_factory.mktemp("rc")
    lines = (Path(__file__).resolve().parents[1] / "tasks" / "data" / "reading-comprehension" / "train.jsonl"
             ).read_text().splitlines()
    (folder / "train.jsonl").write_text("\n".join(lines[:48]) + "\n")
    (folder / "dev.jsonl").write_text("\n".join(lines[48:64]) + "\n")
    out = folder / "run"
    assert main(["train", "--task", "reading-comprehension", "--data", f"train={folder / 'train.jsonl'}",
                 "--data", f"dev={folder / 'dev.jsonl'}", "--backbone", "mini", "--max-steps", "3",
                 "--batch-size", "16", "--option", "max_length=96", "--output-dir", str(out), "--no-progress",
                 "--set", "backbone.vocab_size=400"]) == 0
    return out, folder


def test_train_evaluate_predict(trained, capsys, monkeypatch):
    out, folder = trained
    saved = json.loads((out / "metrics.json").read_text())["tasks"]["reading-comprehension"]
    assert saved["total"] == 16 and 0 <= saved["accuracy"] <= 100
    assert main(["evaluate", str(out), "--data", f"dev={folder / 'dev.jsonl'}", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)["reading-comprehension/dev"]
    assert scores["accuracy"] == pytest.approx(saved["accuracy"])

    assert main(["predict", str(out), "--context", PASSAGE, "--question", "Where was Boris born?",
                 "--options", "Lisbon|Osaka|Quito", "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)["prediction"]
    assert pred["option"] in ("Lisbon", "Osaka", "Quito") and pred["letter"] in "ABC"
    assert len(pred["probabilities"]) == 3 and sum(pred["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    py = nlpkit.load(out).predict({"article": PASSAGE, "question": "Where was Boris born?",
                                   "options": ["Lisbon", "Osaka", "Quito"]})
    assert py == pred

    monkeypatch.setattr(sys, "stdin", io.StringIO(jsonl(record(), record(options=["x", "y"]))))
    assert main(["predict", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith(("A) x", "B) y"))


def test_cli_errors_exit_2(trained, tmp_path, capsys):
    out, _ = trained
    bad = write(tmp_path / "bad.jsonl", jsonl(record(), record(answer="D")))
    cases = [
        (["train", "--task", "reading-comprehension", "--data", f"train={bad}", "--output-dir", str(tmp_path / "r")],
         "bad.jsonl:2: answer 'D' is out of range for 3 options"),
        (["predict", str(out), "--context", PASSAGE, "--question", "Q?"], "field 'options' must be a list"),
        (["predict", str(out), "--context", PASSAGE, "--question", "Q?", "--options", "[\"a\","], "not a valid JSON"),
        (["predict", str(out), "a plain text"], "needs a passage, a question and options"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
