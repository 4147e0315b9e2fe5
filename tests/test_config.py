"""Config mistakes fail at start-up, before any data is read or model built, and name the key at fault."""
from __future__ import annotations

import pytest

from nlpkit.cli import main
from nlpkit.config import RunConfig, TrainerConfig
from nlpkit.errors import ConfigError


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("trainer.lr=abc", "trainer.lr: expected a finite number or null, got 'abc'"),
        ("trainer.lr=nan", "trainer.lr: expected a finite number or null, got 'nan'"),
        ("trainer.lr=2", "trainer.lr: must be between 0 and 1"),
        ("trainer.lrr=0.1", "unknown key trainer.lrr (did you mean 'lr'?)"),
        ("trainer.batch_size=abc", "trainer.batch_size: expected an integer, got 'abc'"),
        ("trainer.batch_size=0", "trainer.batch_size: must be positive"),
        ("trainer.batch_size=2.5", "trainer.batch_size: expected an integer, got 2.5"),
        ("trainer.warmup_ratio=1.5", "trainer.warmup_ratio: must be in [0, 1)"),
        ("trainer.scheduler=cosin", "trainer.scheduler: expected one of 'linear', 'cosine', 'constant', got 'cosin'"),
        ("trainer.precision=fp8", "trainer.precision: expected one of"),
        ("trainer.progress=maybe", "trainer.progress: expected true or false, got 'maybe'"),
        ("trainer.keep_last=0", "trainer.keep_last: must be >= 1"),
        ("trainer.save_every=-1", "trainer.save_every: must be positive"),
        ("trainer.save_minutes=0", "trainer.save_minutes: must be positive"),
        ("trainer.max_bad_steps=0", "trainer.max_bad_steps: must be >= 1"),
        ("trainer.patience=0", "trainer.patience: must be positive"),
        ("trainer.resume=/no/such/run", "trainer.resume: must be auto, never or an existing run/checkpoint folder"),
        ("backbone.vocab_size=10", "backbone.vocab_size: must be at least 300"),
        ("tasks.0.weight=0", "tasks[0].weight: must be positive"),
        ("tasks.ner.options.max_length=2", "tasks.ner.options.max_length: must be between 8 and 100000"),
        ("tasks.0.colour=red", "unknown key tasks[0].colour"),
        ("trainer", "--set 'trainer': expected KEY=VALUE"),
    ],
)
def test_cli_set_mistakes_exit_2_naming_the_key(assignment, message, tmp_path, capsys):
    code = main(["train", "--task", "ner", "--set", assignment, "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing started


def test_cli_typed_flags_are_checked_by_argparse(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--task", "ner", "--lr", "abc"])
    assert exc.value.code == 2
    assert "argument --lr: invalid float value: 'abc'" in capsys.readouterr().err


def test_recipe_mistakes_name_the_file_and_the_key(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("tasks:\n  - type: ner\ntrainer:\n  epochs: 2\n  batchsize: 16\n")
    assert main(["train", "--recipe", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"{recipe}: unknown key trainer.batchsize (did you mean 'batch_size'?)" in err
    recipe.write_text("tasks:\n  - type: ner\ntrainer:\n  grad_accum: zero\n")
    assert main(["train", "--recipe", str(recipe)]) == 2
    assert f"{recipe}: trainer.grad_accum: expected an integer, got 'zero'" in capsys.readouterr().err


def test_cli_overrides_are_typed_like_the_recipe():
    from nlpkit.config import apply_override

    data = {"tasks": [{"type": "ner"}]}
    for assignment in ("trainer.lr=1e-3", "trainer.eval_every=50", "trainer.patience=null", "trainer.plots=false",
                       "trainer.resume=never"):
        apply_override(data, assignment)
    tc = RunConfig.from_dict(data).trainer
    assert (tc.lr, tc.eval_every, tc.patience, tc.plots, tc.resume) == (1e-3, 50, None, False, "never")


def test_every_trainer_field_is_documented():
    """docs/training.md lists every TrainerConfig field: an option nobody can find does not exist."""
    import dataclasses
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    missing = [f.name for f in dataclasses.fields(TrainerConfig) if f"`{f.name}`" not in doc]
    assert not missing, missing


def test_python_api_rejects_the_same_mistakes():
    with pytest.raises(ConfigError, match=r"trainer.max_grad_norm: must be positive"):
        RunConfig.from_dict({"tasks": [{"type": "ner"}], "trainer": {"max_grad_norm": 0}})
    with pytest.raises(ConfigError, match=r"unknown key trainer.epoch \(did you mean 'epochs'\?\)"):
        RunConfig.from_dict({"tasks": [{"type": "ner"}], "trainer": {"epoch": 1}})
