"""Several tasks on one backbone, one checkpoint; a plugin package joins through its entry point."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nlpkit
from nlpkit.apps.cli import main
from nlpkit.engine.task_data import TaskSampler

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

    from nlpkit.engine.backbone import train_tokenizer

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


# ---------------------------------------------------------------------------------------------------
# Multi-task quality controls (docs/multitask.md): annealed sampling, per-task schedules, task weighting,
# head learning rates, per-task best records
# ---------------------------------------------------------------------------------------------------
def test_annealed_sampler_moves_from_proportional_to_near_uniform():
    s = TaskSampler(["small", "big"], [10, 1000], "annealed", 1.0, seed=1, total=1001)
    assert s.probabilities(0)[0] == pytest.approx(10 / 1010)
    end = [10 ** 0.2, 1000 ** 0.2]
    assert s.probabilities(1000)[0] == pytest.approx(end[0] / sum(end))
    draws = [next(s) for _ in range(1001)]
    assert draws[:300].count("small") < draws[-300:].count("small")  # the small task is drawn more later
    state = json.loads(json.dumps(s.state_dict()))
    t = TaskSampler(["small", "big"], [10, 1000], "annealed", 1.0, seed=5, total=1001)
    t.load_state_dict(state)
    assert t.probabilities() == s.probabilities()


@pytest.mark.parametrize("kind", ["proportional", "temperature", "annealed", "round-robin"])
def test_sampler_plan_counts_exactly_the_steps_each_task_will_make(kind):
    s = TaskSampler(["a", "b", "c"], [3, 7, 2], kind, 2.0, seed=4, total=60)
    plan = s.plan(30, per_step=2)
    seen = {"a": 0, "b": 0, "c": 0}
    for _ in range(30):
        for name in {next(s), next(s)}:
            seen[name] += 1
    assert plan == seen
    assert sum(plan.values()) >= 30


def _lrs(schedule, opt, order):
    used = []
    for task in order:
        schedule.prepare([task])
        used.append(opt.param_groups[0]["lr"])
        schedule.step([task])
    return used


def test_per_task_schedule_gives_each_task_its_single_task_curve():
    import torch

    from nlpkit.engine.optim import RUN, TaskSchedule, make_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = TaskSchedule(opt, "linear", {"a": 2, "b": 1}, {"a": 10, "b": 4})
    order = ["a", "a", "b", "a", "b", "a", "a", "b", "a", "a", "b", "a", "a", "a"]
    used = _lrs(sched, opt, order)
    a_rates = [lr for lr, t in zip(used, order) if t == "a"]
    b_rates = [lr for lr, t in zip(used, order) if t == "b"]
    # each task's k-th update has the rate of its own 10-step (a) or 4-step (b) single-task schedule
    assert a_rates == pytest.approx([0.5, 1.0] + [1 - k / 8 for k in range(8)])
    assert b_rates == pytest.approx([1.0] + [1 - k / 3 for k in range(3)])
    state = sched.state_dict()
    assert state == {"done": {"a": 10, "b": 4}}

    # one clock: identical to the LambdaLR schedule of single-task runs
    q = torch.nn.Parameter(torch.zeros(1))
    opt2, opt3 = torch.optim.SGD([q], lr=0.5), torch.optim.SGD([q], lr=0.5)
    one = TaskSchedule(opt2, "cosine", {RUN: 3}, {RUN: 12})
    ref = make_scheduler(opt3, "cosine", 3, 12)
    mine = _lrs(one, opt2, ["a", "b"] * 6)
    theirs = []
    for _ in range(12):
        theirs.append(opt3.param_groups[0]["lr"])
        opt3.step()
        ref.step()
    assert mine == pytest.approx(theirs)
    # a LambdaLR state (checkpoints of older versions) resumes the one clock
    one.load_state_dict({"last_epoch": 5})
    assert one.done[RUN] == 5


def test_uncertainty_weighting_divides_by_running_loss_and_averages_one():
    from nlpkit.engine.task_weighting import TaskWeighting

    means: dict = {}
    w = TaskWeighting("uncertainty", {"ner": 1.0, "re": 1.0}, means)
    assert w("ner") == 1.0  # nothing seen yet
    for _ in range(200):
        w.observe("ner", 0.2)
        w.observe("re", 2.0)
    assert means["ner"] == pytest.approx(0.2) and means["re"] == pytest.approx(2.0)
    assert w("ner") / w("re") == pytest.approx(10.0)
    assert (w("ner") + w("re")) / 2 == pytest.approx(1.0)
    fixed = TaskWeighting("fixed", {"ner": 2.0, "re": 1.0}, {})
    fixed.observe("ner", 5.0)
    assert fixed("ner") == 2.0


def test_head_lr_scale_gives_heads_their_own_rate():
    import torch

    from nlpkit.engine.model import MultiTaskModel
    from nlpkit.engine.optim import make_optimizer

    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 3)

    model = MultiTaskModel(Backbone(), {"a": torch.nn.Linear(3, 2)})
    opt = make_optimizer(model, 1e-4, 0.01, head_lr_scale=10.0)
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert by_id[id(model.heads["a"].weight)]["lr"] == pytest.approx(1e-3)
    assert by_id[id(model.heads["a"].bias)]["weight_decay"] == 0.0
    assert by_id[id(model.backbone.layer.weight)]["lr"] == pytest.approx(1e-4)
    assert len(make_optimizer(model, 1e-4, 0.01).param_groups) == 2  # scale 1: the two groups as before


def test_head_lr_scale_default_is_ten_only_with_several_tasks():
    from nlpkit.engine.optim import MULTITASK_HEAD_LR_SCALE, resolve_head_lr_scale

    assert resolve_head_lr_scale(None, 1) == 1.0
    assert resolve_head_lr_scale(None, 2) == MULTITASK_HEAD_LR_SCALE == 10.0
    assert resolve_head_lr_scale(3.0, 2) == 3.0 and resolve_head_lr_scale(1.0, 3) == 1.0


def test_max_train_examples_keeps_a_seeded_sample_in_file_order(tmp_path):
    from nlpkit.engine.config import TaskEntry
    from nlpkit.engine.task_data import build_task, read_splits

    ner = _ner_slice(tmp_path, 50)
    entry = TaskEntry(type="ner", data={"train": str(ner)}, options={"max_train_examples": 12, "dev_split": 0.2})
    entry.validate("tasks.0")
    task = build_task(entry)
    data = read_splits(task, entry)
    again = read_splits(task, entry)
    assert len(data["train"]) == 12 and len(data["dev"]) == 10
    assert [e["tokens"] for e in data["train"]] == [e["tokens"] for e in again["train"]]
    dev = {tuple(e["tokens"]) for e in data["dev"]}
    assert not any(tuple(e["tokens"]) in dev for e in data["train"])


def test_joint_run_records_each_tasks_best_and_draws_all_tasks_curves(tmp_path, capsys):
    ner = _ner_slice(tmp_path, 40)
    out = tmp_path / "r"
    assert main(["train", "--task", "ner:a", "--task", "ner:b", "--data", f"a:train={ner}", "--data", f"a:dev={ner}",
                 "--data", f"b:train={ner}", "--data", f"b:dev={ner}", "--backbone", "mini", "--max-steps", "6",
                 "--batch-size", "8", "--output-dir", str(out), "--no-progress", "--set", "backbone.vocab_size=400",
                 "--set", "trainer.eval_every=2", "--set", "multitask.sampler=annealed",
                 "--set", "multitask.task_weighting=uncertainty", "--set", "multitask.head_lr_scale=5",
                 "--set", "multitask.best_per_task=true", "--set", "tasks.b.warmup_ratio=0.5"]) == 0
    said = capsys.readouterr().out
    assert "learning-rate schedule per task" in said
    metrics = json.loads((out / "metrics.json").read_text())
    assert sum(metrics["steps_per_task"].values()) == 6
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    bests = [r for r in records if "task_best" in r]
    for name in ("a", "b"):
        own = metrics["best_per_task"][name]
        evals = [r["eval"][name]["f1"] for r in records if "eval" in r]
        assert own["score"] == pytest.approx(max(evals))
        assert [r for r in bests if r["task_best"] == name][-1]["step"] == own["step"]
        saved = json.loads((out / "best-per-task" / name / "nlpkit.json").read_text())
        assert saved["step"] == own["step"] and saved["selected_for"] == name
    assert (out / "curves" / "all-tasks.png").stat().st_size > 1000


def test_per_task_adamw_keeps_each_tasks_moments_apart():
    import copy

    import torch

    from nlpkit.engine.optim import PerTaskAdamW, RUN, TaskSchedule

    p = torch.nn.Parameter(torch.zeros(2))
    opt = PerTaskAdamW([{"params": [p], "weight_decay": 0.0}], ["a", "b"], lr=0.1)
    sched = TaskSchedule(opt, "constant", {RUN: 0}, {RUN: 10})
    grads = [("a", torch.tensor([1.0, 0.0])), ("b", torch.tensor([0.0, 5.0])), ("a", torch.tensor([3.0, 0.0]))]
    for task, g in grads:
        p.grad = g.clone()
        sched.prepare([task])
        opt.use(task)
        opt.step()
        sched.step([task])
    a = opt.inner["a"].state[p]
    assert float(a["step"]) == 2 and float(opt.inner["b"].state[p]["step"]) == 1
    assert a["exp_avg"].tolist() == pytest.approx([0.9 * 0.1 * 1.0 + 0.1 * 3.0, 0.0])  # b's gradient never entered
    assert a["exp_avg_sq"][1].item() == 0.0

    # the state round-trips, and the schedule's rate still reaches the task states after loading
    q = torch.nn.Parameter(p.detach().clone())
    twin = PerTaskAdamW([{"params": [q], "weight_decay": 0.0}], ["a", "b"], lr=0.1)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))  # as from a file: no tensor shared with opt
    for group in (opt.param_groups[0], twin.param_groups[0]):
        group["lr"] = 0.01
    for o, param in ((opt, p), (twin, q)):
        param.grad = torch.tensor([1.0, 1.0])
        o.use("b")
        o.step()
    assert torch.equal(p, q)
    with pytest.raises(ValueError, match="one AdamW state"):
        twin.load_state_dict(torch.optim.AdamW([q]).state_dict())
