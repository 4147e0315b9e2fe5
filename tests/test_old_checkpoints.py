"""Checkpoints an older nlpkit wrote (tests/fixtures/old_checkpoints, README there) still load and predict the same.

The files were written once by tests/fixtures/make_old_checkpoints.py at the commit its README names, with the
predictions that code made; nothing here writes a checkpoint, so a change to how checkpoints are read or how a
model is built from one is checked against what users already have on disk.
"""
import json
from pathlib import Path

import pytest

import nlpkit

OLD = Path(__file__).resolve().parent / "fixtures" / "old_checkpoints"
INPUTS = json.loads((OLD / "inputs.json").read_text())
RUNS = sorted(p.name for p in OLD.iterdir() if p.is_dir())


def _close(new, old, path="") -> None:
    """Equal structure and strings; numbers equal to the recorded 4 decimals give or take one unit in the last."""
    if isinstance(old, dict):
        assert isinstance(new, dict) and sorted(new) == sorted(old), f"{path}: keys {sorted(new)} != {sorted(old)}"
        for k in old:
            _close(new[k], old[k], f"{path}.{k}")
    elif isinstance(old, list):
        assert isinstance(new, list) and len(new) == len(old), f"{path}: {new!r} != {old!r}"
        for i, (a, b) in enumerate(zip(new, old)):
            _close(a, b, f"{path}[{i}]")
    elif isinstance(old, float):
        assert new == pytest.approx(old, abs=2e-4), f"{path}: {new} != {old}"
    else:
        assert new == old, f"{path}: {new!r} != {old!r}"


def test_the_fixtures_are_there():
    assert RUNS == ["lora-decoder", "multitask-encoder"]


@pytest.mark.parametrize("run", RUNS)
def test_an_old_checkpoint_predicts_as_when_it_was_written(run):
    recorded = json.loads((OLD / run / "recorded_predictions.json").read_text())
    pipe = nlpkit.load(OLD / run, device="cpu")
    assert sorted(pipe.task_names) == sorted(recorded)
    for task, old in recorded.items():
        new = pipe.predict(INPUTS[pipe.task(task).type_name], task=task)
        _close(json.loads(json.dumps(new)), old, f"{run}/{task}")
