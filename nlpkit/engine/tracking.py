"""Experiment tracking: TensorBoard, MLflow and Weights & Biases behind one small interface.

``logging.report_to`` (``--report-to``) lists the trackers; the trainer calls, on the main process only,
``start(params)`` once, ``log_metrics(step, values)`` at each log step, ``log_eval(step, metrics, score)``
at each evaluation and ``finish(result)`` at the end (``close()`` always, also after an error). Each tracker
talks to its own library, imported only when it is asked for:

- **tensorboard**: event files in ``<run>/tensorboard`` (torch's SummaryWriter); on by default.
- **mlflow**: one MLflow run per nlpkit run, through ``MlflowClient`` (no global active run is touched). The
  store is ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory (what ``mlflow ui``
  opens there); the experiment is ``$MLFLOW_EXPERIMENT_NAME``, else ``nlpkit``. MLflow's usage telemetry is
  turned off unless ``MLFLOW_DISABLE_TELEMETRY`` is set.
- **wandb**: one W&B run, **offline unless ``WANDB_MODE=online``** (``WANDB_MODE`` is obeyed as set; an API key
  alone never puts a run online); files in ``$WANDB_DIR``, else the run folder (``<run>/wandb``); project
  ``$WANDB_PROJECT``, else ``nlpkit``. ``wandb sync <run>/wandb/offline-run-*`` uploads an offline run later.
  A run that is not online also has wandb's error reports (Sentry) off unless ``WANDB_ERROR_REPORTING`` is set.

What is logged: the run config (MLflow: flattened params ``trainer.lr``, ``tasks.0.type``...; W&B: the nested
config), each log step's ``loss``, ``loss/<task>``, ``train/lr``, ``train/samples_per_s``,
``train/tokens_per_s``, ``train/grad_norm``..., each evaluation's ``dev/<task>/<metric>`` and
``dev/selection_score``, and at the end the final metrics (``final/...``) and the run folder's small files as
artifacts (config.json, metrics.json, log.jsonl, best/nlpkit.json, curves/*.png), never the weights.

The ids of the MLflow and W&B runs are kept in ``<run>/tracking.json``: a resumed nlpkit run continues the
same tracker runs. A tracker that fails while the run trains (a server gone) says so in one line and stops;
it never costs the run.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from ..sdk.errors import ConfigError

#: the trackers logging.report_to accepts ("none" alone: no tracker)
TRACKERS = ("tensorboard", "mlflow", "wandb")
#: where a tracker's library comes from
PACKAGES = {"mlflow": ("mlflow", "nlpkit[mlflow]"), "wandb": ("wandb", "nlpkit[wandb]")}
#: the run folder's files that go to the trackers as artifacts (small: never the weights)
ARTIFACTS = ("config.json", "metrics.json", "log.jsonl", "best/nlpkit.json", "curves/*.png")
#: <run>/tracking.json: the tracker runs of this nlpkit run, continued on resume
STATE_FILE = "tracking.json"


def check_names(names: Sequence[str], key: str) -> None:
    """logging.report_to's validation: known names, and "none" only alone."""
    unknown = [n for n in names if n not in (*TRACKERS, "none")]
    if unknown:
        raise ConfigError(f"{key}: unknown tracker {unknown[0]!r}; expected a list of {', '.join(TRACKERS)} "
                          "(or none)")
    if "none" in names and len(names) > 1:
        raise ConfigError(f"{key}: 'none' cannot be combined with trackers, got {', '.join(names)}")


def selected(report_to: Sequence[str], tensorboard: bool | None) -> list[str]:
    """The trackers of a run: ``report_to`` with the older ``logging.tensorboard`` switch applied on top
    (true adds tensorboard, false removes it, null leaves report_to as it is)."""
    names = [n for n in dict.fromkeys(report_to) if n != "none"]
    if tensorboard is True and "tensorboard" not in names:
        names.insert(0, "tensorboard")
    elif tensorboard is False:
        names = [n for n in names if n != "tensorboard"]
    return names


def require_libraries(names: Sequence[str]) -> None:
    """Before the run folder is touched: a tracker that was asked for must be installed (TensorBoard, on by
    default, is only a note when it is missing)."""
    for name in names:
        if name in PACKAGES and importlib.util.find_spec(PACKAGES[name][0]) is None:
            raise ConfigError(f"logging.report_to: {name} needs the {PACKAGES[name][0]} package: "
                              f"pip install '{PACKAGES[name][1]}'")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"trainer": {"lr": 1e-3}, "tasks": [{"type": "ner"}]} -> {"trainer.lr": 1e-3, "tasks.0.type": "ner"}."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(value, (list, tuple)) and value and any(isinstance(v, (dict, list, tuple)) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: value}


def numbers(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of ``values`` (booleans, strings, None and NaN are not metrics)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def train_names(values: dict[str, Any]) -> dict[str, float]:
    """One naming for every tracker: keys with a "/" as they are (loss/<task>), others under train/."""
    return {(k if "/" in k or k == "loss" else f"train/{k}"): v for k, v in numbers(values).items()}


def eval_names(metrics: dict[str, dict[str, Any]], score: float) -> dict[str, float]:
    return numbers({"dev/selection_score": score,
                    **{f"dev/{task}/{k}": v for task, m in metrics.items() for k, v in m.items()}})


def final_names(result: dict[str, Any]) -> dict[str, float]:
    """metrics.json's numbers: the selected model's dev scores and the run's totals, under final/."""
    tasks = result.get("tasks") or {}
    return numbers({**{f"final/{k}": v for k, v in result.items() if k != "tasks"},
                    **{f"final/{task}/{k}": v for task, m in tasks.items() for k, v in m.items()}})


def artifact_files(out: Path) -> list[Path]:
    files: list[Path] = []
    for pattern in ARTIFACTS:
        files.extend(sorted(p for p in out.glob(pattern) if p.is_file()))
    return files


class Tracker:
    """One tracker; the base does nothing."""

    name = "tracker"

    def start(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, step: int, values: dict[str, float]) -> None: ...

    def finish(self, final: dict[str, float], out: Path) -> None: ...

    def close(self, failed: bool) -> None: ...

    def saved_state(self) -> dict[str, Any] | None:
        return None


class TensorBoardTracker(Tracker):
    """Event files in <run>/tensorboard, when the tensorboard package is installed."""

    name = "tensorboard"

    def __init__(self, out: Path, log: Any, purge_step: int | None):
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("TensorBoard: the tensorboard package is not installed, no event files (pip install 'nlpkit[viz]')")
            return
        # purge_step drops the events a killed run wrote after its last checkpoint (they are replayed)
        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=purge_step)

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if key != "loss":  # loss/<task> is there already; the event files stay as they were
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self, failed: bool) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MlflowTracker(Tracker):
    """One MLflow run through MlflowClient: params, metric histories, artifacts."""

    name = "mlflow"

    def __init__(self, out: Path, saved: dict[str, Any] | None):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
        if saved and saved.get("tracking_uri") and not os.environ.get("MLFLOW_TRACKING_URI"):
            self.uri = saved["tracking_uri"]  # a resumed run goes on in the store it began in
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id: str | None = None
        self.resumed = False
        if saved and saved.get("run_id"):
            try:
                self.client.get_run(saved["run_id"])
                self.run_id, self.resumed = saved["run_id"], True
                self.client.update_run(self.run_id, status="RUNNING")
            except Exception:  # not in this store: a new run
                self.run_id = None
        if self.run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "nlpkit"
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run = self.client.create_run(experiment_id, run_name=out.name, tags={"nlpkit.run_dir": str(out.resolve())})
            self.run_id = run.info.run_id

    def saved_state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.uri}

    def start(self, params: dict[str, Any]) -> None:
        if self.resumed:  # logged when the run began; MLflow refuses a param whose value changes
            return
        from mlflow.entities import Param

        items = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)[:6000])
                 for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def finish(self, final: dict[str, float], out: Path) -> None:
        self.log_metrics(int(final.get("final/steps", 0)), final)
        for path in artifact_files(out):
            folder = path.parent.relative_to(out).as_posix()
            self.client.log_artifact(self.run_id, str(path), None if folder == "." else folder)

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


class WandbTracker(Tracker):
    """One W&B run, offline unless WANDB_MODE=online."""

    name = "wandb"

    def __init__(self, out: Path, saved: dict[str, Any] | None, config: dict[str, Any]):
        mode = os.environ.get("WANDB_MODE") or "offline"  # never online by surprise
        if mode != "online":  # nor its error reports (Sentry), which wandb sends unless told; set before the import
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        import wandb

        folder = os.environ.get("WANDB_DIR") or str(out)
        Path(folder).mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(console=os.environ.get("WANDB_CONSOLE") or "off", silent=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "nlpkit", name=out.name, dir=folder,
                              mode=mode, config=config, settings=settings, reinit="create_new",
                              **({"id": saved["id"], "resume": "allow"} if saved and saved.get("id") else {}))

    def saved_state(self) -> dict[str, Any]:
        # the run's folder (what `wandb sync` takes); run.dir is its files/ subfolder
        return {"id": self.run.id, "dir": str(Path(self.run.dir).parent.resolve()),
                "mode": os.environ.get("WANDB_MODE") or "offline"}

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def finish(self, final: dict[str, float], out: Path) -> None:
        import wandb

        self.run.summary.update(final)
        artifact = wandb.Artifact(f"run-{self.run.id}", type="nlpkit-run",
                                  description=f"nlpkit run folder {out.resolve()} (without weights)")
        for path in artifact_files(out):
            artifact.add_file(str(path), name=path.relative_to(out).as_posix())
        self.run.log_artifact(artifact)

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class Tracking:
    """The run's trackers, one call each; an empty Tracking (other processes, report_to none) does nothing."""

    def __init__(self, trackers: Sequence[Tracker] = (), log: Any = None, out: Path | None = None):
        self.trackers, self.log, self.out = list(trackers), log, out
        self.finished = False

    @classmethod
    def open(cls, names: Sequence[str], out: Path, log: Any, config: dict[str, Any], step: int = 0,
             resumed: bool = False) -> "Tracking":
        """Start the named trackers for the run folder ``out`` at ``step``; a ``resumed`` run continues the tracker
        runs that <run>/tracking.json names."""
        saved: dict[str, Any] = {}
        path = out / STATE_FILE
        if resumed and path.is_file():
            try:
                saved = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                saved = {}
        trackers: list[Tracker] = []
        for name in names:
            try:
                if name == "tensorboard":
                    # purge_step hides events of steps after ours that an earlier session wrote in this folder
                    trackers.append(TensorBoardTracker(out, log, purge_step=step + 1))
                elif name == "mlflow":
                    trackers.append(MlflowTracker(out, saved.get("mlflow")))
                elif name == "wandb":
                    trackers.append(WandbTracker(out, saved.get("wandb"), config))
            except Exception as exc:  # before the first step: say so rather than train a run nobody tracks
                cls(trackers, log, out).close(failed=True)
                raise ConfigError(f"logging.report_to: {name} could not start a run: "
                                  f"{type(exc).__name__}: {exc}") from exc
        self = cls(trackers, log, out)
        state = {t.name: t.saved_state() for t in trackers if t.saved_state() is not None}
        if state:  # a tracker left out of this session keeps its id for a later one
            path.write_text(json.dumps({**saved, **state}, indent=2) + "\n")
            for t in trackers:
                if t.name == "mlflow":
                    log.info(f"MLflow: run {t.run_id} in {t.uri}")
                elif t.name == "wandb":
                    log.info(f"W&B: run {t.run.id} ({state['wandb']['mode']}) in {state['wandb']['dir']}")
        return self

    def _each(self, what: str, *args: Any) -> None:
        for t in list(self.trackers):
            try:
                getattr(t, what)(*args)
            except Exception as exc:  # a tracker must never cost the user the run
                if self.log is not None:
                    self.log.info(f"{t.name}: {what} failed ({type(exc).__name__}: {exc}); no more tracking there")
                self.trackers.remove(t)
                try:
                    t.close(failed=True)
                except Exception:
                    pass

    def start(self, params: dict[str, Any]) -> None:
        self._each("start", params)

    def log_metrics(self, step: int, values: dict[str, Any]) -> None:
        self._each("log_metrics", step, train_names(values))

    def log_eval(self, step: int, metrics: dict[str, dict[str, Any]], score: float) -> None:
        self._each("log_metrics", step, eval_names(metrics, score))

    def finish(self, result: dict[str, Any]) -> None:
        """The final metrics (metrics.json) and the run folder's small files; then the tracker runs end."""
        self._each("finish", final_names(result), self.out)
        self.close(failed=False)

    def close(self, failed: bool = True) -> None:
        """End every tracker run; one not finished by ``finish`` ended in an error or an interruption."""
        if self.finished:
            return
        self.finished = True
        self._each("close", failed)
