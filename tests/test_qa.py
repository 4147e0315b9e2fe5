"""The qa plugin: SQuAD readers and their errors, the official metric on hand-made predictions, windows
over long contexts, no-answer decoding, and a tiny train -> evaluate -> predict run."""
import gzip
import io
import json
import sys

import pytest

import nlpkit
from nlpkit import ConfigError, DataError
from nlpkit.engine.backbone import train_tokenizer
from nlpkit.apps.cli import main
from nlpkit_tasks.qa import QaTask
from nlpkit_tasks.qa.squad import f1, normalize_answer, read_hub_rows, read_squad, squad_scores

CONTEXT = "Anna Okafor was born in Lisbon in 1987. She moved to Osaka later."


def write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def squad_doc(qas, context=CONTEXT, version="1.1"):
    return {"version": version, "data": [{"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]}


def qa(qid, question, *answers):
    return {"id": qid, "question": question,
            "answers": [{"text": t, "answer_start": CONTEXT.index(t)} for t in answers]}


# ---- readers ---------------------------------------------------------------------------------------
def test_reads_squad_v1_json(tmp_path):
    path = write(tmp_path, "train.json", squad_doc([qa("a", "Where was Anna born?", "Lisbon"),
                                                    qa("b", "When?", "1987", "in 1987")]))
    exs = read_squad(path)
    assert [e["id"] for e in exs] == ["a", "b"]
    assert exs[1]["answers"] == [{"text": "1987", "answer_start": 34}, {"text": "in 1987", "answer_start": 31}]
    assert exs[0]["context"] == CONTEXT and exs[0]["record"] == "data[0].paragraphs[0].qas[0]"
    assert not exs[0]["impossible"]


def test_reads_squad_v2_json_with_unanswerable_questions(tmp_path):
    doc = squad_doc([qa("a", "Where was Anna born?", "Lisbon"),
                     {"id": "b", "question": "Where was Boris born?", "answers": [], "is_impossible": True,
                      "plausible_answers": [{"text": "Lisbon", "answer_start": 24}]}], version="v2.0")
    exs = read_squad(write(tmp_path, "dev.json", doc))
    assert [e["impossible"] for e in exs] == [False, True]
    assert exs[1]["answers"] == []


def test_reads_jsonl_in_both_answer_layouts_and_gzip(tmp_path):
    lines = [{"question": "Where?", "context": CONTEXT, "answers": [{"text": "Osaka", "answer_start": 53}]},
             {"id": "hf", "question": "When?", "context": CONTEXT,
              "answers": {"text": ["1987"], "answer_start": [34]}},
             {"question": "Who is Boris?", "context": CONTEXT, "answers": []}]
    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(json.dumps(r) for r in lines) + "\n\n")
    exs = read_squad(str(path))
    assert [e["id"] for e in exs] == ["0", "hf", "2"]
    assert [e["line"] for e in exs] == [1, 2, 3]
    assert exs[1]["answers"] == [{"text": "1987", "answer_start": 34}]
    assert exs[2]["impossible"]


def test_reads_hugging_face_rows():
    rows = [{"id": "x", "title": "T", "context": CONTEXT, "question": "Where?",
             "answers": {"text": ["Lisbon"], "answer_start": [24]}}]
    (ex,) = read_hub_rows(rows, "hub:squad:validation")
    assert ex["answers"] == [{"text": "Lisbon", "answer_start": 24}] and ex["title"] == "T"


@pytest.mark.parametrize("record, message", [
    ({"context": CONTEXT, "answers": []}, "missing field 'question'"),
    ({"question": "Q?", "answers": []}, "missing field 'context'"),
    ({"question": "Q?", "context": CONTEXT}, "missing field 'answers'"),
    ({"question": "Q?", "context": CONTEXT, "answers": [{"text": "Lisbon"}]}, "'text' and 'answer_start'"),
    ({"question": "Q?", "context": CONTEXT, "answers": [{"text": "Lisbon", "answer_start": -1}]}, "integer >= 0"),
    ({"question": "Q?", "context": CONTEXT, "answers": [{"text": "Lisbon", "answer_start": 20}]},
     "answer 0 ('Lisbon') does not match the context at answer_start 20 (the context there reads ' in Li'); "
     "the text occurs at offset(s) [24]"),
    ({"question": "Q?", "context": CONTEXT, "answers": [{"text": "Paris", "answer_start": 0}]},
     "does not occur in the context"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, record, message):
    good = {"question": "Q?", "context": CONTEXT, "answers": [{"text": "Lisbon", "answer_start": 24}]}
    path = write(tmp_path, "bad.jsonl", json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError) as err:
        read_squad(path)
    assert str(err.value).startswith(f"{path}:2: ") and message in str(err.value)


def test_json_errors_name_file_and_record(tmp_path):
    bad = qa("q7", "Where?", "Lisbon")
    bad["answers"][0]["answer_start"] += 1
    path = write(tmp_path, "train.json", squad_doc([qa("a", "When?", "1987"), bad]))
    with pytest.raises(DataError, match=r"train.json: record data\[0\].paragraphs\[0\].qas\[1\]: answer 0 "):
        read_squad(path)
    path = write(tmp_path, "v1.json", squad_doc([{"id": "x", "question": "Q?", "answers": []}]))
    with pytest.raises(DataError, match=r"v1.json: record .*qas\[0\]: no answers, but SQuAD v1.1"):
        read_squad(path)
    path = write(tmp_path, "broken.json", '{"data": [\n  {"paragraphs": }\n]}')
    with pytest.raises(DataError, match=r"broken.json:2: invalid JSON"):
        read_squad(path)
    path = write(tmp_path, "flat.json", {"question": "Q?"})
    with pytest.raises(DataError, match="expected the SQuAD layout"):
        read_squad(path)


# ---- the official metric ---------------------------------------------------------------------------
def test_normalisation_follows_the_official_script():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear and THE plum.") == "apple pear and plum"
    assert normalize_answer("theatre another") == "theatre another"  # articles only as whole words
    assert normalize_answer("Jean-Luc's") == "jeanlucs"  # punctuation removed, not replaced by a space
    assert normalize_answer("a\tb\n c") == "b c"
    assert normalize_answer("«Paris»—1.5") == "«paris»—15"  # only ASCII punctuation is removed


def test_golden_v1_scores():
    """Values worked out by hand with the rules of evaluate-v1.1.py."""
    golds = [["Denver Broncos", "The Denver Broncos"], ["Santa Clara, California"], ["the 50th Super Bowl", "50th"],
             ["an apple"]]
    preds = ["denver broncos", "Santa Clara", "Super Bowl 50", ""]
    scores = squad_scores(preds, golds, v2=False)
    # EM: only the first; F1: 1, P=1 R=2/3 -> 0.8, 2 of 3 tokens both ways -> 2/3, 0
    assert scores["exact"] == pytest.approx(25.0)
    assert scores["f1"] == pytest.approx(100 * (1 + 0.8 + 2 / 3 + 0) / 4)
    assert scores["total"] == 4
    assert "HasAns_exact" not in scores


def test_v1_and_v2_differ_exactly_where_the_official_scripts_do():
    # gold "the" normalises to nothing: v1.1 keeps it (EM 1, but F1 0: no common token); v2.0 drops it,
    # leaving "" as the only gold, and an empty prediction then scores F1 1
    assert squad_scores(["a"], [["the"]], v2=False) == {"exact": 100.0, "f1": 0.0, "total": 1}
    assert squad_scores(["a"], [["the"]], v2=True)["f1"] == 100.0
    assert f1("", "", empty_agrees=False) == 0.0 and f1("", "", empty_agrees=True) == 1.0


def test_golden_v2_scores_with_splits_and_best_threshold():
    """evaluate-v2.0.py rules, worked out by hand; the threshold sweep is its find_best_thresh."""
    golds = [["Paris"], ["in 1990"], [], []]
    preds = ["Paris", "1990", "", "London"]
    diffs = [-3.0, -1.0, 2.0, 0.5]  # no-answer score minus best span score
    spans = ["Paris", "1990", "Rome", "London"]
    s = squad_scores(preds, golds, v2=True, null_score_diffs=diffs, best_spans=spans)
    assert s["exact"] == pytest.approx(50.0)
    assert s["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 0) / 4)
    assert (s["HasAns_exact"], s["HasAns_f1"], s["HasAns_total"]) == (pytest.approx(50.0), pytest.approx(250 / 3), 2)
    assert (s["NoAns_exact"], s["NoAns_f1"], s["NoAns_total"]) == (pytest.approx(50.0), pytest.approx(50.0), 2)
    # all unanswered: 2; answer by growing margin: +1 (Paris) -> 3, +2/3 (1990) -> 3.67 best at -1.0,
    # then "London" and "Rome" on no-answer questions cost 1 each
    assert s["best_f1"] == pytest.approx(100 * (2 + 1 + 2 / 3) / 4) and s["best_f1_thresh"] == -1.0
    assert s["best_exact"] == pytest.approx(75.0) and s["best_exact_thresh"] == -3.0


# ---- encoding, windows and decoding ----------------------------------------------------------------
FILLER = [f"Sentence number {i} talks about the harbour, the market and the old bridge." for i in range(24)]
LONG_CONTEXT = " ".join(FILLER[:20]) + " The treasure was hidden in Valparaiso by Captain Moreau. " + " ".join(FILLER[20:])


class FakeBackbone:
    kind = "encoder"
    tokenizer = train_tokenizer([CONTEXT, LONG_CONTEXT, "Where was the treasure hidden? Where was Anna born?"] * 10,
                                vocab_size=400)


def make_task(**options):
    task = QaTask(options=options)
    task.setup(FakeBackbone())
    return task


def long_example():
    start = LONG_CONTEXT.index("Valparaiso")
    return {"id": "long", "question": "Where was the treasure hidden?", "context": LONG_CONTEXT,
            "answers": [{"text": "Valparaiso", "answer_start": start}], "impossible": False}


def test_labels_point_at_the_answer_tokens():
    task = make_task(max_length=64, doc_stride=16)
    ex = {"id": "a", "question": "Where was Anna born?", "context": CONTEXT,
          "answers": [{"text": "Lisbon", "answer_start": 24}], "impossible": False}
    (feat,) = task.encode([ex])
    s, e = feat["start_positions"], feat["end_positions"]
    assert s != feat["cls_index"]
    assert CONTEXT[feat["offsets"][s][0]:feat["offsets"][e][1]].strip() == "Lisbon"
    assert all(o is None for o in feat["offsets"][: feat["input_ids"].index(task.tokenizer.sep_token_id) + 1])


def test_long_context_is_split_into_windows_and_answered_across_them():
    task = make_task(max_length=48, doc_stride=12, max_query_length=16)
    ex = long_example()
    feats = task.encode([ex])
    assert len(feats) > 3 and [f["window"] for f in feats] == list(range(len(feats)))
    holding = [f for f in feats if f["start_positions"] != f["cls_index"]]
    assert holding and all(f["window"] >= 3 for f in holding)  # the answer lies beyond the third window
    for f in feats:  # every window that does not hold the whole answer is labelled to [CLS]
        if f not in holding:
            assert f["start_positions"] == f["end_positions"] == f["cls_index"]
    # logits that point at the gold tokens in the window holding it, and at a weaker decoy in window 0
    outputs = []
    for f in feats:
        n = len(f["input_ids"])
        start, end = [0.0] * n, [0.0] * n
        if f is holding[-1]:
            start[f["start_positions"]], end[f["end_positions"]] = 6.0, 6.0
        if f["window"] == 0:
            first = next(i for i, o in enumerate(f["offsets"]) if o is not None)
            start[first], end[first + 1] = 4.0, 4.0
        outputs.append((start, end))
    (pred,) = task.decode([ex], feats, outputs)
    assert pred["answer"] == "Valparaiso"
    assert LONG_CONTEXT[pred["start"]:pred["end"]] == "Valparaiso"
    assert 0.5 < pred["score"] <= 1.0


def test_context_longer_than_a_window_without_windows_is_an_error(tmp_path):
    path = write(tmp_path, "long.jsonl", json.dumps({**long_example(), "impossible": None}) + "\n")
    task = make_task(max_length=48, doc_stride=12, max_query_length=16, windows=False)
    exs = task.read(path)
    with pytest.raises(DataError, match=r"long.jsonl:1: question id 'long': the context does not fit in one window"):
        task.encode(exs)


def test_options_are_checked():
    with pytest.raises(ConfigError, match="doc_stride"):
        QaTask(options={"max_length": 64, "doc_stride": 60})


def test_long_questions_are_cut_to_max_query_length():
    task = make_task(max_length=64, doc_stride=8, max_query_length=4)
    (feat,) = task.encode([{"id": "q", "question": "Where was Anna born in the year of the harbour?",
                            "context": CONTEXT}])
    assert feat["input_ids"].index(task.tokenizer.sep_token_id) == 1 + 4


def test_no_answer_wins_above_the_threshold_only():
    ex = {"id": "a", "question": "Where was Anna born?", "context": CONTEXT}
    task = make_task(max_length=64, doc_stride=16, no_answer="yes")
    (feat,) = task.encode([ex])
    n = len(feat["input_ids"])
    first = next(i for i, o in enumerate(feat["offsets"]) if o is not None)
    start, end = [0.0] * n, [0.0] * n
    start[0], end[0] = 3.0, 3.0  # null score 6
    start[first], end[first] = 2.0, 2.5  # best span score 4.5 -> margin 1.5
    (pred,) = task.decode([ex], [feat], [(start, end)])
    assert pred["answer"] == "" and pred["start"] is None
    assert pred["null_score_diff"] == pytest.approx(1.5) and pred["best_span"]["answer"] == "Anna"
    task.options = type(task.options)(**{**task.options.__dict__, "null_score_diff_threshold": 2.0})
    (pred,) = task.decode([ex], [feat], [(start, end)])
    assert pred["answer"] == "Anna" and (pred["start"], pred["end"]) == (0, 4)


def test_v1_model_rejects_unanswerable_dev_questions():
    task = make_task()
    task.fit([{"impossible": False}])
    with pytest.raises(DataError, match="dev.json: record r1 .*no answer"):
        task.check([{"id": "x", "record": "r1", "impossible": True}], "dev.json")
    task = make_task()
    task.fit([{"impossible": True}])
    assert task.no_answer


# ---- end to end ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qa_files(tmp_path_factory):
    from pathlib import Path

    folder = tmp_path_factory.mktemp("qa")
    doc = json.loads((Path(__file__).resolve().parents[1] / "tasks" / "data" / "qa" / "train.json").read_text())
    (folder / "train.json").write_text(json.dumps({"version": "1.1", "data": doc["data"][:12]}))
    (folder / "dev.json").write_text(json.dumps({"version": "1.1", "data": doc["data"][12:16]}))
    return folder


@pytest.fixture(scope="module")
def trained(qa_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "qa"
    assert main(["train", "--task", "qa", "--data", f"train={qa_files / 'train.json'}", "--data",
                 f"dev={qa_files / 'dev.json'}", "--backbone", "mini", "--max-steps", "4", "--batch-size", "16",
                 "--option", "max_length=96", "--option", "doc_stride=32", "--output-dir", str(out), "--no-progress",
                 "--set", "backbone.vocab_size=400"]) == 0
    return out


def test_train_evaluate_predict(trained, qa_files, capsys, monkeypatch):
    saved = json.loads((trained / "metrics.json").read_text())["tasks"]["qa"]
    assert set(saved) >= {"exact", "f1", "total"} and 0 <= saved["exact"] <= saved["f1"] <= 100
    assert main(["evaluate", str(trained), "--data", f"dev={qa_files / 'dev.json'}", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)["qa/dev"]
    assert scores["f1"] == pytest.approx(saved["f1"])  # the reloaded model scores what training measured

    assert main(["predict", str(trained), "--question", "Where was Anna born?", "--context", CONTEXT, "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)["prediction"]
    assert CONTEXT[pred["start"]:pred["end"]] == pred["answer"] and 0 <= pred["score"] <= 1
    assert pred == nlpkit.load(trained).predict({"question": "Where was Anna born?", "context": CONTEXT})

    lines = json.dumps({"question": "When?", "context": CONTEXT}) + "\n" + json.dumps({"question": "Who?",
                                                                                        "context": "Boris."})
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines + "\n"))
    assert main(["predict", str(trained), "--json"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_cli_errors_exit_2(trained, qa_files, tmp_path, capsys):
    bad = write(tmp_path, "bad.jsonl", json.dumps({"question": "Q?", "context": CONTEXT,
                                                   "answers": [{"text": "Lisbon", "answer_start": 3}]}) + "\n")
    long = write(tmp_path, "long.jsonl", json.dumps(long_example()) + "\n")
    cases = [
        (["train", "--task", "qa", "--data", f"train={bad}"], "bad.jsonl:1: answer 0 ('Lisbon') does not match"),
        (["train", "--task", "qa", "--data", f"train={long}", "--backbone", "mini", "--option", "windows=false",
          "--option", "max_length=48", "--option", "doc_stride=12", "--option", "max_query_length=16",
          "--set", "backbone.vocab_size=300"], "long.jsonl:1: question id 'long': the context does not fit"),
        (["predict", str(trained), "--question", "Where?"], "missing field 'context'"),
        (["predict", str(trained), "just a text"], "qa needs a question and a context"),
    ]
    for argv, message in cases:
        if argv[0] == "train":
            argv = argv + ["--output-dir", str(tmp_path / "r"), "--no-progress"]
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
