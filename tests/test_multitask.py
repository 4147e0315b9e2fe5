"""Several tasks on one backbone, one checkpoint; a plugin package joins through its entry point."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nlpkit
from nlpkit.cli import main
from nlpkit.trainer import TaskSampler

ROOT = Path(__file__).resolve().parents[1]


def test_proportional_sampler_covers_every_batch_once_per_pass():
    s = TaskSampler(["a", "b"], [3, 5], "proportional", 1.0, seed=1)
    first = [next(s) for _ in range(8)]
    assert sorted(first) == ["a"] * 3 + ["b"] * 5
    assert first != ["a"] * 3 + ["b"] * 5  # interleaved, not in blocks


def test_temperature_sampler_flattens_the_distribution():
    s = TaskSampler(["small", "big"], [10, 1000], "temperature", 2.0, seed=1)
    draws = [next(s) for _ in range(4000)]
    share = draws.count("small") / len(draws)
    expected = 10 ** 0.5 / (10 ** 0.5 + 1000 ** 0.5)  # p ∝ n^(1/T)
    assert share == pytest.approx(expected, abs=0.02)


def test_round_robin_alternates():
    s = TaskSampler(["a", "b", "c"], [1, 100, 5], "round-robin", 1.0, seed=1)
    assert [next(s) for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]


def test_sampler_state_round_trip():
    s = TaskSampler(["a", "b"], [3, 5], "proportional", 1.0, seed=3)
    for _ in range(4):
        next(s)
    state = json.loads(json.dumps(s.state_dict()))
    t = TaskSampler(["a", "b"], [3, 5], "proportional", 1.0, seed=99)
    t.load_state_dict(state)
    assert [next(s) for _ in range(10)] == [next(t) for _ in range(10)]


PLUGIN = '''
from nlpkit import register_task
from nlpkit_example_plugin_base import Base


@register_task("is-question")
class IsQuestion(Base):
    description = "toy plugin installed as its own package"
'''


def build_plugin_package(tmp_path: Path) -> Path:
    """A separate distribution whose only link to nlpkit is the 'nlpkit.tasks' entry point."""
    pkg = tmp_path / "src"
    (pkg / "nlpkit_example_plugin").mkdir(parents=True)
    (pkg / "nlpkit_example_plugin" / "__init__.py").write_text(PLUGIN)
    base = (ROOT / "examples" / "minimal_plugin.py").read_text().replace('@register_task("is-question")\n', "")
    (pkg / "nlpkit_example_plugin_base.py").write_text(base.replace("class IsQuestionTask", "class Base"))
    (pkg / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "nlpkit-example-plugin"
        version = "0.0.1"
        [project.entry-points."nlpkit.tasks"]
        is-question = "nlpkit_example_plugin:IsQuestion"
        [tool.setuptools]
        packages = ["nlpkit_example_plugin"]
        py-modules = ["nlpkit_example_plugin_base"]
    """))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(pkg)], check=True, capture_output=True)
    return target


def test_installed_plugin_package_joins_a_multitask_run(tmp_path):
    site = build_plugin_package(tmp_path)
    lines = [f"question\tWhere is gate {i} ?" if i % 2 else f"statement\tGate {i} is open ." for i in range(80)]
    (tmp_path / "q.tsv").write_text("\n".join(lines) + "\n")
    blocks = (ROOT / "tasks" / "data" / "ner" / "train.conll").read_text().split("\n\n")
    (tmp_path / "ner.conll").write_text("\n\n".join(blocks[:60]) + "\n")
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    listed = subprocess.run([sys.executable, "-m", "nlpkit", "tasks"], env=env, capture_output=True, text=True)
    assert "is-question" in listed.stdout and "plugin nlpkit-example-plugin" in listed.stdout, listed.stdout
    out = tmp_path / "run"
    run = subprocess.run(
        [sys.executable, "-m", "nlpkit", "train", "--task", "ner", "--task", "is-question",
         "--data", f"ner:train={tmp_path / 'ner.conll'}", "--data", f"ner:dev={tmp_path / 'ner.conll'}",
         "--data", f"is-question:train={tmp_path / 'q.tsv'}", "--data", f"is-question:dev={tmp_path / 'q.tsv'}",
         "--backbone", "mini", "--max-steps", "8", "--batch-size", "16", "--output-dir", str(out),
         "--set", "backbone.vocab_size=400", "--set", "trainer.sampler=round-robin"],
        env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"ner", "is-question"}
    meta = json.loads((out / "best" / "nlpkit.json").read_text())
    assert [t["name"] for t in meta["tasks"]] == ["ner", "is-question"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r for r in log if "loss/ner" in r and "loss/is-question" in r]
    assert losses, "per-task losses are logged"
    # one checkpoint, every head: predict with either task by name
    pred = subprocess.run([sys.executable, "-m", "nlpkit", "predict", str(out), "--task", "is-question",
                           "Where is it ?", "--json"], env=env, capture_output=True, text=True)
    assert pred.returncode == 0, pred.stderr
    assert json.loads(pred.stdout)["prediction"]["label"] in {"question", "statement"}


def test_two_instances_of_one_type_keep_their_own_labels(tmp_path):
    blocks = (ROOT / "tasks" / "data" / "ner" / "train.conll").read_text().split("\n\n")
    a, b = tmp_path / "a.conll", tmp_path / "b.conll"
    a.write_text("\n\n".join(blocks[:40]) + "\n")
    # the second dataset only knows persons
    b.write_text("\n\n".join("\n".join(l if " B-PER" in l or " I-PER" in l else l.split()[0] + " O"
                                       for l in blk.splitlines()) for blk in blocks[40:80]) + "\n")
    out = tmp_path / "run"
    code = main(["train", "--task", "ner:news", "--task", "ner:people", "--data", f"news:train={a}",
                 "--data", f"people:train={b}", "--data", f"people:dev={b}", "--backbone", "mini",
                 "--max-steps", "4", "--batch-size", "8", "--output-dir", str(out), "--no-progress",
                 "--set", "backbone.vocab_size=400"])
    assert code == 0
    pipe = nlpkit.load(out)
    assert pipe.task("people").labels == ["O", "B-PER", "I-PER"]
    assert len(pipe.task("news").labels) > 3
    assert pipe.model.heads["people"].classifier.out_features == 3


def _ner_slice(tmp_path, n=60):
    blocks = (ROOT / "tasks" / "data" / "ner" / "train.conll").read_text().split("\n\n")
    path = tmp_path / "ner.conll"
    path.write_text("\n\n".join(blocks[:n]) + "\n")
    return path


def test_add_a_task_to_a_single_task_checkpoint(tmp_path, monkeypatch, capsys):
    """The transfer path: a trained NER model gains a new head; backbone and NER head carry over."""
    import torch
    from safetensors.torch import load_file

    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    ner = _ner_slice(tmp_path)
    first = tmp_path / "first"
    assert main(["train", "--task", "ner", "--data", f"train={ner}", "--data", f"dev={ner}", "--backbone", "mini",
                 "--max-steps", "4", "--batch-size", "8", "--output-dir", str(first), "--no-progress",
                 "--set", "backbone.vocab_size=400"]) == 0
    q = tmp_path / "q.tsv"
    q.write_text("\n".join(f"question\tWhere is gate {i} ?" if i % 2 else f"statement\tGate {i} is open ."
                           for i in range(40)) + "\n")
    second = tmp_path / "second"
    capsys.readouterr()
    # a learning rate so small that training leaves the carried-over weights as they were
    assert main(["train", "--plugin", "minimal_plugin", "--task", "ner", "--task", "is-question",
                 "--data", f"ner:train={ner}", "--data", f"is-question:train={q}", "--data", f"is-question:dev={q}",
                 "--init-from", str(first), "--max-steps", "2", "--batch-size", "8", "--lr", "1e-12",
                 "--output-dir", str(second), "--no-progress", "--set", "trainer.weight_decay=0",
                 "--set", "trainer.max_grad_norm=null"]) == 0
    out = capsys.readouterr().out
    assert "initialised from" in out and "heads ner" in out and "new heads: is-question" in out
    a = load_file(str(first / "best" / "model.safetensors"))
    b = load_file(str(second / "best" / "model.safetensors"))
    carried = [k for k in a if k.startswith(("backbone.", "heads.ner."))]
    assert carried and all(torch.allclose(a[k], b[k], atol=1e-6) for k in carried)
    assert any(k.startswith("heads.is-question.") for k in b)
    meta = json.loads((second / "best" / "nlpkit.json").read_text())
    assert meta["backbone"]["spec"] == "mini"
    assert (second / "best" / "tokenizer" / "tokenizer.json").read_text() == \
        (first / "best" / "tokenizer" / "tokenizer.json").read_text()


def test_selection_must_name_a_task_of_the_run(tmp_path, capsys):
    ner = _ner_slice(tmp_path, 20)
    code = main(["train", "--task", "ner", "--data", f"train={ner}", "--set", "selection=sentiment",
                 "--output-dir", str(tmp_path / "r")])
    assert code == 2 and "selection" in capsys.readouterr().err


def test_selection_by_one_task(tmp_path):
    ner = _ner_slice(tmp_path, 30)
    out = tmp_path / "r"
    assert main(["train", "--task", "ner:a", "--task", "ner:b", "--data", f"a:train={ner}", "--data", f"a:dev={ner}",
                 "--data", f"b:train={ner}", "--data", f"b:dev={ner}", "--backbone", "mini", "--max-steps", "3",
                 "--batch-size", "8", "--output-dir", str(out), "--no-progress", "--set", "backbone.vocab_size=400",
                 "--set", "selection=b"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selection_score"] == pytest.approx(metrics["tasks"]["b"]["f1"])


def test_decoder_only_backbone_trains_ner_within_its_positions(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    from nlpkit.backbone import train_tokenizer

    folder = tmp_path / "gpt2"
    tok = train_tokenizer(["a small decoder only model ."] * 20, vocab_size=300)
    tok.save_pretrained(folder)
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(folder)
    ner = _ner_slice(tmp_path, 10)
    code = main(["train", "--task", "ner", "--data", f"train={ner}", "--backbone", str(folder), "--max-steps", "1",
                 "--output-dir", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 0 and "tasks.ner.options.max_length=256 is more than the 64 positions" in out
    assert (tmp_path / "r" / "best").is_dir()
