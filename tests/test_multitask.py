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
