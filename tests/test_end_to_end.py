"""Train -> evaluate -> predict through the CLI and the Python API on a from-scratch tiny model."""
import json
import sys
from pathlib import Path

import pytest

import nlpkit
from nlpkit.apps.cli import main

ROOT = Path(__file__).resolve().parents[1]
NER_TRAIN = ROOT / "tasks" / "data" / "ner" / "train.conll"


@pytest.fixture(scope="module")
def ner_files(tmp_path_factory):
    """The first 120 sentences of the embedded data: enough for a smoke run."""
    folder = tmp_path_factory.mktemp("ner")
    blocks = NER_TRAIN.read_text().split("\n\n")
    (folder / "train.conll").write_text("\n\n".join(blocks[:120]) + "\n")
    (folder / "dev.conll").write_text("\n\n".join(blocks[120:160]) + "\n")
    return folder


@pytest.fixture(scope="module")
def trained(ner_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "ner"
    code = main(["train", "--task", "ner", "--data", f"train={ner_files / 'train.conll'}",
                 "--data", f"dev={ner_files / 'dev.conll'}", "--backbone", "mini", "--max-steps", "6",
                 "--batch-size", "16", "--output-dir", str(out), "--no-progress", "--set", "backbone.vocab_size=500"])
    assert code == 0
    return out


def test_run_folder_is_self_contained(trained):
    best = trained / "best"
    meta = json.loads((best / "nlpkit.json").read_text())
    assert meta["backbone"]["spec"] == "mini"
    assert meta["tasks"][0]["type"] == "ner" and meta["tasks"][0]["state"]["labels"][0] == "O"
    assert (best / "model.safetensors").is_file()
    assert (best / "tokenizer" / "tokenizer.json").is_file()
    assert (best / "backbone" / "config.json").is_file()
    metrics = json.loads((trained / "metrics.json").read_text())
    for key in ("train_samples_per_s", "train_tokens_per_s", "wall_time_s", "peak_rss_mb"):
        assert metrics[key] > 0
    assert metrics["precision"] in ("fp32", "bf16", "fp16")  # the names users pass, not Accelerate's "no"
    assert 0 <= metrics["tasks"]["ner"]["f1"] <= 100
    log = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    assert any("eval" in rec for rec in log)


def test_evaluate_cli_prints_overall_and_per_type(trained, ner_files, capsys):
    assert main(["evaluate", str(trained), "--data", f"test={ner_files / 'dev.conll'}", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)["ner/test"]
    assert set(scores["per_type"]) <= {"PER", "LOC", "ORG", "MISC"}
    saved = json.loads((trained / "metrics.json").read_text())["tasks"]["ner"]
    assert scores["f1"] == pytest.approx(saved["f1"])  # reloaded model scores what training measured


def test_predict_cli_and_python_agree(trained, capsys, monkeypatch):
    text = "Anna Okafor visited Lisbon ."
    assert main(["predict", str(trained), text, "--json"]) == 0
    cli = json.loads(capsys.readouterr().out.splitlines()[0])["prediction"]
    pipe = nlpkit.load(trained)
    (py,) = pipe.predict([text])
    assert cli == py
    for ent in py["entities"]:
        assert text[ent["start"]:ent["end"]] == ent["text"]
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(text + "\n\nSven Becker said so .\n"))
    assert main(["predict", str(trained)]) == 0
    assert capsys.readouterr().out.strip()


def test_errors_exit_2_without_traceback(ner_files, tmp_path, capsys):
    cases = [
        (["train", "--task", "ner", "--data", f"train={tmp_path / 'missing.conll'}"], "file not found"),
        (["train", "--task", "ner", "--backbone", str(tmp_path / "no-such-model")], "does not exist"),
        (["train", "--task", "ner", "--backbone", "no-such-org/no-such-model"], "unknown backbone"),
        (["train", "--task", "ner", "--set", "trainer.lr=abc"], "trainer.lr"),
        (["train", "--task", "ner", "--set", "trainer.bogus=1"], "unknown key trainer.bogus"),
        (["evaluate", str(tmp_path), "--data", "test=x"], "not an nlpkit checkpoint"),
    ]
    empty = tmp_path / "empty.conll"
    empty.write_text("\n\n")
    cases.append((["train", "--task", "ner", "--data", f"train={empty}"], "no examples"))
    for argv, message in cases:
        assert main(argv + ["--output-dir", str(tmp_path / "r")] if argv[0] == "train" else argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_unseen_dev_label_is_rejected(ner_files, tmp_path, capsys):
    dev = tmp_path / "dev.conll"
    dev.write_text("Kyoto B-LOC\nUnion B-UNION\n")
    code = main(["train", "--task", "ner", "--data", f"train={ner_files / 'train.conll'}", "--data", f"dev={dev}",
                 "--backbone", "mini", "--output-dir", str(tmp_path / "r")])
    assert code == 2
    assert "dev.conll:2: tag 'B-UNION'" in capsys.readouterr().err


def test_custom_plugin_trains_without_touching_the_core(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    lines = []
    for i in range(60):
        lines.append(f"question\tWhere is station {i} ?")
        lines.append(f"statement\tStation {i} is near the river .")
    data = tmp_path / "lines.tsv"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    assert main(["train", "--plugin", "minimal_plugin", "--task", "is-question", "--data", f"train={data}",
                 # 60 steps: at 30 a from-scratch mini model learned this in 2 of 4 seeds (with either dropout
                 # kernel), at 60 in 4 of 4
                 "--data", f"dev={data}", "--backbone", "mini", "--max-steps", "60", "--batch-size", "16",
                 "--lr", "3e-3", "--output-dir", str(out), "--no-progress", "--set", "backbone.vocab_size=300"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tasks"]["is-question"]["accuracy"] > 90
    pipe = nlpkit.load(out)
    assert pipe.predict("Where is the bridge ?")["label"] == "question"
