"""trainer.report_to: MLflow and W&B through their own libraries, read back through their own tools (no mocks).

MLflow: a real store in a local SQLite file (recent MLflow refuses a plain ``file:`` store), telemetry off,
read back with ``MlflowClient``. W&B: an offline run (the default when WANDB_MODE is unset), read back from
its ``.wandb`` transaction log with wandb's own reader (``wandb.sdk.internal.datastore``, what
``wandb sync --view`` reads). Each skips when its library is not installed; the dev extra installs both.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nlpkit.engine import tracking
from nlpkit.apps.cli import main
from nlpkit.engine.config import RunConfig
from nlpkit.sdk.errors import ConfigError


def train_ner(out: Path, *flags: str) -> None:
    """`nlpkit train --task ner` on the built-in sample data: 4 steps, a log line each, evaluations at 2 and 4."""
    assert main(["train", "--task", "ner", "--output-dir", str(out), "--max-steps", "4", "--no-progress",
                 "--eval-max-examples", "64", "--set", "trainer.eval_every=2", "--set", "trainer.log_every=1",
                 "--set", "trainer.cpu=true", *flags]) == 0


# ---- the config key ------------------------------------------------------------------------------------
def trainer_of(**trainer):
    """The logging section of a config that names its keys as before the split (trainer.report_to): the old
    names still work, and errors name the key as it was written."""
    return RunConfig.from_dict({"tasks": [{"type": "ner"}], "trainer": trainer}).logging


def test_report_to_takes_a_list_a_name_or_a_comma_separated_string_and_tensorboard_is_the_default():
    default = trainer_of()
    assert default.report_to == ["tensorboard"] and tracking.selected(default.report_to, default.tensorboard) == ["tensorboard"]
    assert trainer_of(report_to="mlflow").report_to == ["mlflow"]
    assert trainer_of(report_to="mlflow,wandb").report_to == ["mlflow", "wandb"]
    assert trainer_of(report_to=["wandb", "tensorboard"]).report_to == ["wandb", "tensorboard"]
    none = trainer_of(report_to="none")
    assert tracking.selected(none.report_to, none.tensorboard) == []


def test_trainer_tensorboard_stays_an_alias_on_top_of_report_to():
    assert tracking.selected(["tensorboard"], False) == []  # tensorboard: false, as in older recipes
    assert tracking.selected(["mlflow"], True) == ["tensorboard", "mlflow"]
    assert tracking.selected(["tensorboard", "mlflow"], False) == ["mlflow"]
    assert tracking.selected(["mlflow"], None) == ["mlflow"]


@pytest.mark.parametrize("value, words", [
    ("comet", "unknown tracker 'comet'"),
    ("none,mlflow", "'none' cannot be combined"),
    (3, "expected a list"),
])
def test_a_bad_report_to_names_the_key(value, words):
    with pytest.raises(ConfigError, match="trainer.report_to") as err:
        trainer_of(report_to=value)
    assert words in str(err.value)


def test_a_tracker_that_is_not_installed_fails_before_the_run_folder_exists(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(tracking.PACKAGES, "mlflow", ("nlpkit_no_such_module", "nlpkit[mlflow]"))
    out = tmp_path / "run"
    assert main(["train", "--task", "ner", "--output-dir", str(out), "--report-to", "mlflow", "--no-progress"]) != 0
    assert ("logging.report_to: mlflow needs the nlpkit_no_such_module package: pip install 'nlpkit[mlflow]'"
            in capsys.readouterr().err)
    assert not out.exists()


def test_flatten_gives_dotted_params():
    assert tracking.flatten({"trainer": {"lr": 1e-3, "report_to": ["mlflow"]}, "tasks": [{"type": "ner", "data": {}}]}) \
        == {"trainer.lr": 1e-3, "trainer.report_to": ["mlflow"], "tasks.0.type": "ner", "tasks.0.data": {}}


class Broken(tracking.Tracker):
    name = "broken"

    def __init__(self):
        self.calls = []

    def log_metrics(self, step, values):
        self.calls.append(step)
        raise OSError("the server went away")

    def close(self, failed):
        self.calls.append(("close", failed))


def test_a_tracker_that_fails_while_training_is_dropped_with_one_line_and_the_others_go_on(capsys):
    from nlpkit.engine.run_log import RunLog

    broken, quiet = Broken(), tracking.Tracker()
    tracks = tracking.Tracking([broken, quiet], RunLog(Path("."), main=True, start=False))
    tracks.log_metrics(1, {"lr": 0.1})
    tracks.log_metrics(2, {"lr": 0.1})
    tracks.finish({"steps": 2, "tasks": {}})
    assert broken.calls == [1, ("close", True)] and tracks.trackers == [quiet]
    assert "broken: log_metrics failed (OSError: the server went away); no more tracking there" in capsys.readouterr().out


# ---- MLflow --------------------------------------------------------------------------------------------
@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'nlpkit[mlflow]')")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "nlpkit-test")
    monkeypatch.chdir(tmp_path)  # the store's default artifact root is ./mlruns
    return uri


def test_mlflow_run_has_params_metric_histories_dev_scores_and_artifacts(tmp_path, mlflow_store):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "run"
    train_ner(out, "--report-to", "mlflow")
    saved = json.loads((out / "tracking.json").read_text())["mlflow"]
    assert saved["tracking_uri"] == mlflow_store
    client = MlflowClient(tracking_uri=mlflow_store)
    run = client.get_run(saved["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "nlpkit-test"
    assert run.data.tags["nlpkit.run_dir"] == str(out.resolve())
    # params: the run config, flattened
    params = run.data.params
    assert params["tasks.0.type"] == "ner" and params["trainer.max_steps"] == "4"
    assert params["logging.report_to"] == '["mlflow"]' and params["backbone.spec"] == "tiny"
    # per-step metrics: every log step, the same numbers as log.jsonl
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss/ner" in r]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss/ner")] == \
        pytest.approx([r["loss/ner"] for r in steps])
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train/lr")] == pytest.approx([r["lr"] for r in steps])
    assert len(client.get_metric_history(run.info.run_id, "train/samples_per_s")) == 4
    # dev scores at each evaluation
    evals = [r for r in log if "eval" in r]
    f1 = client.get_metric_history(run.info.run_id, "dev/ner/f1")
    assert [m.step for m in f1] == [2, 4] and [m.value for m in f1] == pytest.approx([r["eval"]["ner"]["f1"] for r in evals])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "dev/selection_score")] == [2, 4]
    # the final metrics: metrics.json's
    final = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["final/ner/f1"] == pytest.approx(final["tasks"]["ner"]["f1"])
    assert run.data.metrics["final/best_step"] == final["best_step"] and run.data.metrics["final/steps"] == 4
    # the run folder's small files, never the weights
    def listed(path=None):
        for a in client.list_artifacts(run.info.run_id, path):
            yield from listed(a.path) if a.is_dir else [a.path]

    assert sorted(listed()) == ["best/nlpkit.json", "config.json", "curves/ner.png", "log.jsonl", "metrics.json"]
    assert not (out / "tensorboard").exists()  # report_to lists exactly the trackers


def test_a_resumed_run_continues_its_mlflow_run(tmp_path, mlflow_store):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "run"
    train_ner(out, "--report-to", "mlflow,tensorboard", "--max-steps", "2", "--set", "logging.plots=false")
    first = json.loads((out / "tracking.json").read_text())["mlflow"]["run_id"]
    train_ner(out, "--report-to", "mlflow,tensorboard", "--set", "logging.plots=false")  # resume auto: steps 3-4
    assert json.loads((out / "tracking.json").read_text())["mlflow"]["run_id"] == first
    client = MlflowClient(tracking_uri=mlflow_store)
    assert [m.step for m in client.get_metric_history(first, "loss")] == [1, 2, 3, 4]
    assert client.get_run(first).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(first).info.experiment_id])) == 1
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


# ---- Weights & Biases ----------------------------------------------------------------------------------
def read_offline_run(run_dir: Path, wait_s: float = 20.0) -> dict:
    """The config, history rows, summary and artifacts of an offline run, from its .wandb file through
    wandb's own reader (the records are wandb's protobufs). wandb's service process writes the file: the last
    records (the final step's row, the exit record) may land a moment after ``run.finish()`` returned, so the
    file is read again until it holds the exit record."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        seen = _read_records(run_dir)
        if "exit" in seen["kinds"] or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def _read_records(run_dir: Path) -> dict:
    datastore = pytest.importorskip("wandb.sdk.internal.datastore",
                                    reason="this wandb has no offline reader (removed in 0.30; the dev extra pins <0.30)")
    from wandb.proto import wandb_internal_pb2

    store = datastore.DataStore()
    store.open_for_scan(str(next(run_dir.glob("*.wandb"))))
    seen: dict = {"config": {}, "history": [], "summary": {}, "artifacts": [], "kinds": []}
    try:
        while (data := store.scan_data()) is not None:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            kind = record.WhichOneof("record_type")
            seen["kinds"].append(kind)
            if kind in ("run", "config"):
                updates = record.run.config.update if kind == "run" else record.config.update
                seen["config"].update({u.key: json.loads(u.value_json) for u in updates})
            elif kind == "history":
                seen["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
            elif kind == "summary":
                seen["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update})
            elif kind == "artifact":
                seen["artifacts"].append((record.artifact.type, sorted(e.path for e in record.artifact.manifest.contents)))
    except AssertionError:  # a record still being written: read again
        pass
    finally:
        store.close()
    return seen


def test_wandb_is_offline_by_default_and_its_run_has_config_history_and_artifact(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install 'nlpkit[wandb]')")
    for var in ("WANDB_MODE", "WANDB_DIR", "WANDB_API_KEY", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # no ~/.config/wandb settings
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    out = tmp_path / "run"
    train_ner(out, "--report-to", "wandb", "--set", "logging.plots=false")
    saved = json.loads((out / "tracking.json").read_text())["wandb"]
    run_dir = Path(saved["dir"])
    assert saved["mode"] == "offline" and run_dir.name.startswith("offline-run-")
    assert run_dir.parent == out / "wandb"  # WANDB_DIR unset: inside the run folder
    seen = read_offline_run(run_dir)
    config = seen["config"]
    assert config["tasks"][0]["type"] == "ner" and config["trainer"]["max_steps"] == 4
    assert config["logging"]["report_to"] == ["wandb"]
    rows = seen["history"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["_step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert [r["loss/ner"] for r in rows if "loss/ner" in r] == pytest.approx([r["loss/ner"] for r in log if "loss/ner" in r])
    assert [r["_step"] for r in rows if "dev/ner/f1" in r] == [2, 4]
    final = json.loads((out / "metrics.json").read_text())
    assert seen["summary"]["final/ner/f1"] == pytest.approx(final["tasks"]["ner"]["f1"])
    assert seen["artifacts"] == [("nlpkit-run", ["best/nlpkit.json", "config.json", "log.jsonl", "metrics.json"])]


def test_wandb_dir_is_obeyed(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install 'nlpkit[wandb]')")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    out = tmp_path / "run"
    train_ner(out, "--report-to", "wandb", "--max-steps", "1", "--set", "logging.plots=false")
    run_dir = Path(json.loads((out / "tracking.json").read_text())["wandb"]["dir"])
    assert run_dir.parent == tmp_path / "wb" / "wandb" and not (out / "wandb").exists()
    assert [r["_step"] for r in read_offline_run(run_dir)["history"] if "loss" in r] == [1]
