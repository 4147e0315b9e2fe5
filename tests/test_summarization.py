"""The summarization plugin: JSONL / CSV readers with field presets, bad input, ROUGE as rouge-score
computes it (Lsum on newline-split sentences), truncation warnings, and a short offline CLI run."""
from __future__ import annotations

import csv
import gzip
import json
import logging
from pathlib import Path

import pytest

import nlpkit
from nlpkit import DataError
from nlpkit.apps.cli import main as cli

from conftest import benchmark_dir


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def task(**options):
    return nlpkit.get_task_class("summarization")(options=options)


def jsonl(path: Path, records: list[dict], gz: bool = False) -> str:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


# ---- readers ---------------------------------------------------------------------------------------
def test_jsonl_fields_found_automatically(tmp_path):
    xsum = jsonl(tmp_path / "x.jsonl.gz", [{"id": 1, "document": "A long text.", "summary": "Short."}], gz=True)
    cnn = jsonl(tmp_path / "c.jsonl", [{"article": "Story.", "highlights": "One.\nTwo."}])
    assert [(e["source"], e["target"]) for e in task().read(xsum)] == [("A long text.", "Short.")]
    assert task().read(cnn)[0]["target"] == "One.\nTwo."


def test_presets_and_explicit_fields(tmp_path):
    both = jsonl(tmp_path / "b.jsonl", [{"document": "D", "summary": "S", "article": "A", "highlights": "H",
                                         "body": "B", "abstract": "X"}])
    assert (task().read(both)[0]["source"], task().read(both)[0]["target"]) == ("D", "S")
    got = task(preset="cnn_dailymail").read(both)[0]
    assert (got["source"], got["target"]) == ("A", "H")
    got = task(document_field="body", summary_field="abstract").read(both)[0]
    assert (got["source"], got["target"]) == ("B", "X")


def test_csv_with_quoted_multiline_fields(tmp_path):
    path = tmp_path / "s.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "article", "highlights"])
        w.writerow(["1", "First line.\nSecond line, with a comma.", "It has two lines."])
        w.writerow(["2", "Another story.", "Point one.\nPoint two."])
    got = task().read(str(path))
    assert [e["source"] for e in got] == ["First line.\nSecond line, with a comma.", "Another story."]
    assert [e["line"] for e in got] == [2, 4]


def test_dialogsum_reads_as_it_is():
    dialogsum = benchmark_dir("dialogsum")
    t = task()
    train = t.read(str(dialogsum / "dialogsum.train.jsonl.gz"))
    dev = t.read(str(dialogsum / "dialogsum.dev.jsonl.gz"))
    assert len(train) == 12460 and len(dev) == 500
    assert dev[0]["source"].startswith("#Person1#: Hello, how are you doing today?\n#Person2#:")
    assert dev[0]["target"].startswith("#Person2# has trouble breathing.")


# ---- bad input -------------------------------------------------------------------------------------
def test_bad_records_name_file_and_line(tmp_path, caplog):
    path = jsonl(tmp_path / "e.jsonl", [{"document": "Fine.", "summary": "Ok."}, {"document": "Text.", "summary": " "}])
    with pytest.raises(DataError, match=r"e.jsonl:2: empty target text"):
        task().read(path)
    with caplog.at_level(logging.WARNING):
        assert len(task(skip_empty=True).read(path)) == 1
    assert "skipped 1 pair" in caplog.text
    path = jsonl(tmp_path / "m.jsonl", [{"document": "Fine.", "summary": "Ok."}, {"document": "No summary."}])
    with pytest.raises(DataError, match=r"m.jsonl:2: record has no field 'summary'"):
        task().read(path)
    path = jsonl(tmp_path / "u.jsonl", [{"body": "Text.", "tldr": "T."}])
    with pytest.raises(DataError, match=r"u.jsonl:1: no document/summary fields found among \['body', 'tldr'\]"):
        task().read(path)
    (tmp_path / "r.csv").write_text("document,summary\nA text.,A summary.\nonly one cell\n")
    with pytest.raises(DataError, match=r"r.csv:3: row has fewer cells than the header"):
        task().read(str(tmp_path / "r.csv"))
    with pytest.raises(DataError, match="expected a .jsonl"):
        task().read(str(tmp_path / "r.txt"))


def test_long_documents_and_summaries_are_truncated_with_counts(caplog):
    from nlpkit.engine.backbone import Backbone

    t = task(max_length=12, max_target_length=5)
    examples = [{"source": "word " * 30, "target": "a b c d e f g h", "line": 1},
                {"source": "short text", "target": "short", "line": 2}]
    backbone = Backbone.create("mini", ["word a b c d e f g h short text"] * 5, vocab_size=300)
    t.setup(backbone)
    with caplog.at_level(logging.WARNING):
        features = t.encode(examples)
    assert "1 of 2 source(s) longer than max_length=12" in caplog.text
    assert "1 of 2 target(s) longer than max_target_length=5" in caplog.text
    assert len(features[0]["input_ids"]) == 12 and features[0]["input_ids"][-1] == backbone.tokenizer.sep_token_id
    assert len(features[0]["labels"]) == 5


# ---- metric ----------------------------------------------------------------------------------------
def test_rouge_matches_rouge_score_with_stemming_and_newline_lsum():
    from rouge_score import rouge_scorer

    from nlpkit_tasks.summarization import rouge, split_sentences

    ref = "The cats were running home. Then they slept."
    pred = "Then they slept. The cat runs home."
    scores = rouge([pred], [ref])
    direct = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    expected = direct.score(ref.replace(". ", ".\n"), pred.replace(". ", ".\n"))
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert scores[key] == pytest.approx(100 * expected[key].fmeasure)
    # stemmed, all 7 predicted words are among the 8 reference words ("cats"/"cat", "running"/"runs")
    assert scores["rouge1"] == pytest.approx(100 * 2 * 1 * (7 / 8) / (1 + 7 / 8))
    assert scores["rougeLsum"] > scores["rougeL"]  # sentence order does not matter to summary-level LCS
    assert split_sentences("One.\nTwo. Still two.") == ["One.", "Two. Still two."]
    assert split_sentences("One! Two? Three.") == ["One!", "Two?", "Three."]


def test_score_logs_generation_settings():
    t = task(num_beams=4, max_new_tokens=20)
    examples = [{"source": "d", "target": "The Lions beat the Owls 2-1 in Almora.\nAda Holm was player of the match."}]
    preds = [{"text": "The Lions beat the Owls 2-1 in Almora.\nAda Holm was player of the match.", "tokens": 17,
              "at_limit": False}]
    scores = t.score(preds, examples)
    assert scores["rougeL"] == pytest.approx(100) and scores["rougeLsum"] == pytest.approx(100)
    assert (scores["num_beams"], scores["max_new_tokens"], scores["mean_output_tokens"]) == (4, 20, 17)
    assert task().main_score == "rougeL"


def test_t5_prefix():
    from transformers import BartConfig, T5Config

    assert task().default_prefix(T5Config()) == "summarize: "
    assert task().default_prefix(BartConfig()) == ""
    assert task(prefix="tl;dr: ").options.prefix == "tl;dr: "


# ---- offline run on the embedded data --------------------------------------------------------------
def test_cli_trains_on_embedded_data_and_predicts(tmp_path, capsys, caplog):
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        code = cli(["train", "--task", "summarization", "--backbone", "mini", "--max-steps", "3", "--batch-size", "8",
                    "--option", "max_new_tokens=4", "--option", "decoder_layers=1", "--set", "backbone.vocab_size=400",
                    "--output-dir", str(run), "--no-progress"])
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())["tasks"]["summarization"]
    assert {"rouge1", "rouge2", "rougeL", "rougeLsum", "num_beams", "max_new_tokens"} <= set(metrics)
    assert metrics["max_new_tokens"] == 4 and metrics["mean_output_tokens"] <= 4
    assert "at the limit max_new_tokens=4" in caplog.text  # an untrained model babbles to the limit
    capsys.readouterr()
    doc = "The Lions played the Owls in Almora on Monday. The Lions scored 2 goals. The Owls scored 1 goal."
    assert cli(["predict", str(run), doc]) == 0
    assert capsys.readouterr().out.strip() != ""
