"""The training loop: schedules, optimizer groups, data order, exact resume, safe checkpoints, bad losses.

The three acceptance tests (kill and resume, kill during a save, non-finite losses) train the "mini"
preset on 64 sentences of the embedded NER data on one CPU thread, so a run is a few seconds and two
runs with one seed give bit-identical weights.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import nlpkit
from nlpkit.engine import checkpoint
from nlpkit.apps.cli import main
from nlpkit.engine.config import RunConfig
from nlpkit.sdk.errors import CheckpointError, ConfigError
from nlpkit.engine.optim import make_optimizer, make_scheduler
from nlpkit.engine.run_log import RunLog
from nlpkit.engine.task_data import TaskSampler, TaskStream, data_fingerprint
from nlpkit.engine.train_state import LoopState, check_resume, rng_state, set_rng_state
from nlpkit.engine.trainer import train

from conftest import run_sections

ROOT = Path(__file__).resolve().parents[1]
NER_TRAIN = ROOT / "tasks" / "data" / "ner" / "train.conll"


# ---------------------------------------------------------------------------------------------------
# Fixtures: tiny data, one thread, the reference (uninterrupted) run
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the same arithmetic order in this process and in the subprocesses."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ner_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ner")
    blocks = [b for b in NER_TRAIN.read_text().split("\n\n") if b.strip() and not b.startswith("-DOCSTART-")]
    (folder / "train.conll").write_text("\n\n".join(blocks[:64]) + "\n")
    (folder / "dev.conll").write_text("\n\n".join(blocks[200:216]) + "\n")
    return folder


def run_config(ner_files: Path, out: Path, **trainer) -> dict:
    """Two NER instances (so the task sampler matters), dropout on (so the RNG matters), accumulation 2.

    64 sentences / batch 8 = 8 batches per task, 16 per pass, 8 optimizer steps per epoch.
    """
    data = {"train": str(ner_files / "train.conll"), "dev": str(ner_files / "dev.conll")}
    return {
        "tasks": [{"type": "ner", "name": "ner_a", "data": data},
                  {"type": "ner", "name": "ner_b", "data": data, "options": {"max_length": 48}}],
        "backbone": {"spec": "mini", "vocab_size": 400},
        **run_sections(**{"max_steps": 12, "batch_size": 8, "grad_accum": 2, "lr": 3e-3, "eval_every": 4,
                          "save_every": 4, "log_every": 3, "keep_last": 2, "patience": 5, "progress": False, "cpu": True,
                          "tensorboard": False, "plots": False,
                          # seed 3: the best dev score comes after the step-4 checkpoint the kill tests resume from
                          # (with the numpy batch order of nlpkit.sdk.data, seed 42's best was step 4 itself)
                          "seed": 3, **trainer}),
        "output_dir": str(out),
    }


# A real process, really killed: it counts the batches it takes and SIGKILLs itself at the N-th
# (KILL_BATCH), or while the N-th step checkpoint is half written (KILL_SAVE).
KILLER = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    from nlpkit.engine import trainer
    config = json.loads(open(sys.argv[1]).read())
    mode, n = sys.argv[2], int(sys.argv[3])
    calls = {"batches": 0, "saves": 0}
    if mode == "batch":
        take = trainer.TaskStream.next_indices
        def next_indices(self):
            calls["batches"] += 1
            if calls["batches"] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return take(self)
        trainer.TaskStream.next_indices = next_indices
    else:
        import safetensors.torch as st
        save_model = st.save_model
        def dying_save(model, filename, *args, **kwargs):
            if "checkpoints" in filename:
                calls["saves"] += 1
                if calls["saves"] == n:
                    save_model(model, filename, *args, **kwargs)
                    size = os.path.getsize(filename)
                    with open(filename, "r+b") as f:  # half the file on disk, then the power cut
                        f.truncate(size // 2)
                        f.flush(); os.fsync(f.fileno())
                    os.kill(os.getpid(), signal.SIGKILL)
            return save_model(model, filename, *args, **kwargs)
        st.save_model = dying_save
    trainer.train(config)
""")


def run_killed(tmp_path: Path, config: dict, mode: str, n: int) -> subprocess.CompletedProcess:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(script), str(cfg), mode, str(n)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-3000:])
    return proc


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / checkpoint.WEIGHTS_FILE))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def comparable_log(run: Path) -> list[dict]:
    """log.jsonl without wall-clock fields and resume/checkpoint bookkeeping."""
    out = []
    for line in (run / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "resumed_from" in rec or "checkpoint" in rec:
            continue
        out.append({k: v for k, v in rec.items() if k != "time" and not k.startswith(("samples_per_s", "tokens_per_s"))})
    return out


RESULT_KEYS = ("tasks", "best_step", "selection_score", "steps", "stop_reason", "skipped_steps")


@pytest.fixture(scope="module")
def reference(ner_files, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    torch.set_num_threads(1)
    train(run_config(ner_files, out))
    return out


# ---------------------------------------------------------------------------------------------------
# Acceptance 1: SIGKILL in the middle of an epoch, resume, same weights and metrics
# ---------------------------------------------------------------------------------------------------
def test_kill_mid_epoch_and_resume_equals_uninterrupted_run(reference, ner_files, tmp_path, capsys):
    out = tmp_path / "run"
    # 13th batch = first micro-batch of step 7 (2 per step), in the first 8-step epoch; the newest
    # checkpoint is step 4, and the log already holds step 6 (log_every 3), which the resume must replay
    run_killed(tmp_path, run_config(ner_files, out), "batch", 13)
    assert [checkpoint.step_of(p) for p in checkpoint.list_training_checkpoints(out)] == [4]
    assert not (out / "metrics.json").exists()
    assert 6 in [json.loads(line).get("step") for line in (out / "log.jsonl").read_text().splitlines()]
    state = checkpoint.read_training_state(out / "checkpoints" / "step-4")
    assert state["streams"]["ner_a"]["epoch"] == 0 and 0 < state["streams"]["ner_a"]["position"] < 8

    # resume through the CLI with nothing but the run folder: the checkpoint's own config is used
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "resuming from" in printed and "step-4 (step 4)" in printed

    final = checkpoint.latest_training(out)
    assert checkpoint.step_of(final) == 12
    assert_same_weights(final, checkpoint.latest_training(reference))
    assert_same_weights(out / "best", reference / "best")
    got, want = json.loads((out / "metrics.json").read_text()), json.loads((reference / "metrics.json").read_text())
    assert {k: got[k] for k in RESULT_KEYS} == {k: want[k] for k in RESULT_KEYS}
    assert want["best_step"] > 4 and want["selection_score"] > 0  # the best came after the kill's checkpoint
    assert got["resumed_from"] == [4] and want["resumed_from"] == []
    assert comparable_log(out) == comparable_log(reference)  # the replayed steps are logged once
    assert json.loads((out / "checkpoints" / "step-12" / checkpoint.STATE_FILE).read_text())["stop_reason"] == "budget"

    # the same command again: the run is complete, nothing is trained, nothing changes
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert "already complete at step 12" in capsys.readouterr().out
    assert_same_weights(checkpoint.latest_training(out), final)


def old_fingerprint(examples) -> str:
    """The data fingerprint as nlpkit computed it before its FINGERPRINT_VERSION (written out here, not imported)."""
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(json.dumps(ex, sort_keys=True, ensure_ascii=False, default=str).encode())
        digest.update(b"\n")
    return f"{len(examples)}:{digest.hexdigest()[:16]}"


def test_a_checkpoint_with_an_older_data_fingerprint_resumes_exactly(reference, ner_files, tmp_path, capsys):
    """Checkpoints written before examples were stored with orjson hold the json module's hash of the data:
    they resume (same weights as the uninterrupted run), and one whose old hash does not match is refused."""
    from nlpkit_tasks.ner import read_conll

    out = tmp_path / "run"
    run_killed(tmp_path, run_config(ner_files, out), "batch", 13)
    state_file = out / "checkpoints" / "step-4" / checkpoint.STATE_FILE
    state = json.loads(state_file.read_text())
    assert all(v.startswith("v2:") for v in state["data"].values())
    old = old_fingerprint(read_conll(str(ner_files / "train.conll")))
    kept = state_file.read_text()
    state_file.write_text(json.dumps({**state, "data": {"ner_a": old[:-1] + ("0" if old[-1] != "0" else "1"),
                                                        "ner_b": old}}))
    assert main(["train", "--resume", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "training data of task 'ner_a' is not the data the checkpoint was trained on" in err, err
    assert json.loads(kept)["data"] == state["data"]
    state_file.write_text(json.dumps({**state, "data": {"ner_a": old, "ner_b": old}}))
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert_same_weights(checkpoint.latest_training(out), checkpoint.latest_training(reference))
    # the checkpoints the resumed run wrote keep the form they resumed from
    assert json.loads((checkpoint.latest_training(out) / checkpoint.STATE_FILE).read_text())["data"]["ner_a"] == old


def test_multitask_controls_resume_exactly(ner_files, tmp_path, capsys):
    """Per-task AdamW states, uncertainty weights, annealed sampling and per-task schedules are all part of
    the saved state: a killed run resumed equals the uninterrupted one."""
    extra = {"optimizer_state": "per-task", "task_weighting": "uncertainty", "sampler": "annealed",
             "head_lr_scale": 3.0}
    ref = tmp_path / "ref"
    torch.set_num_threads(1)
    train(run_config(ner_files, ref, **extra))
    out = tmp_path / "run"
    run_killed(tmp_path, run_config(ner_files, out, **extra), "batch", 13)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert_same_weights(checkpoint.latest_training(out), checkpoint.latest_training(ref))
    got, want = json.loads((out / "metrics.json").read_text()), json.loads((ref / "metrics.json").read_text())
    assert {k: got[k] for k in RESULT_KEYS} == {k: want[k] for k in RESULT_KEYS}
    assert comparable_log(out) == comparable_log(ref)
    state = torch.load(checkpoint.latest_training(ref) / "training_state.pt", weights_only=True)
    assert set(state["optimizer"]["per_task"]) == {"ner_a", "ner_b"}
    assert want["optimizer_state_bytes_per_process"] > 0


def test_resume_refuses_an_incompatible_config(reference, ner_files, tmp_path, capsys):
    for change, message in [({"backbone": {"spec": "tiny", "vocab_size": 400}}, "backbone.spec was 'mini', now 'tiny'"),
                            ({"trainer_batch_size": 16}, "trainer.batch_size was 8, now 16"),
                            ({"per_task": True}, "multitask.optimizer_state was 'shared', now 'per-task'"),
                            ({"one_task": True}, "it was trained on tasks [ner_a (ner), ner_b (ner)]")]:
        cfg = run_config(ner_files, tmp_path / "unused", resume=str(reference))
        if "backbone" in change:
            cfg["backbone"] = change["backbone"]
        if "trainer_batch_size" in change:
            cfg["trainer"]["batch_size"] = change["trainer_batch_size"]
        if "one_task" in change:
            cfg["tasks"] = cfg["tasks"][:1]
        if "per_task" in change:
            cfg.setdefault("multitask", {})["optimizer_state"] = "per-task"
        cfg_file = tmp_path / "recipe.json"
        cfg_file.write_text(json.dumps(cfg))  # JSON is YAML
        assert main(["train", "--recipe", str(cfg_file), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "cannot resume from" in err and message in err and "--resume never" in err, err
        assert "Traceback" not in err


def test_auto_resume_reuses_the_run_tokenizer(ner_files, tmp_path, monkeypatch, capsys):
    """A second start in the same folder continues (default trainer.resume=auto) and never retrains
    the from-scratch tokenizer; resume=never starts over."""
    out = tmp_path / "run"
    cfg = run_config(ner_files, out, max_steps=2, eval_every=2, grad_accum=1)
    train(cfg)
    cfg["trainer"]["max_steps"] = 4  # extend the finished run
    import nlpkit.engine.backbone as backbone

    def no_training(*a, **k):
        raise AssertionError("the tokenizer was retrained on resume")

    monkeypatch.setattr(backbone, "train_tokenizer", no_training)
    result = train(cfg)
    assert result.metrics["steps"] == 4 and result.metrics["resumed_from"] == [2]
    assert "trainer.max_steps was 2, now 4" in capsys.readouterr().out  # said, not silently inexact
    monkeypatch.undo()
    cfg["checkpoint"]["resume"] = "never"
    result = train(cfg)
    assert result.metrics["resumed_from"] == [] and "starting over" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------
# Preemption: SIGTERM and Ctrl-C finish the step, save, say how to resume; a second Ctrl-C aborts
# ---------------------------------------------------------------------------------------------------
# A real process through the CLI; it sends itself SIG (TIMES times in a row) when it takes batch N.
SIGNALLER = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from nlpkit.engine import trainer
    from nlpkit.apps.cli import main
    recipe, sig, n, times = sys.argv[1], getattr(signal, sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    calls = {"batches": 0}
    take = trainer.TaskStream.next_indices
    def next_indices(self):
        calls["batches"] += 1
        if calls["batches"] == n:
            for _ in range(times):
                os.kill(os.getpid(), sig)
        return take(self)
    trainer.TaskStream.next_indices = next_indices
    sys.exit(main(["train", "--recipe", recipe, "--no-progress"]))
""")


def run_signalled(tmp_path: Path, config: dict, sig: str, n: int, times: int = 1) -> subprocess.CompletedProcess:
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(config))  # JSON is YAML
    script = tmp_path / "signaller.py"
    script.write_text(SIGNALLER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, str(script), str(recipe), sig, str(n), str(times)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_sigterm_saves_the_step_exits_143_and_resumes_to_the_uninterrupted_result(reference, ner_files, tmp_path,
                                                                                  capsys):
    out = tmp_path / "run"
    # batch 13 = first micro-batch of step 7: step 7 is finished, saved, and the process stops
    proc = run_signalled(tmp_path, run_config(ner_files, out), "SIGTERM", 13)
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert "SIGTERM received: finishing this step" in proc.stderr
    assert f"interrupted by SIGTERM at step 7/12; saved the resumable checkpoint {out / 'checkpoints' / 'step-7'}" \
        in proc.stderr
    assert f"Resume with: nlpkit train --resume {out}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert checkpoint.step_of(checkpoint.latest_training(out)) == 7
    assert not (out / "metrics.json").exists()  # the run is not finished

    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert "step-7 (step 7)" in capsys.readouterr().out
    assert_same_weights(checkpoint.latest_training(out), checkpoint.latest_training(reference))
    assert_same_weights(out / "best", reference / "best")
    got, want = json.loads((out / "metrics.json").read_text()), json.loads((reference / "metrics.json").read_text())
    assert {k: got[k] for k in RESULT_KEYS} == {k: want[k] for k in RESULT_KEYS}
    assert got["resumed_from"] == [7]
    assert comparable_log(out) == comparable_log(reference)


def test_ctrl_c_saves_and_exits_130_and_a_second_one_aborts_at_once(ner_files, tmp_path):
    once = tmp_path / "once"
    proc = run_signalled(tmp_path, run_config(ner_files, once / "run"), "SIGINT", 13)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "Ctrl-C again aborts at once" in proc.stderr and "interrupted by SIGINT at step 7/12" in proc.stderr
    assert checkpoint.step_of(checkpoint.latest_training(once / "run")) == 7

    twice = tmp_path / "twice"
    proc = run_signalled(tmp_path, run_config(ner_files, twice / "run"), "SIGINT", 13, times=2)
    assert proc.returncode == 130, proc.stderr[-3000:]
    newest = twice / "run" / "checkpoints" / "step-4"
    assert "SIGINT again: aborting at once" in proc.stderr
    assert f"The newest checkpoint is {newest} (step 4). Resume with: nlpkit train --resume {twice / 'run'}" \
        in proc.stderr
    assert "Traceback" not in proc.stderr
    assert checkpoint.step_of(checkpoint.latest_training(twice / "run")) == 4  # nothing of step 7 was saved


# ---------------------------------------------------------------------------------------------------
# Acceptance 2: a kill during a save never leaves a checkpoint that loads half-written
# ---------------------------------------------------------------------------------------------------
def test_kill_during_checkpoint_save_falls_back_to_the_previous_one(reference, ner_files, tmp_path, capsys):
    out = tmp_path / "run"
    run_killed(tmp_path, run_config(ner_files, out), "save", 2)  # dies writing checkpoints/step-8
    partial = [p for p in (out / "checkpoints").iterdir() if ".tmp-" in p.name]
    assert [p.name.split(".tmp-")[0] for p in partial] == [".step-8"]
    assert (partial[0] / checkpoint.WEIGHTS_FILE).stat().st_size > 0  # it really was half-written
    assert not (partial[0] / checkpoint.STATE_FILE).exists()
    assert [checkpoint.step_of(p) for p in checkpoint.list_training_checkpoints(out)] == [4]
    assert checkpoint.step_of(checkpoint.latest_training(out)) == 4
    nlpkit.load(out)  # best/ (saved at step 4 or 8, before the kill) is complete and loads

    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "a save that did not finish" in printed and "step-4 (step 4)" in printed
    assert not [p for p in (out / "checkpoints").iterdir() if ".tmp-" in p.name]
    assert_same_weights(checkpoint.latest_training(out), checkpoint.latest_training(reference))
    got, want = json.loads((out / "metrics.json").read_text()), json.loads((reference / "metrics.json").read_text())
    assert {k: got[k] for k in RESULT_KEYS} == {k: want[k] for k in RESULT_KEYS}


def test_damaged_checkpoint_is_refused_and_skipped(reference, tmp_path):
    """A checkpoint copied or written half-way outside atomic_folder (rsync, full disk) is detected by
    the size list written last, never loaded: resume falls back to the previous complete one."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    newest = checkpoint.latest_training(run)
    older = checkpoint.list_training_checkpoints(run)[-2]
    with open(newest / checkpoint.TENSOR_STATE_FILE, "r+b") as f:
        f.truncate(100)
    with pytest.raises(CheckpointError, match="damaged: training_state.pt has 100 bytes"):
        checkpoint.read_training_state(newest)
    warnings = []
    assert checkpoint.latest_training(run, warnings.append) == older
    assert "skipping checkpoint" in warnings[0]
    # the model half is guarded the same way for nlpkit.load
    (run / "best" / checkpoint.WEIGHTS_FILE).write_bytes(b"\0" * 10)
    with pytest.raises(CheckpointError, match="model.safetensors has 10 bytes"):
        nlpkit.load(run)
    # naming a damaged checkpoint explicitly is an error, not a silent fallback
    with pytest.raises(CheckpointError, match="damaged"):
        checkpoint.latest_training(newest)


def test_best_replaced_mid_save_still_loads(reference, tmp_path):
    """Killed between the two renames of a best/ replacement: only .best.old exists, and it loads."""
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(reference / "best", run / ".best.old")
    (run / ".best.tmp-123").mkdir()
    pipe = nlpkit.load(run)
    assert pipe.task_names == ["ner_a", "ner_b"]
    assert checkpoint.clean_partial(run) == [run / ".best.tmp-123"]


def test_training_state_never_unpickles_objects(tmp_path):
    """weights_only loading: a training_state.pt carrying an arbitrary object is refused, unrun."""
    folder = tmp_path / "step-1"
    folder.mkdir()
    torch.save({"optimizer": {}, "evil": _Evil()}, folder / checkpoint.TENSOR_STATE_FILE)
    with pytest.raises(CheckpointError, match="cannot load the training state"):
        checkpoint.load_training_tensors(folder)
    assert not EVIL_RAN


EVIL_RAN: list[int] = []


def _evil_payload() -> str:
    EVIL_RAN.append(1)
    return "pwned"


class _Evil:
    def __reduce__(self):
        return (_evil_payload, ())


# ---------------------------------------------------------------------------------------------------
# Acceptance 3: non-finite losses are skipped, counted, and stop training when they persist
# ---------------------------------------------------------------------------------------------------
NAN_PLUGIN = textwrap.dedent('''
    """NER whose head returns a NaN loss on chosen training forward calls."""
    from dataclasses import dataclass, field

    from nlpkit import register_task
    from nlpkit_tasks.ner import NerOptions, NerTask


    @dataclass
    class NanOptions(NerOptions):
        nan_calls: list[int] = field(default_factory=list)  # 1-based training forward calls
        nan_from: int = 0  # every call from this one on (0: never)


    class NanHead:
        def __init__(self, head, options):
            self.head, self.options, self.calls = head, options, 0

        def wrap(self):
            outer = self

            def forward(backbone, batch):
                out = type(outer.head).forward(outer.head, backbone, batch)
                if outer.head.training and "labels" in batch:
                    outer.calls += 1
                    o = outer.options
                    if outer.calls in o.nan_calls or (o.nan_from and outer.calls >= o.nan_from):
                        out["loss"] = out["loss"] * float("nan")
                return out

            self.head.forward = forward
            return self.head


    @register_task("nan-ner")
    class NanNer(NerTask):
        Options = NanOptions

        def build_head(self, backbone):
            return NanHead(super().build_head(backbone), self.options).wrap()
''')


@pytest.fixture(scope="module")
def nan_plugin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "nan_plugin_for_tests.py").write_text(NAN_PLUGIN)
    sys.path.insert(0, str(folder))
    yield "nan_plugin_for_tests"
    sys.path.remove(str(folder))


def nan_config(ner_files: Path, out: Path, plugin: str, options: dict, **trainer) -> dict:
    data = {"train": str(ner_files / "train.conll"), "dev": str(ner_files / "dev.conll")}
    return {
        "tasks": [{"type": "nan-ner", "name": "nan", "data": data, "options": options}],
        "backbone": {"spec": "mini", "vocab_size": 400},
        **run_sections(**{"max_steps": 6, "batch_size": 8, "eval_every": 6, "log_every": 2, "progress": False,
                          "cpu": True, "tensorboard": False, "plots": False, **trainer}),
        "output_dir": str(out),
        "plugins": [plugin],
    }


def test_isolated_nan_steps_are_skipped_counted_and_reported(nan_plugin, ner_files, tmp_path, capsys):
    out = tmp_path / "run"
    result = train(nan_config(ner_files, out, nan_plugin, {"nan_calls": [3, 5]}))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["skipped_steps"] == 2 == result.metrics["skipped_steps"]
    # call 3 was the attempt at step 3; call 4 redid step 3; call 5 was the attempt at step 4
    assert [(s["step"], s["task"]) for s in metrics["skipped_batches"]] == [(3, "nan"), (4, "nan")]
    assert all("train.conll" in s["batch"] and ": lines " in s["batch"] for s in metrics["skipped_batches"])
    assert all(math.isfinite(v) for v in weights(out / "best").values() for v in [float(v.float().abs().sum())])
    printed = capsys.readouterr().out
    assert "step 3: non-finite loss nan in task 'nan' (batch 3 of epoch 1: lines " in printed
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["skipped"]["step"] for r in log if "skipped" in r] == [3, 4]


def test_persistent_nan_stops_with_a_clear_message(nan_plugin, ner_files, tmp_path, capsys):
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(nan_config(ner_files, out, nan_plugin, {"nan_from": 4}, max_bad_steps=3)))
    code = main(["train", "--recipe", str(recipe), "--plugin", nan_plugin, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert "training stopped at step 4: 3 non-finite losses in a row (trainer.max_bad_steps is 3)" in err
    assert "in task 'nan', batch 6 of epoch 1: lines " in err and "train.conll" in err
    assert "Lower the learning rate" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_steps"] == 3 and metrics["steps"] == 3
    assert metrics["error"].startswith("training stopped at step 4")


# ---------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------
def lr_curve(kind: str, warmup: int, total: int, lr: float = 1.0) -> list[float]:
    """The learning rate each of ``total`` optimizer updates uses."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = make_scheduler(opt, kind, warmup, total)
    used = []
    for _ in range(total):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return used


def test_warmup_then_linear_decay():
    lrs = lr_curve("linear", warmup=4, total=20)
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    decay = lrs[4:]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert decay == pytest.approx([1 - k / 16 for k in range(16)])
    assert 0 < lrs[-1] < 0.1


def test_warmup_then_cosine_decay():
    lrs = lr_curve("cosine", warmup=2, total=12)
    assert lrs[:2] == pytest.approx([0.5, 1.0])
    assert lrs[2:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 10)) for k in range(10)])
    assert lrs[7] == pytest.approx(0.5)  # half-way through the decay


def test_constant_and_no_warmup():
    assert lr_curve("constant", warmup=3, total=8) == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1, 1, 1])
    assert lr_curve("linear", warmup=0, total=4) == pytest.approx([1, 0.75, 0.5, 0.25])


def test_weight_decay_skips_biases_and_layernorm():
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32), add_pooling_layer=False)
    model.embeddings.position_embeddings.weight.requires_grad_(False)  # frozen: in no group
    opt = make_optimizer(model, 1e-3, 0.05)
    decay, plain = opt.param_groups
    assert decay["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in plain["params"]}
    assert "encoder.layer.0.attention.self.query.weight" in decayed
    assert "embeddings.word_embeddings.weight" in decayed
    assert all(n.endswith("bias") or "LayerNorm" in n for n in not_decayed)
    assert {n for n in names.values() if n.endswith("bias") or "LayerNorm" in n} == not_decayed
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decayed | not_decayed == trainable and not decayed & not_decayed
    assert "embeddings.position_embeddings.weight" not in trainable


def test_weight_decay_without_matrices_has_one_group():
    opt = make_optimizer(torch.nn.LayerNorm(4), 1e-3, 0.1)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.0


@pytest.mark.parametrize("kind", ["proportional", "temperature", "round-robin"])
def test_sampler_is_deterministic_and_resumes_exactly(kind):
    a = TaskSampler(["a", "b", "c"], [3, 5, 2], kind, 2.0, seed=7)
    b = TaskSampler(["a", "b", "c"], [3, 5, 2], kind, 2.0, seed=7)
    first = [next(a) for _ in range(13)]
    assert first == [next(b) for _ in range(13)]
    saved = json.loads(json.dumps(a.state_dict()))  # it is stored as JSON
    rest = [next(a) for _ in range(40)]
    c = TaskSampler(["a", "b", "c"], [3, 5, 2], kind, 2.0, seed=999)
    c.load_state_dict(saved)
    assert [next(c) for _ in range(40)] == rest
    if kind == "proportional":  # each pass holds every task's batches exactly once
        d = TaskSampler(["a", "b", "c"], [3, 5, 2], kind, 2.0, seed=1)
        one_pass = [next(d) for _ in range(10)]
        assert sorted(one_pass) == ["a"] * 3 + ["b"] * 5 + ["c"] * 2
    if kind == "round-robin":
        assert first[:6] == ["a", "b", "c", "a", "b", "c"]


class _Lengths:
    """A stand-in task: TaskStream only asks it for feature lengths."""

    name = "t"

    def feature_length(self, feature):
        return feature["n"]

    def feature_lengths(self, features):
        return [self.feature_length(f) for f in features]


def stream(n: int, batch: int, seed: int, world: int = 1) -> TaskStream:
    rng = random.Random(0)
    features = [{"n": rng.randint(3, 40), "example_index": i} for i in range(n)]
    return TaskStream(_Lengths(), features, batch, seed, group=True, world=world)


def test_stream_covers_each_epoch_once_and_resumes_across_epochs():
    s = stream(21, 4, seed=3)
    assert len(s) == 6
    epoch0 = [s.next_indices() for _ in range(6)]
    assert sorted(i for b in epoch0 for i in b) == list(range(21))
    assert max(len(b) for b in epoch0) == 4
    again = stream(21, 4, seed=3)
    assert [again.next_indices() for _ in range(6)] == epoch0  # same seed, same order
    different = stream(21, 4, seed=4)
    assert [different.next_indices() for _ in range(6)] != epoch0
    for _ in range(3):
        s.next_indices()
    saved = json.loads(json.dumps(s.state_dict()))
    assert saved == {"epoch": 1, "position": 3}
    rest = [s.next_indices() for _ in range(10)]  # crosses into epoch 2
    resumed = stream(21, 4, seed=3)
    resumed.load_state_dict(saved)
    assert [resumed.next_indices() for _ in range(10)] == rest
    assert s.epoch == 3


def test_stream_drops_a_batch_smaller_than_the_process_count():
    s = stream(9, 4, seed=0, world=2)  # batches of 4, 4, 1: the 1 would leave a process idle
    assert len(s) == 2
    assert all(len(s.next_indices()) == 4 for _ in range(4))


def test_rng_states_round_trip_through_weights_only_load(tmp_path):
    import numpy as np

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save({"rng": [rng_state()]}, tmp_path / "s.pt")
    want = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"][0])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == want


def test_loop_state_round_trips_through_json():
    state = LoopState(step=7, best_score=51.5, best_step=4, bad_evals=1, history=[{"step": 4, "score": 51.5}],
                      running={"a": [0.5, 0.25]}, skipped=2, resumed_from=[3])
    assert LoopState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_run_log_keeps_records_up_to_the_resumed_step(tmp_path):
    log = RunLog(tmp_path, main=True)
    for step in (2, 4, 6):
        log.event({"step": step, "loss/a": 1.0})
    log.close()
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 8, "loss/a": 0.')  # the half line of a killed writer
    log = RunLog(tmp_path, main=True, resume_step=4)
    log.event({"step": 6, "loss/a": 0.5})
    log.close()
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]
    RunLog(tmp_path, main=True).close()  # a fresh run starts the file over
    assert (tmp_path / "log.jsonl").read_text() == ""


def test_check_resume_refuses_changed_data_and_warns_on_changed_lr(ner_files):
    from nlpkit.engine.task_data import build_task, read_splits

    cfg = RunConfig.from_dict(run_config(ner_files, ner_files / "x"))
    tasks = [build_task(e) for e in cfg.tasks]
    for t, e in zip(tasks, cfg.tasks):
        t.fit(read_splits(t, e)["train"])
    prints = {t.name: "64:abc" for t in tasks}
    meta = {"tasks": [{"name": t.name, "type": t.type_name, "options": json.loads(json.dumps(t.options_dict())),
                       "state": t.state_dict()} for t in tasks]}
    state = {"config": cfg.to_dict(), "data": dict(prints), "world_size": 1}
    assert check_resume(Path("ck"), state, meta, cfg, tasks, prints, 1) == []
    with pytest.raises(ConfigError, match="training data of task 'ner_a' is not the data"):
        check_resume(Path("ck"), state, meta, cfg, tasks, {**prints, "ner_a": "63:def"}, 1)
    meta["tasks"][1]["options"]["max_length"] = 64
    with pytest.raises(ConfigError, match="tasks.ner_b.options.max_length was 64, now 48"):
        check_resume(Path("ck"), state, meta, cfg, tasks, prints, 1)
    meta["tasks"][1]["options"]["max_length"] = 48
    changed = RunConfig.from_dict({**run_config(ner_files, ner_files / "x"),
                                   "trainer": {**run_config(ner_files, ner_files / "x")["trainer"], "lr": 0.01}})
    assert check_resume(Path("ck"), state, meta, changed, tasks, prints, 2) == [
        "trainer.lr was 0.003, now 0.01", "1 processes then, 2 now (dropout draws differ)"]


def test_data_fingerprint_sees_any_change():
    a = [{"tokens": ["a", "b"], "tags": ["O", "O"]}]
    assert data_fingerprint(a) == data_fingerprint([dict(a[0])])
    assert data_fingerprint(a) != data_fingerprint([{"tokens": ["a", "b"], "tags": ["O", "B-PER"]}])


def test_data_fingerprint_answers_an_older_checkpoint_in_its_own_form():
    a = [{"tokens": ["Müller", "b"], "tags": ["B-PER", "O"], "line": 3}, {"tokens": ["x"], "tags": ["O"], "line": 6}]
    now = data_fingerprint(a)
    assert now.startswith("v2:2:") and data_fingerprint(a, saved=now) == now
    assert data_fingerprint(a, saved="2:0123456789abcdef") == old_fingerprint(a)
    assert data_fingerprint(a[:1], saved="2:0123456789abcdef") != old_fingerprint(a)


# ---------------------------------------------------------------------------------------------------
# What a user watches: log.jsonl, TensorBoard, learning curves
# ---------------------------------------------------------------------------------------------------
def test_run_folder_has_tensorboard_events_and_learning_curves(ner_files, tmp_path):
    out = tmp_path / "run"
    # one schedule over the run, so that the logged rate is a function of the run's step (checked below)
    cfg = run_config(ner_files, out, max_steps=4, eval_every=2, grad_accum=1, tensorboard=True, plots=True,
                     schedule_per_task=False)
    train(cfg)
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/ner_a", "loss/ner_b", "train/lr", "dev/ner_a/f1", "dev/selection_score"} <= tags
    assert [e.step for e in acc.Scalars("dev/ner_a/f1")] == [2, 4]
    for name in ("ner_a", "ner_b"):
        png = out / "curves" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_records = [r for r in log if "loss/ner_a" in r or "loss/ner_b" in r]
    assert [r["step"] for r in train_records] == [3, 4]
    assert all({"epoch", "lr", "samples_per_s", "grad_norm"} <= set(r) for r in train_records)
    assert [r["step"] for r in log if "eval" in r] == [2, 4]
    assert train_records[0]["lr"] == pytest.approx(3e-3 * (1 - 2 / 4))  # the rate step 3 used


def test_curves_read_a_log_without_matplotlib_state(tmp_path):
    from nlpkit.engine.curves import curves_from_log, plot_run

    records = [{"step": 1, "loss/a": 2.0}, {"step": 2, "loss/a": 1.0, "loss/b": 3.0},
               {"step": 2, "eval": {"a": {"f1": 10.0}, "b": {"acc": 5.0}}},
               {"step": 4, "eval": {"a": {"f1": 30.0}, "b": {"acc": 4.0}}}, {"resumed_from": 2}]
    curves = curves_from_log(records, {"a": "f1", "b": "acc"})
    assert curves["a"].loss_steps == [1, 2] and curves["a"].score == [10.0, 30.0] and curves["a"].best_step == 4
    assert curves["b"].best_step == 2
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n{\"step\": 5, ")
    written = plot_run(tmp_path / "log.jsonl", tmp_path / "curves", {"a": "f1", "b/x": "acc"})
    assert set(written) == {"a"}  # b/x has no data; names are made file-safe
    assert written["a"].name == "a.png" and written["a"].stat().st_size > 1000


def test_missing_tensorboard_and_matplotlib_are_one_line_notes(ner_files, tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_viz(name, *args, **kwargs):
        if name.startswith(("matplotlib", "torch.utils.tensorboard", "tensorboard")):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_viz)
    out = tmp_path / "run"
    train(run_config(ner_files, out, max_steps=1, grad_accum=1, tensorboard=True, plots=True))
    printed = capsys.readouterr().out
    assert "TensorBoard: the tensorboard package is not installed" in printed
    assert "learning curves: matplotlib is not installed" in printed
    assert not (out / "tensorboard").exists() and not (out / "curves").exists()
    assert (out / "metrics.json").is_file()


def test_checkpoint_pruning_keeps_the_newest(tmp_path):
    for step in (2, 4, 10, 6):
        (tmp_path / "checkpoints" / f"step-{step}").mkdir(parents=True)
    (tmp_path / "checkpoints" / "notes").mkdir()
    removed = checkpoint.prune_training(tmp_path, keep_last=2)
    assert sorted(p.name for p in removed) == ["step-2", "step-4"]
    assert [p.name for p in checkpoint.list_training_checkpoints(tmp_path)] == ["step-6", "step-10"]


# ---------------------------------------------------------------------------------------------------
# Early stopping, time-based saves, precision
# ---------------------------------------------------------------------------------------------------
def test_early_stopping_on_the_main_score_with_patience(ner_files, tmp_path, monkeypatch, capsys):
    from nlpkit.engine.trainer import Trainer

    scores = iter([10.0, 30.0, 20.0, 25.0, 29.0, 99.0])  # best at the 2nd evaluation, then 3 worse

    def scripted(self, tasks, *args, **kwargs):
        s = next(scores)
        return {t.name: {"f1": s, "precision": s} for t in tasks}

    monkeypatch.setattr(Trainer, "_evaluate", scripted)
    out = tmp_path / "run"
    cfg = run_config(ner_files, out, max_steps=12, eval_every=2, patience=3, grad_accum=1)
    result = train(cfg)
    assert result.metrics["stop_reason"] == "early stopping: no improvement in 3 evaluations"
    assert result.metrics["steps"] == 10 and result.metrics["best_step"] == 4
    assert result.metrics["selection_score"] == 30.0 and result.metrics["tasks"]["ner_a"]["f1"] == 30.0
    assert json.loads((out / "best" / "nlpkit.json").read_text())["step"] == 4
    assert "step 10: early stopping: no improvement in 3 evaluations" in capsys.readouterr().out
    # started again, the run knows it is finished
    result = train(cfg)
    assert result.metrics["steps"] == 10 and result.metrics["resumed_from"] == [10]
    assert "already complete at step 10 (early stopping" in capsys.readouterr().out


def test_save_minutes_writes_checkpoints_between_evaluations(ner_files, tmp_path):
    out = tmp_path / "run"
    train(run_config(ner_files, out, max_steps=3, eval_every=3, save_every=100, save_minutes=1e-9,
                     log_every=1, keep_last=5, grad_accum=1))
    assert [checkpoint.step_of(p) for p in checkpoint.list_training_checkpoints(out)] == [1, 2, 3]


def test_precision_bf16_on_cpu_and_fp16_falls_back_with_a_note(ner_files, tmp_path, capsys):
    result = train(run_config(ner_files, tmp_path / "bf16", max_steps=1, grad_accum=1, precision="bf16"))
    assert result.metrics["precision"] == "bf16"
    result = train(run_config(ner_files, tmp_path / "fp16", max_steps=1, grad_accum=1, precision="fp16"))
    assert result.metrics["precision"] == "fp32"
    assert "precision.compute fp16 needs a CUDA GPU; training in fp32" in capsys.readouterr().out


def test_replayed_steps_appear_once_in_log_and_tensorboard(ner_files, tmp_path):
    """Steps logged after the last checkpoint by a run that then died are replayed on resume: the log
    and the TensorBoard view must show each step once."""
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    cfg = run_config(ner_files, out, max_steps=4, eval_every=4, save_every=2, log_every=1, keep_last=3,
                     grad_accum=1, tensorboard=True)
    train(cfg)
    shutil.rmtree(out / "checkpoints" / "step-4")  # as if killed after logging step 4, before saving it
    result = train(cfg)
    assert result.metrics["resumed_from"] == [2]
    steps = [json.loads(line).get("step") for line in (out / "log.jsonl").read_text().splitlines()
             if "loss/ner_a" in line or "loss/ner_b" in line]
    assert steps == [1, 2, 3, 4]
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/lr")] == [1, 2, 3, 4]


def test_resume_accepts_a_run_saved_before_backbone_attention_existed(ner_files, tmp_path, capsys):
    """backbone.attention picks a kernel, not a model: an older checkpoint (no such key) resumes as sdpa,
    and switching the kernel on resume is allowed with a warning."""
    out = tmp_path / "run"
    cfg = run_config(ner_files, out, max_steps=2, eval_every=2, grad_accum=1)
    train(cfg)
    state_file = checkpoint.latest_training(out) / checkpoint.STATE_FILE
    state = json.loads(state_file.read_text())
    del state["config"]["backbone"]["attention"]
    state_file.write_text(json.dumps(state))
    cfg["trainer"]["max_steps"] = 3
    assert train(cfg).metrics["resumed_from"] == [2]
    assert "backbone.attention" not in capsys.readouterr().out
    cfg["trainer"]["max_steps"], cfg["backbone"]["attention"] = 4, "eager"
    assert train(cfg).metrics["resumed_from"] == [2, 3]
    assert "warning: backbone.attention was 'sdpa', now 'eager'" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------
# What a newcomer meets: a task that needs a pretrained backbone says so at the start and the end
# ---------------------------------------------------------------------------------------------------
def test_tasks_that_need_a_pretrained_backbone_say_so_at_start_and_end(ner_files, tmp_path, monkeypatch, capsys):
    from nlpkit.engine.config import RunConfig
    from nlpkit.engine.trainer import Trainer
    from nlpkit_tasks.ner import NerTask
    from nlpkit_tasks.qa import QaTask
    from nlpkit_tasks.reading_comprehension import ReadingComprehensionTask

    assert QaTask.needs_pretrained and ReadingComprehensionTask.needs_pretrained and not NerTask.needs_pretrained
    monkeypatch.setattr(NerTask, "needs_pretrained", True)
    train(run_config(ner_files, tmp_path / "run", max_steps=1, grad_accum=1))
    printed = capsys.readouterr().out.splitlines()
    notes = [i for i, line in enumerate(printed) if "needs a pretrained backbone" in line]
    assert len(notes) == 2 and "--backbone minilm" in printed[notes[0]]
    assert notes[0] < next(i for i, line in enumerate(printed) if line.startswith("training "))
    assert printed[notes[1] + 1].startswith("saved to")
    # a pretrained backbone (anything but a preset) gets no note
    trainer = Trainer(RunConfig.from_dict({"tasks": [{"type": "qa"}], "backbone": {"spec": "some/model"}}))
    trainer.tasks = [QaTask("qa")]
    assert trainer._pretrained_advice() is None


def test_without_a_dev_set_the_closing_line_says_best_is_the_last_step(ner_files, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = run_config(ner_files, out, max_steps=2, eval_every=1, save_every=2)
    for t in cfg["tasks"]:
        t["data"] = {"train": t["data"]["train"]}
    result = train(cfg)
    assert result.metrics["best_step"] is None and result.metrics["tasks"] == {}
    closing = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("saved to"))
    assert f"saved to {out} (no dev set: {out / 'best'} is the last step, 2); wall time" in closing
    assert "step None" not in closing
    # and that is what best/ holds: the weights of the step-2 checkpoint, saved at step 2, nothing selected
    meta = checkpoint.read_meta(out / "best")
    assert meta["step"] == 2 and "selection_score" not in meta
    assert_same_weights(out / "best", out / "checkpoints" / "step-2")


def test_a_score_without_its_main_score_is_a_plugin_error_naming_the_task(ner_files, tmp_path, monkeypatch):
    from nlpkit.sdk.errors import PluginError
    from nlpkit_tasks.ner import NerTask

    monkeypatch.setattr(NerTask, "score", lambda self, predictions, examples: {"acc": 1.0})
    with pytest.raises(PluginError, match=r"task 'ner_a' \(NerTask\): score\(\) returned \['acc'\], without its "
                                          r"main_score 'f1'"):
        train(run_config(ner_files, tmp_path / "run", max_steps=1, grad_accum=1, eval_every=1))
    monkeypatch.setattr(NerTask, "score", lambda self, predictions, examples: {"f1": "high"})
    with pytest.raises(PluginError, match=r"score\(\)\['f1'\] is 'high', not a number"):
        train(run_config(ner_files, tmp_path / "run2", max_steps=1, grad_accum=1, eval_every=1))


def test_a_start_over_that_fails_leaves_the_earlier_run_whole(reference, ner_files, tmp_path, monkeypatch):
    """--resume never with an error after the new tokenizer was trained (here: encoding fails): the earlier
    run's checkpoints, log and tokenizer are untouched, so it still resumes exactly."""
    import shutil

    from nlpkit.sdk.errors import DataError
    from nlpkit_tasks.ner import NerTask

    out = tmp_path / "run"
    shutil.copytree(reference, out)

    def snapshot() -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    before = snapshot()

    def failing_encode(self, examples):
        raise DataError("cannot encode", "train.conll", 3)

    monkeypatch.setattr(NerTask, "encode", failing_encode)
    other = tmp_path / "other"  # other text, so the new tokenizer differs from the run's
    other.mkdir()
    (other / "train.conll").write_text("Zyx B-ORG\nqwv O\n\n" * 20)
    (other / "dev.conll").write_text("Zyx B-ORG\n")
    with pytest.raises(DataError, match="cannot encode"):
        train(run_config(other, out, resume="never", max_steps=14))
    assert (out / ".tokenizer-scratch.new" / "tokenizer.json").read_bytes() != \
        (out / "tokenizer-scratch" / "tokenizer.json").read_bytes()
    left = {k: v for k, v in snapshot().items() if not k.startswith(".tokenizer-scratch.new")}
    assert left == before
