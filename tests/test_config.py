"""Config mistakes fail at start-up, before any data is read or model built, and name the key at fault."""
from __future__ import annotations

import pytest

from pathlib import Path
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Optional

from nlpkit.sdk import options
from nlpkit.apps.cli import main
from nlpkit.engine.config import RunConfig, TrainerConfig
from nlpkit.engine.renamed_keys import RENAMED
from nlpkit.sdk.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


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
    from nlpkit.engine.config import apply_override

    data = {"tasks": [{"type": "ner"}]}
    for assignment in ("trainer.lr=1e-3", "trainer.eval_every=50", "trainer.patience=null", "trainer.plots=false",
                       "trainer.resume=never"):
        apply_override(data, assignment)
    cfg = RunConfig.from_dict(data)
    tc = cfg.trainer
    assert (tc.lr, tc.eval_every, tc.patience, cfg.logging.plots, cfg.checkpoint.resume) == (1e-3, 50, None, False, "never")


def test_every_trainer_field_is_documented():
    """docs/training.md lists every TrainerConfig field: an option nobody can find does not exist."""
    import dataclasses
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    missing = [f.name for f in dataclasses.fields(TrainerConfig) if f"`{f.name}`" not in doc]
    assert not missing, missing


def test_every_field_of_the_run_sections_is_documented():
    """docs/training.md's reference has a table per section, each listing its keys."""
    import dataclasses

    doc = (ROOT / "docs" / "training.md").read_text()
    for section in ("precision", "multitask", "checkpoint", "logging", "performance"):
        assert f"`{section}:`" in doc, section
        cls = RunConfig.__dataclass_fields__[section].default_factory
        missing = [f.name for f in dataclasses.fields(cls) if f"`{f.name}`" not in doc]
        assert not missing, (section, missing)


def test_python_api_rejects_the_same_mistakes():
    with pytest.raises(ConfigError, match=r"trainer.max_grad_norm: must be positive"):
        RunConfig.from_dict({"tasks": [{"type": "ner"}], "trainer": {"max_grad_norm": 0}})
    with pytest.raises(ConfigError, match=r"unknown key trainer.epoch \(did you mean 'epochs'\?\)"):
        RunConfig.from_dict({"tasks": [{"type": "ner"}], "trainer": {"epoch": 1}})


# ---- the checker is total: every field type, every shape a recipe can hold ---------------------------
@dataclass
class Inner:
    k: int = 1


@dataclass
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    pair: tuple[int, str] = (1, "a")
    tags: list[str] = field(default_factory=list)
    table: dict[str, float] = field(default_factory=dict)
    mode: Literal["a", "b"] = "a"
    bounded: Optional[Annotated[int, options.Range(0, 10)]] = None
    free: Any = None


def test_build_checks_every_field_type():
    ok = options.build(Outer, {"name": "x", "inner": {"k": "3"}, "pair": [2, "b"], "tags": "p,q",
                               "table": {"a": 1}, "bounded": 10})
    assert (ok.inner.k, ok.pair, ok.tags, ok.table, ok.bounded) == (3, [2, "b"], ["p", "q"], {"a": 1.0}, 10)
    for data, message in [
        ({}, "name: missing; it is required"),
        ({"name": "x", "inner": [1]}, "inner: expected a mapping, got [1]"),
        ({"name": "x", "inner": {"k": [1]}}, "inner.k: expected an integer"),
        ({"name": "x", "pair": [1]}, "pair: expected a list of 2 items"),
        ({"name": "x", "pair": [1, [2]]}, "pair[1]: expected a string"),
        ({"name": "x", "pair": ["one", "a"]}, "pair[0]: expected an integer"),
        ({"name": "x", "tags": [[1]]}, "tags[0]: expected a string"),
        ({"name": "x", "table": [1]}, "table: expected a mapping"),
        ({"name": "x", "table": {"a": "b"}}, "table.a: expected a finite number"),
        ({"name": "x", "mode": "c"}, "mode: expected one of 'a', 'b'"),
        ({"name": "x", "bounded": 11}, "bounded: must be between 0 and 10, got 11"),
        ({"name": "x", "bounded": "many"}, "bounded: expected an integer"),
        ({"name": {"a": 1}}, "name: expected a string"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            options.build(Outer, data)


@pytest.mark.parametrize("seed", [-1, 2**32, 99999999999999999999])
def test_seed_range(seed):
    with pytest.raises(ConfigError, match="trainer.seed: must be between 0 and 4294967295"):
        RunConfig.from_dict({"tasks": [{"type": "ner"}], "trainer": {"seed": seed}})
    assert RunConfig.from_dict({"tasks": [{"type": "ner"}], "trainer": {"seed": 2**32 - 1}}).trainer.seed == 2**32 - 1


def test_options_replace_checks_like_build():
    from nlpkit.sdk import options

    trainer = TrainerConfig()
    assert options.replace(trainer, {"lr": "0.5"}, "trainer").lr == 0.5
    with pytest.raises(ConfigError, match="unknown key trainer.num_beams"):
        options.replace(trainer, {"num_beams": 4}, "trainer")
    with pytest.raises(ConfigError, match="trainer.lr: must be between 0 and 1"):
        options.replace(trainer, {"lr": 3}, "trainer")


@pytest.mark.parametrize(
    "recipe, message",
    [
        ("tasks: [{type: ner}]\ntrainer: [1, 2]\n", "trainer: expected a mapping, got [1, 2]"),
        ("tasks: [{type: ner}]\nbackbone: 3\n", "backbone: expected a mapping, got 3"),
        ("tasks: [{type: ner, options: [1]}]\n", "tasks[0].options: expected a mapping, got [1]"),
        ("tasks: [{type: ner, data: [a]}]\n", "tasks[0].data: expected a mapping, got ['a']"),
        ("tasks: {type: ner}\n", "tasks: expected a list"),
        ("tasks: [ner]\n", "tasks[0]: expected a mapping, got 'ner'"),
        ("tasks: [{name: x}]\n", "tasks[0].type: missing; it is required"),
        ("taks: [{type: ner}]\n", "unknown key taks (did you mean 'tasks'?)"),
        ("", "the recipe is empty"),
        ("# only a comment\n", "the recipe is empty"),
    ],
)
def test_recipe_shapes_name_the_file_and_key(recipe, message, tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(recipe)
    args = ["--backbone", "mini", "--option", "max_length=64", "--data", f"dev={tmp_path / 'd.conll'}"]
    assert main(["train", "--recipe", str(path), "--output-dir", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert f"nlpkit: error: {path}: {message}" in err, err
    assert not (tmp_path / "run").exists()


def test_recipe_that_is_a_folder(tmp_path, capsys):
    assert main(["train", "--recipe", str(tmp_path)]) == 2
    assert f"recipe {str(tmp_path)!r} is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("assignment, message", [
    ("trainer.lr.x=1", "--set trainer.lr.x: trainer.lr: expected a mapping, got 0.1"),
    ("tasks.0.options.x.y=1", "unknown key tasks.ner.options.x"),  # options.x is created, then rejected by the task
    ("tasks.3.weight=1", "--set tasks.3.weight: '3' is not an index into a list of 1"),
    ("trainer.lr=[1", "--set 'trainer.lr=[1': the value is not valid YAML"),
    ("trainer..lr=1", "the key has an empty part"),
])
def test_set_never_walks_into_a_value(assignment, message, tmp_path, capsys):
    code = main(["train", "--task", "ner", "--lr", "0.1", "--set", assignment, "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err


def test_output_dir_must_be_creatable(tmp_path):
    from nlpkit.engine.config import check_output_dir

    (tmp_path / "f.txt").write_text("x")
    for path, message in [(tmp_path / "f.txt", "is a file, not a folder"),
                          (tmp_path / "f.txt" / "run", "is a file, not a folder"),
                          ("/proc/nlpkit-test/run", "cannot be created in '/proc'")]:
        with pytest.raises(ConfigError, match=f"output_dir: .*{message}"):
            check_output_dir(str(path), "output_dir")
    check_output_dir(str(tmp_path / "new" / "run"), "output_dir")  # creatable: fine, and nothing is made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_every_config_and_task_option_type_is_one_the_checker_knows():
    """Every field of every config section and built-in task's options round-trips through the checker
    (an unsupported field type would be a TypeError here, not on a user's machine)."""
    from nlpkit.engine.config import BackboneConfig, TaskEntry
    from nlpkit.sdk.registry import get_task_class, list_tasks

    sections = [RunConfig.__dataclass_fields__[s].default_factory for s in SECTIONS[1:]]
    classes = [TrainerConfig, BackboneConfig, *sections] + [get_task_class(info.name).Options for info in list_tasks()]
    for cls in classes:
        default = cls()
        assert options.build(cls, options.to_dict(default)) == default, cls
    entry = options.build(TaskEntry, {"type": "ner", "data": {"train": "a"}, "options": {"x": [1]}, "weight": 2})
    assert (entry.name, entry.data, entry.weight) == ("ner", {"train": "a"}, 2.0)
    with pytest.raises(TypeError, match="cannot check"):  # a plugin author's field type it does not know
        options.coerce({1}, set[int], "tasks.x.options.odd")


def test_default_learning_rates_per_backbone():
    """The 6-layer small presets collapse at the 1e-3 of the smaller ones (docs/training.md)."""
    from nlpkit.engine.optim import default_lr

    assert default_lr("small") == default_lr("small-decoder") == 3e-4
    assert default_lr("tiny") == default_lr("mini") == default_lr("tiny-decoder") == 1e-3
    assert default_lr("minilm") == default_lr("some/hub-model") == 1e-4


# ---- sections per component, and the old flat trainer keys for one release ---------------------------------
#: a valid value other than the default for each key that moved out of trainer:, by its new name
MOVED_VALUES = {
    "precision.compute": "bf16", "multitask.sampler": "annealed", "multitask.temperature": 3.0,
    "multitask.schedule_per_task": False, "multitask.optimizer_state": "per-task", "multitask.head_lr_scale": 5.0,
    "multitask.task_weighting": "uncertainty", "multitask.best_per_task": True, "checkpoint.keep_last": 3,
    "checkpoint.save_every": 7, "checkpoint.save_minutes": None, "checkpoint.resume": "never",
    "logging.log_every": 5, "logging.report_to": ["none"], "logging.tensorboard": False, "logging.plots": False,
    "logging.progress": False, "performance.group_by_length": False, "performance.compile": True,
    "performance.fast_dropout": False, "performance.heap_reuse": True, "performance.gradient_checkpointing": True,
}
SECTIONS = ("trainer", "precision", "multitask", "checkpoint", "logging", "performance")


def _cli_config(*argv: str) -> RunConfig:
    from nlpkit.apps.cli import _parser, build_config

    args, _ = _parser().parse_known_args(["train", *argv])
    return build_config(args)


def _notices(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "nlpkit.config"]


def test_the_alias_table_covers_every_moved_key_and_nothing_else():
    import dataclasses

    moved = {f"{s}.{f.name}" for s in SECTIONS[1:]
             for f in dataclasses.fields(RunConfig.__dataclass_fields__[s].default_factory)}
    assert set(RENAMED.values()) == moved == set(MOVED_VALUES)
    assert all(old.startswith("trainer.") for old in RENAMED)
    assert not {old.split(".")[1] for old in RENAMED} & {f.name for f in dataclasses.fields(TrainerConfig)}


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_each_old_key_lands_at_its_new_place(old, caplog):
    new = RENAMED[old]
    value = MOVED_VALUES[new]
    cfg = RunConfig.from_dict({"tasks": [{"type": "ner"}], "trainer": {old.split(".")[1]: value, "lr": 1e-3}})
    section, key = new.split(".")
    assert getattr(getattr(cfg, section), key) == value and cfg.trainer.lr == 1e-3
    assert cfg.to_dict()[section][key] == value
    assert _notices(caplog) == [f"renamed config keys: {old} is now {new}; the old names still work in this "
                                "release and go in the next"]


def test_the_notice_is_one_line_for_the_whole_config_naming_old_and_new(caplog):
    cfg = {"tasks": [{"type": "ner"}], "trainer": {"sampler": "round-robin", "log_every": 3, "precision": "fp32"}}
    RunConfig.from_dict(cfg, "r.yaml")
    said = _notices(caplog)
    assert len(said) == 1 and "\n" not in said[0], said
    assert said[0].startswith("r.yaml: renamed config keys: ")
    for old, new in [("trainer.sampler", "multitask.sampler"), ("trainer.log_every", "logging.log_every"),
                     ("trainer.precision", "precision.compute")]:
        assert f"{old} is now {new}" in said[0]
    assert "go in the next" in said[0]
    assert [r.levelname for r in caplog.records if r.name == "nlpkit.config"] == ["WARNING"]
    assert cfg["trainer"] == {"sampler": "round-robin", "log_every": 3, "precision": "fp32"}  # the caller's dict kept
    caplog.clear()
    RunConfig.from_dict({"tasks": [{"type": "ner"}], "multitask": {"sampler": "round-robin"}})
    assert _notices(caplog) == []  # the new names: nothing to say


def test_old_and_new_name_of_one_key_fail_naming_both(tmp_path, capsys):
    with pytest.raises(ConfigError, match="trainer.keep_last and checkpoint.keep_last are the same key"):
        RunConfig.from_dict({"tasks": [{"type": "ner"}], "trainer": {"keep_last": 2}, "checkpoint": {"keep_last": 3}})
    recipe = tmp_path / "r.yaml"
    recipe.write_text("tasks: [{type: ner}]\ntrainer: {precision: bf16}\nprecision: {compute: fp32}\n")
    assert main(["train", "--recipe", str(recipe), "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{recipe}: trainer.precision and precision.compute are the same key" in err, err
    assert not (tmp_path / "run").exists()


def test_errors_about_an_old_key_name_it_as_written():
    with pytest.raises(ConfigError, match=r"^trainer.log_every: must be positive"):
        RunConfig.from_dict({"tasks": [{"type": "ner"}], "trainer": {"log_every": 0}})
    with pytest.raises(ConfigError, match=r"^logging.log_every: must be positive"):
        RunConfig.from_dict({"tasks": [{"type": "ner"}], "logging": {"log_every": 0}})
    with pytest.raises(ConfigError, match=r"unknown key multitask.log_every"):  # a key in the wrong section
        RunConfig.from_dict({"tasks": [{"type": "ner"}], "multitask": {"log_every": 1}})


def test_to_dict_writes_the_sections_and_reads_back_equal(caplog):
    old = {"tasks": [{"type": "ner"}], "trainer": {"lr": 1e-3, "sampler": "temperature", "keep_last": 4,
                                                   "report_to": "none", "compile": True, "precision": "bf16"}}
    cfg = RunConfig.from_dict(old)
    saved = cfg.to_dict()
    assert list(saved)[:8] == ["tasks", "backbone", *SECTIONS]
    assert not {"sampler", "keep_last", "report_to", "compile", "precision"} & set(saved["trainer"])
    assert (saved["multitask"]["sampler"], saved["checkpoint"]["keep_last"], saved["logging"]["report_to"],
            saved["performance"]["compile"], saved["precision"]["compute"]) == ("temperature", 4, ["none"], True, "bf16")
    caplog.clear()
    import json

    assert RunConfig.from_dict(json.loads(json.dumps(saved))) == cfg
    assert _notices(caplog) == []


def test_cli_set_with_an_old_key_still_works_and_overrides_the_recipe(tmp_path, caplog):
    assert _cli_config("--task", "ner", "--set", "trainer.log_every=5").logging.log_every == 5
    assert _notices(caplog) == ["renamed config keys: trainer.log_every is now logging.log_every; the old names "
                                "still work in this release and go in the next"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("tasks: [{type: ner}]\nlogging: {log_every: 10}\n")
    assert _cli_config("--recipe", str(recipe), "--set", "trainer.log_every=5").logging.log_every == 5
    recipe.write_text("tasks: [{type: ner}]\ntrainer: {log_every: 10, precision: bf16, resume: never}\n")
    caplog.clear()
    cfg = _cli_config("--recipe", str(recipe), "--set", "logging.log_every=5", "--precision", "fp32",
                      "--report-to", "none", "--no-progress", "--resume", "auto")
    assert (cfg.logging.log_every, cfg.precision.compute, cfg.logging.report_to, cfg.logging.progress,
            cfg.checkpoint.resume) == (5, "fp32", ["none"], False, "auto")
    said = _notices(caplog)
    assert len(said) == 1 and said[0].startswith(f"{recipe}: renamed config keys: ") and "trainer.resume" in said[0]


def test_a_recipe_with_old_keys_still_trains(tmp_path, caplog, capsys):
    import json

    recipe, out = tmp_path / "old.yaml", tmp_path / "run"
    recipe.write_text("tasks: [{type: ner}]\nbackbone: {spec: mini, vocab_size: 400}\n"
                      "trainer: {max_steps: 3, batch_size: 8, eval_every: 3, eval_max_examples: 32, cpu: true,\n"
                      "          log_every: 1, keep_last: 2, plots: false, report_to: none, precision: fp32,\n"
                      "          sampler: round-robin, fast_dropout: false}\n")
    assert main(["train", "--recipe", str(recipe), "--output-dir", str(out), "--no-progress"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["logging"]["log_every"], saved["checkpoint"]["keep_last"], saved["precision"]["compute"],
            saved["multitask"]["sampler"], saved["performance"]["fast_dropout"]) == (1, 2, "fp32", "round-robin", False)
    assert len((out / "log.jsonl").read_text().splitlines()) >= 3  # log_every 1: a record each step
    said = _notices(caplog)
    assert len(said) == 1 and "trainer.log_every is now logging.log_every" in said[0], said


def _to_old_form(config: dict) -> dict:
    """A saved config as nlpkit wrote it before the sections: their keys flat under trainer:."""
    config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    for old, new in RENAMED.items():
        section, key = new.split(".")
        config["trainer"][old.split(".")[1]] = config[section].pop(key)
    for section in SECTIONS[1:]:
        assert config.pop(section) == {}
    return config


def test_the_resume_check_reads_an_old_saved_config_as_the_same_settings():
    from nlpkit.engine.train_state import run_settings

    new = RunConfig.from_dict({"tasks": [{"type": "ner"}], "multitask": {"sampler": "annealed"}}).to_dict()
    old = _to_old_form(new)
    assert "sampler" in old["trainer"] and "multitask" not in old
    assert run_settings(old) == run_settings(new) and run_settings(new)["multitask.sampler"] == "annealed"


def test_a_run_written_by_older_code_resumes_evaluates_and_predicts(tmp_path, caplog, capsys):
    """Its saved configs say trainer.log_every etc.: resuming it (with its own config or a recipe), evaluating
    and predicting need nothing from the user, and say nothing about keys they never wrote."""
    import json

    out = tmp_path / "run"
    base = ["--max-steps", "2", "--no-progress", "--eval-max-examples", "32", "--set", "trainer.eval_every=2",
            "--set", "trainer.cpu=true", "--set", "backbone.vocab_size=400", "--backbone", "mini",
            "--batch-size", "8", "--report-to", "none", "--set", "logging.plots=false"]
    assert main(["train", "--task", "ner", "--output-dir", str(out), *base]) == 0
    files = [out / "config.json", *out.glob("checkpoints/step-*/trainer_state.json"), out / "best" / "nlpkit.json"]
    for path in files:
        data = json.loads(path.read_text())
        if "config" in data:
            data["config"] = _to_old_form(data["config"])
        else:
            data = _to_old_form(data)
        path.write_text(json.dumps(data))
    capsys.readouterr()
    caplog.clear()
    assert main(["train", "--resume", str(out), "--max-steps", "4", "--no-progress"]) == 0
    said = capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["resumed_from"] == [2], said.out + said.err
    changed = [line for line in said.out.splitlines() if " was " in line and ", now " in line]
    assert changed and all("trainer.max_steps was 2, now 4" in line for line in changed), changed
    assert _notices(caplog) == []  # the old names were nlpkit's own, in its own files
    dev = tmp_path / "dev.conll"
    dev.write_text("\n\n".join((ROOT / "tasks" / "data" / "ner" / "dev.conll").read_text().split("\n\n")[:20]) + "\n")
    assert main(["evaluate", str(out), "--data", f"dev={dev}", "--no-report"]) == 0
    assert main(["predict", str(out), "--json", "John lives in Paris ."]) == 0
    assert "John" in capsys.readouterr().out
