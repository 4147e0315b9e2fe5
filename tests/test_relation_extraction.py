"""Relation extraction: readers, marker handling, the official SemEval-2010 Task 8 score, a tiny run."""
import gzip
import json
import re
import shutil
from collections import Counter

import pytest

from conftest import GOLDEN, benchmark_dir, tiny_config
import nlpkit
from nlpkit import ConfigError, DataError
from nlpkit.engine.backbone import train_tokenizer
from nlpkit.apps.cli import main
from nlpkit.sdk.data import carve_dev_split
from nlpkit.sdk.heads import EntityPairHead
from nlpkit_tasks.relation_extraction import (RelationExtractionTask, marked_text, official_scores, parse_marked,
                                              read_answer_file, read_semeval)

#: the official scorer's example answers and outputs, and the first 120 training examples (CC BY 3.0; README there)
SEMEVAL_GOLDEN = GOLDEN / "semeval2010_task8"
VECTORS = SEMEVAL_GOLDEN / "scorer-vectors"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


SEMEVAL_SAMPLE = (
    '1\t"The <e1>company</e1> fabricates plastic <e2>chairs</e2>."\r\nProduct-Producer(e2,e1)\r\nComment:\r\n\r\n'
    '2\t"The <e1>child</e1> was wrapped into the <e2>cradle</e2>."\nOther\n\n'  # no Comment line
    '3\t"A <e1>burst</e1> has been caused by water hammer <e2>pressure</e2>."\nCause-Effect(e2,e1)\nComment: x\n'
)


# ---- reading -------------------------------------------------------------------------------------
def test_parse_marked_gives_plain_text_and_spans():
    text, e1, e2 = parse_marked("The <e1>company</e1> fabricates plastic <e2>chairs</e2> .")
    assert text == "The company fabricates plastic chairs ."
    assert text[e1[0]:e1[1]] == "company" and text[e2[0]:e2[1]] == "chairs"
    text, e1, e2 = parse_marked("<E2>Tea</E2> comes from <e1>China</e1>")  # e2 first, upper case
    assert (text[e1[0]:e1[1]], text[e2[0]:e2[1]]) == ("China", "Tea")


@pytest.mark.parametrize("bad, message", [
    ("The company fabricates <e2>chairs</e2> .", "<e1>...</e1> missing"),
    ("The <e1>company fabricates <e2>chairs</e2> .", "<e1> is never closed"),
    ("The company</e1> fabricates <e2>chairs</e2> .", "</e1> without an opening"),
    ("The <e1>a</e1> <e1>b</e1> <e2>c</e2>", "<e1> occurs twice"),
    ("The <e1> </e1> fabricates <e2>chairs</e2> .", "empty"),
    ("The <e1>big <e2>company</e2></e1> .", "overlap"),
])
def test_missing_or_unbalanced_markers_are_data_errors(bad, message):
    with pytest.raises(DataError, match=re.escape(message)):
        parse_marked(bad, "f.txt", 7)
    with pytest.raises(DataError, match=r"^f.txt:7: "):
        parse_marked(bad, "f.txt", 7)


def test_semeval_reader_handles_crlf_optional_comment_and_gzip(tmp_path):
    path = tmp_path / "train.txt.gz"
    with gzip.open(path, "wt") as f:
        f.write(SEMEVAL_SAMPLE)
    examples = read_semeval(str(path))
    assert [ex["label"] for ex in examples] == ["Product-Producer(e2,e1)", "Other", "Cause-Effect(e2,e1)"]
    assert [ex["line"] for ex in examples] == [1, 5, 8]
    first = examples[0]
    assert first["text"] == "The company fabricates plastic chairs."
    assert first["text"][slice(*first["head"])] == "company" and first["text"][slice(*first["tail"])] == "chairs"


@pytest.mark.parametrize("text, line, message", [
    ('1\t"The <e1>a</e1> and <e2>b</e2>."\nCause-Effect(e1, e2)\n', 2, "expected the relation"),
    ('1\t"The <e1>a</e1> and <e2>b</e2>."\n', 2, "expected the relation"),
    ('1\t"The <e1>a</e1> and <e2>b</e2>."\nOther\n\nnot a sentence line\n', 4, "expected a sentence line"),
    ('1\t"The <e1>a</e1> and b."\nOther\n', 1, "<e2>...</e2> missing"),
])
def test_semeval_reader_errors_name_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, "bad.txt", text)
    with pytest.raises(DataError, match=rf"bad.txt:{line}: .*{re.escape(message)}"):
        read_semeval(path)


def test_reads_the_semeval_release_file_as_it_is():
    examples = read_semeval(str(benchmark_dir("semeval2010_task8") / "TRAIN_FILE.TXT.gz"))
    assert len(examples) == 8000
    counts = Counter(ex["label"] for ex in examples)
    assert counts["Other"] == 1410 and counts["Entity-Destination(e2,e1)"] == 1 and len(counts) == 19
    first = examples[0]
    assert first["text"][slice(*first["head"])] == "configuration"
    assert first["text"][slice(*first["tail"])] == "elements"
    assert first["label"] == "Component-Whole(e2,e1)" and examples[-1]["line"] == 31997


def test_jsonl_reader_takes_spans_dicts_and_inline_markers(tmp_path):
    rows = [
        {"text": "Tea comes from China .", "head": [15, 20], "tail": {"start": 0, "end": 3, "text": "Tea"},
         "label": "Entity-Origin(e2,e1)"},
        {"text": "The <e1>burst</e1> was caused by <e2>pressure</e2> .", "relation": "Cause-Effect(e2,e1)", "id": 9},
    ]
    path = write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    examples = RelationExtractionTask().read(path)
    assert examples[0]["text"][slice(*examples[0]["head"])] == "China"
    assert examples[1]["text"] == "The burst was caused by pressure ." and examples[1]["id"] == "9"
    assert [ex["label"] for ex in examples] == ["Entity-Origin(e2,e1)", "Cause-Effect(e2,e1)"]


@pytest.mark.parametrize("record, message", [
    ({"text": "", "head": [0, 1], "tail": [2, 3], "label": "Other"}, "empty or missing \"text\""),
    ({"text": "Tea from China", "head": [0, 3], "label": "Other"}, "both \"head\" and \"tail\""),
    ({"text": "Tea from China", "head": [0, 3], "tail": [9, 30], "label": "Other"}, "outside the text"),
    ({"text": "Tea from China", "head": [0, 3], "tail": [1, 5], "label": "Other"}, "overlap"),
    ({"text": "Tea from China", "head": {"start": 0, "end": 3, "text": "Tee"}, "tail": [9, 14], "label": "Other"},
     "not its text"),
    ({"text": "Tea from China", "head": [0, 3], "tail": [9, 14]}, "missing or empty \"label\""),
    ({"text": "Tea from China", "label": "Other"}, "character spans, or <e1>"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, record, message):
    good = {"text": "Tea from China", "head": [0, 3], "tail": [9, 14], "label": "Other"}
    path = write(tmp_path, "d.jsonl", json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=rf"d.jsonl:2: .*{re.escape(message)}"):
        RelationExtractionTask().read(path)


def test_fit_keeps_directions_and_adds_the_mirror_of_each_directed_label():
    task = RelationExtractionTask()
    task.fit([{"label": "Cause-Effect(e1,e2)"}, {"label": "Other"}])
    assert task.labels == ["Cause-Effect(e1,e2)", "Cause-Effect(e2,e1)", "Other"]
    with pytest.raises(DataError, match=r"dev.txt:12: relation 'Message-Topic\(e1,e2\)' never occurred"):
        task.check([{"label": "Message-Topic(e1,e2)", "line": 12}], "dev.txt")


# ---- the official score --------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_official_score_matches_the_perl_scorer_outputs(n):
    gz = ".gz" if n == 2 else ""  # the 8,000-line pair is shipped gzipped
    key = read_answer_file(str(VECTORS / f"answer_key{n}.txt{gz}"))
    proposed = read_answer_file(str(VECTORS / f"proposed_answer{n}.txt{gz}"))
    printed = (VECTORS / f"result_scores{n}.txt").read_text()
    official = float(re.findall(r"macro-averaged F1 = +([\d.]+)%", printed)[-1])
    section = printed.split("TAKING DIRECTIONALITY INTO ACCOUNT -- OFFICIAL")[1]
    micro = float(re.search(r"Micro-averaged result \(excluding Other\):\nP = .*F1 = +([\d.]+)%", section).group(1))
    per_type = {name: float(f1) for name, f1 in re.findall(r"^ *(\S+) : .*F1 = +([\d.]+)%$", section, re.M)}
    scores = official_scores(key, proposed)
    assert scores["macro_f1"] == pytest.approx(official, abs=0.01)
    assert scores["micro_f1"] == pytest.approx(micro, abs=0.01)
    for name, f1 in per_type.items():
        assert scores["per_type"]["Other" if name == "_Other" else name]["f1"] == pytest.approx(f1, abs=0.01)


def test_shipped_scorer_vectors_and_excerpt_are_the_release_unchanged():
    release = benchmark_dir("semeval2010_task8")
    shipped = sorted(p.name for p in VECTORS.iterdir())
    assert len(shipped) == 13
    for name in shipped:
        ours = VECTORS / name
        data = gzip.decompress(ours.read_bytes()) if name.endswith(".gz") else ours.read_bytes()
        assert data == (release / "scorer-vectors" / name.removesuffix(".gz")).read_bytes(), name
    lines = gzip.decompress((release / "TRAIN_FILE.TXT.gz").read_bytes()).splitlines(keepends=True)
    assert (SEMEVAL_GOLDEN / "TRAIN_FILE.first120.TXT").read_bytes() == b"".join(lines[:480])


def test_wrong_direction_counts_against_precision_and_recall():
    key = {1: "Cause-Effect(e1,e2)", 2: "Cause-Effect(e1,e2)", 3: "Other"}
    scores = official_scores(key, {1: "Cause-Effect(e1,e2)", 2: "Cause-Effect(e2,e1)", 3: "Other"})
    assert scores["per_type"]["Cause-Effect"]["precision"] == pytest.approx(50.0)
    assert scores["per_type"]["Cause-Effect"]["recall"] == pytest.approx(50.0)
    assert scores["macro_f1"] == pytest.approx(50.0)  # Other is left out of the average
    skipped = official_scores(key, {1: "Cause-Effect(e1,e2)"})  # skipped ids lower recall only
    assert skipped["per_type"]["Cause-Effect"]["precision"] == 100.0 and skipped["macro_f1"] == pytest.approx(200 / 3)


def test_answer_files_are_checked_like_the_official_scorer(tmp_path):
    with pytest.raises(DataError, match=r"proposed_answer4.txt:2: .*Message-Topc"):
        read_answer_file(str(VECTORS / "proposed_answer4.txt"))
    dup = write(tmp_path, "dup.txt", "1\tOther\n1\tOther\n")
    with pytest.raises(DataError, match=r"dup.txt:2: ID 1 is already defined"):
        read_answer_file(dup)
    with pytest.raises(DataError, match="missing from the key"):
        official_scores({1: "Other"}, {2: "Other"})


# ---- encoding ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def task():
    class FakeBackbone:
        tokenizer = train_tokenizer(["The company fabricates plastic chairs and tables ."] * 20, vocab_size=300)
        kind = "encoder"

    t = RelationExtractionTask(options={"max_length": 16})
    t.fit([{"label": "Product-Producer(e2,e1)"}, {"label": "Other"}])
    FakeBackbone.tokenizer.add_special_tokens({"additional_special_tokens": t.special_tokens()})
    t.setup(FakeBackbone())
    return t


def test_markers_are_single_tokens_and_positions_point_at_the_starts(task):
    ex = task.parse_input("The <e1>company</e1> fabricates plastic <e2>chairs</e2> .")
    assert marked_text(ex) == "The[E1] company[/E1] fabricates plastic[E2] chairs[/E2] ."
    feature = task.encode([ex])[0]
    ids = feature["input_ids"]
    tokens = task.tokenizer.convert_ids_to_tokens(ids)
    assert [tokens[p] for p in feature["entity_positions"]] == ["[E1]", "[E2]"]
    assert tokens.count("[/E1]") == 1 and tokens.count("[/E2]") == 1
    assert "\u0120" not in tokens  # no lone-space token from the byte-level tokenizer around a marker
    adjacent = task.parse_input({"text": "tea  coffee", "head": [0, 3], "tail": [5, 11]})
    assert marked_text(adjacent) == "[E1]tea[/E1][E2]  coffee[/E2]"


def test_long_sentences_are_cut_around_both_markers(task):
    filler = " ".join(["tables"] * 40)
    for text in (f"{filler} The <e1>company</e1> fabricates <e2>chairs</e2> .",
                 f"The <e1>company</e1> {filler} fabricates {filler} <e2>chairs</e2> ."):
        feature = task.encode([task.parse_input(text)])[0]
        tokens = task.tokenizer.convert_ids_to_tokens(feature["input_ids"])
        assert len(tokens) == 16 and tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
        assert [tokens[p] for p in feature["entity_positions"]] == ["[E1]", "[E2]"]


def test_entity_pair_head_concatenates_the_marker_states():
    import torch

    class Encoder(torch.nn.Module):
        def encode(self, input_ids, attention_mask, token_type_ids=None):
            return torch.nn.functional.one_hot(input_ids, 4).float()

    head = EntityPairHead(hidden_size=4, num_labels=3, dropout=0.0)
    batch = {"input_ids": torch.tensor([[0, 1, 2, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "entity_positions": torch.tensor([[1, 3]]), "labels": torch.tensor([2])}
    out = head(Encoder(), batch)
    expected = head.classifier(torch.tanh(head.dense(torch.tensor([[0., 1, 0, 0, 0, 0, 0, 1]]))))
    assert torch.allclose(out["logits"], expected) and out["loss"].item() > 0


# ---- dev split -----------------------------------------------------------------------------------
def test_dev_split_is_deterministic_and_disjoint():
    items = list(range(100))
    train, dev = carve_dev_split(items, 0.1, seed=3)
    assert len(dev) == 10 and sorted(train + dev) == items and train == sorted(train)
    assert carve_dev_split(items, 0.1, seed=3) == (train, dev)
    assert carve_dev_split(items, 0.1, seed=4)[1] != dev


# ---- end to end ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def semeval_small(tmp_path_factory):
    """The first 120 examples of the real training file, in its own format (its first 480 lines, shipped)."""
    path = tmp_path_factory.mktemp("re") / "train.txt"
    shutil.copyfile(SEMEVAL_GOLDEN / "TRAIN_FILE.first120.TXT", path)
    return path


@pytest.fixture(scope="module")
def trained(semeval_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "re"
    code = main(["train", "--task", "relation-extraction", "--data", f"train={semeval_small}",
                 "--option", "dev_split=0.25", "--option", "dev_split_seed=1", "--backbone", "mini",
                 "--max-steps", "4", "--batch-size", "16", "--output-dir", str(out), "--no-progress",
                 "--set", "backbone.vocab_size=500"])
    assert code == 0
    return out


def test_train_on_carved_split_then_evaluate_and_predict(trained, semeval_small, capsys):
    metrics = json.loads((trained / "metrics.json").read_text())["tasks"]["relation-extraction"]
    assert 0 <= metrics["macro_f1"] <= 100 and "micro_f1" in metrics
    meta = json.loads((trained / "best" / "nlpkit.json").read_text())
    labels = meta["tasks"][0]["state"]["labels"]
    assert "Cause-Effect(e1,e2)" in labels and "Cause-Effect(e2,e1)" in labels
    capsys.readouterr()
    assert main(["evaluate", str(trained), "--data", f"test={semeval_small}", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)["relation-extraction/test"]
    assert set(scores["per_type"]) <= {lab.split("(")[0] for lab in labels}
    assert main(["predict", str(trained), "The <e1>company</e1> fabricates plastic <e2>chairs</e2> ."]) == 0
    line = capsys.readouterr().out.strip()
    pipe = nlpkit.load(trained)
    pred = pipe.predict("The <e1>company</e1> fabricates plastic <e2>chairs</e2> .")
    assert pred["relation"] in labels and (pred["e1"], pred["e2"]) == ("company", "chairs")
    assert line == pipe.format(pred) and line.startswith(pred["relation"])
    if pred["relation"] != "Other":
        assert pred["direction"] in ("e1->e2", "e2->e1") and '"company" (e1)' in line and '"chairs" (e2)' in line


def test_format_prediction_names_roles_and_direction():
    task = RelationExtractionTask()
    pred = {"relation": "Product-Producer(e2,e1)", "e1": "company", "e2": "chairs", "probability": 0.9}
    assert task.format_prediction(pred) == \
        'Product-Producer(e2,e1): Product = "chairs" (e2) -> Producer = "company" (e1)  (0.90)'
    assert task.format_prediction({**pred, "relation": "Other"}).startswith("Other: no directed relation")


def test_cli_exits_2_on_bad_markers_and_unknown_relations(tmp_path, trained, capsys):
    bad = write(tmp_path, "bad.txt", '1\t"The <e1>company fabricates <e2>chairs</e2>."\nOther\n')
    assert main(["train", "--task", "relation-extraction", "--data", f"train={bad}", "--backbone", "mini",
                 "--max-steps", "1", "--output-dir", str(tmp_path / "x"), "--no-progress"]) == 2
    assert f"{bad}:1: <e1> is never closed" in capsys.readouterr().err
    unknown = write(tmp_path, "dev.jsonl", json.dumps({"text": "<e1>a</e1> b <e2>c</e2>", "label": "Made-Up(e1,e2)"}) + "\n")
    assert main(["evaluate", str(trained), "--data", f"test={unknown}"]) == 2
    assert f"{unknown}:1: relation 'Made-Up(e1,e2)' never occurred" in capsys.readouterr().err
    assert main(["predict", str(trained), "The company fabricates <e2>chairs</e2> ."]) == 2
    assert "<e1>...</e1> missing" in capsys.readouterr().err


def test_dev_split_and_a_dev_file_together_are_refused(tmp_path, semeval_small):
    cfg = tiny_config("relation-extraction", tmp_path, {"train": str(semeval_small), "dev": str(semeval_small)})
    cfg["tasks"][0]["options"] = {"dev_split": 0.1}
    with pytest.raises(ConfigError, match="dev_split=0.1 carves a dev set"):
        nlpkit.train(cfg)


def test_hub_rows_with_marked_sentences_and_class_ids():
    datasets = pytest.importorskip("datasets", reason="the optional hub extra is not installed")
    names = ["Cause-Effect(e1,e2)", "Other"]
    rows = datasets.Dataset.from_dict(
        {"sentence": ["The <e1>rain</e1> caused the <e2>flood</e2> ."], "relation": [0]},
        features=datasets.Features({"sentence": datasets.Value("string"), "relation": datasets.ClassLabel(names=names)}))
    (ex,) = RelationExtractionTask().read_hub(rows, "hub:x:train")
    assert ex["label"] == "Cause-Effect(e1,e2)" and ex["text"][slice(*ex["head"])] == "rain"


def test_dev_split_must_be_a_fraction():
    with pytest.raises(ConfigError, match="dev_split: must be in"):
        RelationExtractionTask(options={"dev_split": 1.0})
