"""The task-plugin contract test: ``check_task(MyTask, train=..., dev=...)`` in a plugin's own test suite.

What AllenNLP's ``ensure_model_can_train_save_and_load`` did for its models: train a few steps of a tiny
from-scratch backbone through the public ``nlpkit.train``, save, reload with ``nlpkit.load``, and check
the promises the core relies on but cannot see inside a plugin. Each failed check says what to fix;
all of them are reported at once (an ``AssertionError`` listing every failed check), so one run tells
a plugin author everything.

The checks, in the order they run (``CHECKS`` holds these texts; docs/plugins.md explains them):

- ``read``: the train and dev files read into examples; the first ``max_examples`` of each are used,
  and dev examples the task's ``check()`` rejects after ``fit()`` on that slice are dropped;
- ``state_dict``: after ``fit()``, ``state_dict()`` is JSON-serialisable and a fresh instance given it
  by ``load_state_dict()`` returns an equal one (what a checkpoint's nlpkit.json relies on);
- ``bad_input``: bad input raises ``DataError`` naming the file and line (``bad={path: line}``; by
  default a copy of the train file with a non-UTF-8 byte on a known line);
- ``train``: a few steps of ``nlpkit.train`` run to the end and save a checkpoint;
- ``main_score``: ``score()`` returns the task's ``main_score`` as a finite number, and every score is
  JSON-serialisable (metrics.json);
- ``json``: one prediction per dev example, each JSON-serialisable, and ``format_prediction`` a str;
- ``reload``: the checkpoint loaded with ``nlpkit.load`` has the trained weights, predicts exactly what
  the trained model in memory predicted on the dev examples, and scores what training recorded at its
  last evaluation (this is what catches a head that comes back random);
- ``predict``: ``parse_input`` + ``predict`` + ``format`` work for one raw input (the first dev example
  as a JSON record, or ``raw_input=``), the ``nlpkit predict`` path.

A plugin class that is not registered is registered under a temporary name for the check and
unregistered afterwards. Training runs through the engine's ``Trainer`` on a task instance whose ``read``
(on that instance only; the plugin class is left alone) hands it the prepared slices; the trainer keeps the
model it trained, so the model in memory at the end of training, or at the point training failed, can be
compared with the reloaded one (where there is none, a first load of the checkpoint stands in for it, and
the two loads, under different seeds, must agree). Importing this module is cheap; torch is imported when a
check runs.
"""
from __future__ import annotations

import contextlib
import copy
import gzip
import io
import json
import math
import random
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from .sdk.errors import DataError
from .sdk.task import Task

__all__ = ["check_task", "ContractReport", "CheckResult", "ContractError", "CHECKS"]

#: every check, in the order it runs, with what it promises
CHECKS: dict[str, str] = {
    "read": "the train and dev files read into examples (the first max_examples of each)",
    "state_dict": "state_dict() after fit() is JSON-serialisable and round-trips through load_state_dict()",
    "bad_input": "bad input raises DataError naming the file and the line",
    "train": "a few steps of nlpkit.train run to the end and save a checkpoint",
    "encode": "encode() on batches of a few examples gives what one call over all of them gives, as JSON rows "
              "(the core encodes a split a batch at a time into a cached Arrow table)",
    "main_score": "score() returns main_score as a finite number; every score is JSON-serialisable",
    "json": "one prediction per example, each JSON-serialisable; format_prediction() returns a str",
    "reload": "nlpkit.load gives back the trained weights, the same predictions and the recorded scores",
    "predict": "parse_input + predict + format work for one raw input (the nlpkit predict path)",
}

#: a non-UTF-8 byte (é in Latin-1, the commonest wrong encoding) for the generic bad input
BAD_BYTE = b"\xe9"


@dataclass
class CheckResult:
    name: str
    status: str  # "passed", "failed", or "not run" (a check it needs failed)
    seconds: float = 0.0
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class ContractReport:
    """What ``check_task`` did: every check with its status and time, and where the run was saved."""

    task: str  # the registered (or temporary) type name the run used
    task_class: str
    checks: list[CheckResult] = field(default_factory=list)
    seconds: float = 0.0
    #: the run folder when ``output_dir`` was given (a temporary one is removed)
    output_dir: str | None = None

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "failed"]

    @property
    def passed(self) -> bool:
        return not self.failures and all(c.passed for c in self.checks)

    def __getitem__(self, name: str) -> CheckResult:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def summary(self) -> str:
        failed = self.failures
        head = (f"check_task({self.task_class} as {self.task!r}): "
                + (f"{len(failed)} of {len(self.checks)} checks failed" if failed else
                   f"all {len(self.checks)} checks passed") + f" in {self.seconds:.1f}s")
        lines = [head]
        for c in self.checks:
            lines.append(f"  {c.status.upper():8} {c.name} ({c.seconds:.1f}s)" + (f": {c.detail}" if c.detail else ""))
        return "\n".join(lines)

    __str__ = summary


class ContractError(AssertionError):
    """Raised by ``check_task`` when a check failed; ``.report`` holds every check."""

    def __init__(self, report: ContractReport):
        self.report = report
        super().__init__(report.summary())


class _Fail(Exception):
    """A check's own verdict (as opposed to an exception escaping from the plugin)."""


def check_task(
    task_class: type[Task],
    train: str | Path | None = None,
    dev: str | Path | None = None,
    *,
    options: Mapping[str, Any] | None = None,
    max_examples: int | None = 48,
    max_steps: int = 4,
    batch_size: int = 8,
    backbone: str | Mapping[str, Any] | None = None,
    trainer: Mapping[str, Any] | None = None,
    output_dir: str | Path | None = None,
    bad: Mapping[str | Path, int | None] | None = None,
    raw_input: str | dict | None = None,
    seed: int = 42,
    quiet: bool = True,
) -> ContractReport:
    """Train ``task_class`` for a few steps, save, reload, and check the plugin contract.

    ``train``/``dev``: data files in the task's format (default: the task's ``default_data()``; without
    a dev file the training file doubles as dev). ``options``: the task's options, as in a recipe's
    ``tasks[].options``. ``max_examples``: examples used from each file (None: all). ``backbone``: a
    spec or a ``backbone`` config mapping (default: the from-scratch ``mini`` preset with 400 tokens).
    ``trainer``: extra run settings by key name, each put in its config section (``lr``, ``log_every``;
    ``max_steps``, ``eval_every``, ``cpu`` and ``precision`` are set here: one evaluation, at the end, in fp32
    on the CPU). ``output_dir``: keep the run there (default:
    a temporary folder, removed). ``bad``: ``{path: expected_line}`` files that must raise DataError at
    that line (None: any line). ``raw_input``: the input for the ``predict`` check. ``quiet``: keep the
    trainer's output out of the test log (its last lines go into a failure's message).

    Returns a ``ContractReport``; raises ``ContractError`` (an AssertionError) listing every failed check.
    """
    if not (isinstance(task_class, type) and issubclass(task_class, Task)):
        raise TypeError(f"check_task needs a subclass of nlpkit.Task, got {task_class!r}")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be positive or None, got {max_examples}")
    started = time.perf_counter()
    contract = _Contract(task_class, dict(options or {}), max_examples, quiet)
    with contextlib.ExitStack() as stack:
        contract.type_name = stack.enter_context(_registered(task_class))
        stack.enter_context(_preserved_rng())
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nlpkit-check-")))
        run_dir = Path(output_dir) if output_dir is not None else scratch / "run"
        config = contract.config(run_dir, train, dev, backbone, trainer, max_steps, batch_size, seed)
        contract.run_all(config, run_dir, scratch, train, dev, bad, raw_input)
    report = ContractReport(contract.type_name, f"{task_class.__module__}.{task_class.__qualname__}",
                            contract.results, time.perf_counter() - started,
                            str(run_dir) if output_dir is not None else None)
    if not report.passed:
        raise ContractError(report)
    return report


# ---------------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------------
class _Contract:
    """State shared by the checks of one ``check_task`` call; each ``check_*`` raises _Fail to fail."""

    def __init__(self, cls: type[Task], options: dict[str, Any], max_examples: int | None, quiet: bool):
        self.cls, self.options, self.max_examples, self.quiet = cls, options, max_examples, quiet
        self.type_name = ""
        self.results: list[CheckResult] = []
        self.files: dict[str, str] = {}
        self.prepared: dict[str, list[dict]] = {}  # what the trainer's read() gets, by path
        self.train_examples: list[dict] = []  # after a dev_split carve, as fit() sees them
        self.dev_examples: list[dict] = []
        self.fitted: Task | None = None
        self.trainer: Any = None  # the engine's Trainer of the train check: its model and task, even after a failure
        self.metrics: dict[str, Any] | None = None
        self.trainer_output = ""
        self.eval_batch_size = 16
        self._memory: tuple[Task, Any, list[Any]] | None = None
        self.pipeline: Any = None
        self.run_dir = Path()

    # -- running -------------------------------------------------------------------------------------
    def run_all(self, config: dict[str, Any], run_dir: Path, scratch: Path, train: Any, dev: Any,
                bad: Mapping[str | Path, int | None] | None, raw_input: Any) -> None:
        self.eval_batch_size, self.run_dir = config["trainer"]["eval_batch_size"], run_dir
        self._run("read", lambda: self.check_read(train, dev))
        self._run("state_dict", self.check_state_dict, needs=["read"])
        self._run("bad_input", lambda: self.check_bad_input(bad, scratch), needs=["read"])
        config["tasks"][0]["data"] = dict(self.files)
        self._run("train", lambda: self.check_train(config), needs=["read"])
        # the model in memory exists once the trainer built it, even if training failed later (at scoring);
        # without it, these checks use the saved checkpoint
        needs = ["read"] if _trained_in_memory(self.trainer) is not None else ["read", "train"]
        self._run("encode", self.check_encode, needs=needs)
        self._run("main_score", self.check_main_score, needs=needs)
        self._run("json", self.check_json, needs=needs)
        self._run("reload", self.check_reload, needs=["train"])
        self._run("predict", lambda: self.check_predict(raw_input), needs=["reload"])

    def _run(self, name: str, fn: Callable[[], str | None], needs: Sequence[str] = ()) -> None:
        missing = [n for n in needs if not self._passed(n)]
        if missing:
            self.results.append(CheckResult(name, "not run", 0.0, f"needs {', '.join(missing)}"))
            return
        t0 = time.perf_counter()
        try:
            detail = fn() or ""
            status = "passed"
        except _Fail as exc:
            status, detail = "failed", str(exc)
        except Exception as exc:  # the plugin raised: say what and where, as a user would need it
            status, detail = "failed", _describe(exc)
        self.results.append(CheckResult(name, status, time.perf_counter() - t0, detail))

    def _passed(self, name: str) -> bool:
        return any(r.name == name and r.passed for r in self.results)

    def new_task(self) -> Task:
        return self.cls(self.type_name, self.options)

    # -- config --------------------------------------------------------------------------------------
    def config(self, run_dir: Path, train: Any, dev: Any, backbone: Any, trainer: Mapping[str, Any] | None,
               max_steps: int, batch_size: int, seed: int) -> dict[str, Any]:
        tc: dict[str, Any] = {"batch_size": batch_size, "eval_batch_size": 2 * batch_size, "log_every": max_steps,
                              "progress": False, "tensorboard": False, "plots": False, "save_minutes": None,
                              "resume": "never", "seed": seed}
        tc.update(trainer or {})
        # one evaluation, at the end (best/ is the last step), in fp32 on the CPU as the reload is: same numbers
        tc.update(max_steps=max_steps, eval_every=max_steps, cpu=True, precision="fp32")
        # the trainer gets the prepared slices through its task's read(): a data cache keyed by the files would
        # hand it a whole file read earlier
        from .engine import renamed_keys

        config = {"tasks": [{"type": self.type_name, "options": self.options}], "backbone": _backbone(backbone),
                  "trainer": tc, "output_dir": str(run_dir), "data": {"cache": False}}
        renamed_keys.upgrade(config)  # the flat keys above into their sections (logging.progress, precision.compute)
        return config

    # -- read ----------------------------------------------------------------------------------------
    def check_read(self, train: Any, dev: Any) -> str:
        task = self.new_task()
        files = {k: str(v) for k, v in (("train", train), ("dev", dev)) if v is not None} or task.default_data()
        if "train" not in files:
            raise _Fail(f"no training data: pass train=PATH ({self.cls.__name__}.default_data() gives "
                        f"{sorted(files) or 'nothing'})")
        self.files = {k: str(files[k]) for k in ("train", "dev") if k in files}
        train_slice = self._read_slice(task, self.files["train"])
        fraction = getattr(task.options, "dev_split", 0.0)
        if "dev" not in self.files and fraction:
            from .sdk.data import carve_dev_split

            self.train_examples, dev_slice = carve_dev_split(train_slice, fraction, task.options.dev_split_seed,
                                                             self.files["train"])
        else:
            if "dev" not in self.files:  # the training file doubles as dev
                self.files["dev"] = self.files["train"]
            self.train_examples = train_slice
            same = self.files["dev"] == self.files["train"]
            dev_slice = train_slice if same else self._read_slice(task, self.files["dev"])
        task.fit(copy.deepcopy(self.train_examples))
        self.fitted = task
        self.prepared = {self.files["train"]: train_slice}
        self.dev_examples = dev_slice  # the training file itself, or carved from it: what the trainer evaluates
        if self.files.get("dev", self.files["train"]) != self.files["train"]:  # a dev file of its own
            self.dev_examples = [ex for ex in dev_slice if _accepted(task, ex, self.files["dev"])]
            self.prepared[self.files["dev"]] = self.dev_examples
        if not self.dev_examples:
            raise _Fail(f"none of the {len(dev_slice)} dev examples passes check() after fit() on the first "
                        f"{len(self.train_examples)} training examples: raise max_examples or give another dev file")
        dropped = len(dev_slice) - len(self.dev_examples)
        return (f"{len(self.train_examples)} train, {len(self.dev_examples)} dev examples"
                + (f" ({dropped} dev examples with labels outside the training slice dropped)" if dropped else ""))

    def _read_slice(self, task: Task, path: str) -> Sequence[dict]:
        """A list (or generator) of example dicts, or a lazy Sequence of them that can ``subset()`` itself (a
        TextCorpus)."""
        examples = task.read(path)
        lazy = callable(getattr(examples, "subset", None)) and callable(getattr(examples, "__len__", None))
        if not lazy and not isinstance(examples, (list, dict, str, bytes)) and hasattr(examples, "__iter__"):
            examples = list(examples)  # a streaming reader: the trainer stores its rows in a table
        if not isinstance(examples, list) and not lazy:
            raise _Fail(f"read({path!r}) returned {type(examples).__name__}; it must return a list or generator of "
                        "example dicts (or a Sequence with subset(), as nlpkit.sdk.corpus.TextCorpus)")
        if task.tabular and not lazy:
            for ex in examples:
                try:
                    json.dumps(ex)
                except (TypeError, ValueError) as exc:
                    raise _Fail(f"read({path!r}) gave an example that is not JSON-serialisable ({exc}): {_short(ex)}; "
                                "the core keeps examples in an Arrow table as JSON (or set tabular = False)") from None
        if not len(examples):
            raise _Fail(f"read({path!r}) returned no examples")
        if not self.max_examples or len(examples) <= self.max_examples:
            return examples
        return examples.subset(range(self.max_examples)) if lazy else examples[: self.max_examples]

    # -- state_dict ----------------------------------------------------------------------------------
    def check_state_dict(self) -> str:
        state = self.fitted.state_dict()
        if not isinstance(state, dict):
            raise _Fail(f"state_dict() returned {type(state).__name__}; it must return a dict")
        saved = _json_round_trip(state, "state_dict()")
        fresh = self.new_task()
        fresh.load_state_dict(copy.deepcopy(saved))
        again = _json_round_trip(fresh.state_dict(), "state_dict() after load_state_dict()")
        difference = _difference(saved, again)
        if difference:
            raise _Fail(f"a fresh instance given load_state_dict(state) returns a different state_dict(): "
                        f"{difference}; load_state_dict must restore everything state_dict saves (checkpoints "
                        "rely on it)")
        return f"keys: {', '.join(sorted(saved)) or '(none)'}"

    # -- bad input -----------------------------------------------------------------------------------
    def check_bad_input(self, bad: Mapping[str | Path, int | None] | None, scratch: Path) -> str:
        if bad:
            problems = [p for path, line in bad.items() for p in [self._expect_data_error(str(path), line)] if p]
            if problems:
                raise _Fail("; ".join(problems))
            return f"{len(bad)} bad file(s) raised DataError at the expected line"
        path, line = _corrupted_copy(self.files["train"], scratch / "bad-input")
        # read() only: check() would reject labels of the whole file that the training slice lacks
        problem = self._expect_data_error(str(path), line, f"a copy of {self.files['train']} with the non-UTF-8 "
                                          f"byte 0x{BAD_BYTE.hex()} on line {line}", check=False)
        if problem:
            raise _Fail(problem + "; read files through nlpkit.sdk.data.open_text, the shared reader that reports bad "
                        "bytes as DataError(message, path, line), or, for a format that is not UTF-8 by design, "
                        "pass bad={path: line} with your own bad cases")
        return f"non-UTF-8 byte on line {line} of a copy of the train file: DataError at that line"

    def _expect_data_error(self, path: str, line: int | None, what: str | None = None,
                           check: bool = True) -> str | None:
        """None when reading ``path`` as the trainer reads a dev file (read, check) raises DataError at ``line``."""
        from .sdk.data import require_examples

        what = what or path
        task = self.new_task()
        task.load_state_dict(copy.deepcopy(self.fitted.state_dict()))
        try:
            examples = task.read(path)
            if not hasattr(examples, "__len__"):  # a streaming reader: its errors come as it is read
                examples = list(examples)
            require_examples(examples, path)
            if check:
                task.check(examples, path)
        except DataError as exc:
            if exc.path is None:
                return f"{what}: DataError without a path ({exc}); pass the file to DataError(message, path, line)"
            if line is not None and exc.line != line:
                return f"{what}: DataError at line {exc.line}, expected line {line} ({exc})"
            return None
        except Exception as exc:
            return f"{what}: raised {_describe(exc)} instead of DataError (a user would see a traceback)"
        return f"{what}: read {len(examples)} examples without a DataError"

    # -- train ---------------------------------------------------------------------------------------
    def check_train(self, config: dict[str, Any]) -> str:
        from .engine.config import RunConfig
        from .engine.trainer import Trainer

        kinds = tuple(self.cls.backbone_kinds)
        if config["backbone"].get("spec") == "mini" and "encoder" not in kinds:
            raise _Fail(f"{self.cls.__qualname__} runs on {' or '.join(kinds)} backbones, not on the default "
                        f"from-scratch mini encoder: pass backbone='PATH' (a small local {kinds[0]} model)")
        out = io.StringIO()
        redirect = (contextlib.redirect_stdout(out), contextlib.redirect_stderr(out)) if self.quiet else ()
        try:
            with contextlib.ExitStack() as stack:
                for r in redirect:
                    stack.enter_context(r)
                self.trainer = Trainer(RunConfig.from_dict(copy.deepcopy(config)), tasks=[self.prepared_task()])
                result = self.trainer.run()
        except Exception as exc:
            hint = (" (check_task trains on the first max_examples examples of each file: raise max_examples or "
                    "give a dev file whose labels occur in that slice)" if isinstance(exc, DataError) else "")
            raise _Fail(f"nlpkit.train raised {_describe(exc)}{hint}{_tail(out.getvalue())}") from None
        self.trainer_output = out.getvalue()
        self.metrics = result.metrics
        steps = result.metrics.get("steps")
        if steps != config["trainer"]["max_steps"]:
            raise _Fail(f"training stopped at step {steps} of {config['trainer']['max_steps']} "
                        f"({result.metrics.get('stop_reason')}){_tail(self.trainer_output)}")
        return f"{steps} steps, saved to {result.output_dir}"

    def prepared_task(self) -> Task:
        """The task instance training gets: its ``read`` (on this instance only) returns the slices read here,
        so that training sees exactly the examples the checks use."""
        task = self.new_task()
        plain_read = task.read

        def read(path: str) -> Any:
            key = str(path)
            return copy.deepcopy(self.prepared[key]) if key in self.prepared else plain_read(path)

        task.read = read  # type: ignore[method-assign]
        return task

    # -- scores and predictions of the model in memory -----------------------------------------------
    def memory(self) -> tuple[Task, Any, list[Any]]:
        """(task, model, predictions on the dev examples) of the trained model: the one in memory (even when
        training failed after building it), or, without one, the saved checkpoint loaded once."""
        if self._memory is None:
            trained = _trained_in_memory(self.trainer)
            if trained is not None:
                task, model = trained
            elif self.metrics is not None:
                pipeline = self._load(seed=12345)
                task, model = pipeline.task(self.type_name), pipeline.model
            else:
                raise _Fail("training failed before it built the head")
            self._memory = (task, model, _predict(task, model, self.dev_examples, self.eval_batch_size))
        return self._memory

    def _load(self, seed: int) -> Any:
        import torch

        import nlpkit

        torch.manual_seed(seed)  # a head that draws fresh random weights when built draws other ones each time
        return nlpkit.load(self.run_dir, device="cpu")

    def check_encode(self) -> str:
        task, _, _ = self.memory()  # a task set up with the trained tokenizer (in memory or reloaded)
        if not task.tabular:
            return "not a tabular task (its read() gives its own lazy collection)"
        examples = copy.deepcopy(self.dev_examples)

        def as_rows(features: Any) -> list[Any]:
            try:
                return json.loads(json.dumps(list(features), ensure_ascii=False))
            except (TypeError, ValueError) as exc:
                raise _Fail(f"encode() gave a feature that is not JSON-serialisable ({exc}); the core stores features "
                            "as JSON rows of an Arrow table: keep them to dicts, lists, strings and numbers "
                            "(tensor.tolist()), or set tabular = False") from None

        whole = as_rows(task.encode(examples))
        batched: list[Any] = []
        step = 3
        for start in range(0, len(examples), step):
            for f in as_rows(task.encode(examples[start:start + step])):
                batched.append(dict(f, example_index=f["example_index"] + start))
        if whole != batched:
            first = next(i for i, (a, b) in enumerate(zip(whole + [None] * len(batched), batched + [None] * len(whole)))
                         if a != b)
            raise _Fail(f"encode() on batches of {step} differs from one call over {len(examples)} examples at feature "
                        f"{first}: {_short(batched[first] if first < len(batched) else None)} instead of "
                        f"{_short(whole[first] if first < len(whole) else None)}; a feature must depend only on its "
                        "own example")
        return f"{len(whole)} features, the same in batches of {step}"

    def check_main_score(self) -> str:
        task, _, predictions = self.memory()
        scores = task.score(predictions, copy.deepcopy(self.dev_examples))
        where = "score()"
        problem = _score_problem(task, scores, where)
        if problem is None and self.metrics is not None:  # what training recorded (metrics.json)
            where = "the scores training recorded in metrics.json"
            problem = _score_problem(task, self.metrics.get("tasks", {}).get(task.name), where)
        if problem:
            raise _Fail(problem)
        return f"{task.main_score} = {float(scores[task.main_score]):.4g}"

    def check_json(self) -> str:
        task, _, predictions = self.memory()
        if len(predictions) != len(self.dev_examples):
            raise _Fail(f"decode() returned {len(predictions)} predictions for {len(self.dev_examples)} examples; "
                        "it must return one per example")
        for i, prediction in enumerate(predictions):
            try:
                json.dumps(prediction, ensure_ascii=False)
            except (TypeError, ValueError) as exc:
                raise _Fail(f"prediction {i} ({_where(self.dev_examples[i])}) is not JSON-serialisable ({exc}): "
                            f"{_short(prediction)}; decode() must return plain Python (dict, list, str, int, float, "
                            "bool, None), e.g. tensor.tolist()") from None
            text = task.format_prediction(prediction)
            if not isinstance(text, str):
                raise _Fail(f"format_prediction(prediction {i}) returned {type(text).__name__}, not str: "
                            f"{_short(text)}")
        return f"{len(predictions)} predictions"

    # -- reload --------------------------------------------------------------------------------------
    def check_reload(self) -> str:
        self.pipeline = self._load(seed=54321)
        task = self.pipeline.task(self.type_name)
        if type(task) is not self.cls:
            raise _Fail(f"nlpkit.load built {type(task).__qualname__}, not {self.cls.__qualname__}")
        predictions = _predict(task, self.pipeline.model, self.dev_examples, self.eval_batch_size)
        trained_task, trained_model, trained_predictions = self.memory()
        trained = ("the trained model's in memory" if _trained_in_memory(self.trainer) is not None
                   else "a first load's (no model in memory)")
        problems = _weight_differences(trained_model, self.pipeline.model)
        diff = _first_prediction_difference(trained_predictions, predictions, self.dev_examples)
        if diff:
            problems.append(f"predictions after reload differ from {trained}: {diff}")
        state_diff = _difference(_plain(trained_task.state_dict()), _plain(task.state_dict()))
        if state_diff:
            problems.append(f"the reloaded task's state_dict() differs from the trained one's: {state_diff}")
        recorded = (self.metrics or {}).get("tasks", {}).get(task.name)
        if isinstance(recorded, dict):
            scores = task.score(predictions, copy.deepcopy(self.dev_examples))
            diff = _score_difference(recorded, scores)
            if diff:
                problems.append(f"the reloaded model scores differently from training's last evaluation: {diff}")
        if problems:
            raise _Fail("; ".join(problems) + ". A head that comes back different usually keeps tensors that are not "
                        "registered (use nn.Parameter, a submodule or register_buffer), builds weights outside the "
                        "module build_head returns, or its task's load_state_dict() does not restore what "
                        "state_dict() saved")
        return f"{len(predictions)} predictions identical after reload"

    # -- predict -------------------------------------------------------------------------------------
    def check_predict(self, raw_input: Any) -> str:
        item = raw_input if raw_input is not None else _as_record(self.dev_examples[0])
        prediction = self.pipeline.predict(item, task=self.type_name)
        try:
            json.dumps(prediction, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise _Fail(f"predict({_short(item)}) returned a prediction that is not JSON-serialisable "
                        f"({exc})") from None
        text = self.pipeline.format(prediction, task=self.type_name)
        if not isinstance(text, str):
            raise _Fail(f"format_prediction returned {type(text).__name__}, not str")
        return f"{_short(item, 60)} -> {_short(text, 60)}"


# ---------------------------------------------------------------------------------------------------
# Registration and instrumentation
# ---------------------------------------------------------------------------------------------------
def _registered_name(cls: type[Task]) -> str | None:
    """The name ``cls`` is registered under (by decorator or entry point), or None."""
    from .sdk import registry
    from .sdk.errors import NlpkitError

    candidates = [cls.__dict__.get("type_name") or None]
    value = f"{cls.__module__}:{cls.__qualname__}"
    candidates += [i.name for i in registry.list_tasks() if i.entry_point is not None and i.entry_point.value == value]
    for name in candidates:
        if name:
            try:
                if registry.get_task_class(name) is cls:
                    return name
            except NlpkitError:
                continue
    return None


@contextlib.contextmanager
def _registered(cls: type[Task]) -> Iterator[str]:
    """The class's registered name; an unregistered class gets a temporary one, removed afterwards."""
    from .sdk.registry import register_task, unregister_task

    name = _registered_name(cls)
    if name is not None:
        yield name
        return
    name = f"check-task-{cls.__name__.lower()}-{uuid.uuid4().hex[:8]}"
    had, old = "type_name" in cls.__dict__, cls.__dict__.get("type_name")
    register_task(name)(cls)
    try:
        yield name
    finally:
        unregister_task(name)
        if had:
            cls.type_name = old
        else:
            delattr(cls, "type_name")


def _trained_in_memory(trainer: Any) -> tuple[Task, Any] | None:
    """(task, model) the trainer built, or None when it never got that far."""
    from .engine.model import MultiTaskModel

    model = getattr(trainer, "raw_model", None) or getattr(trainer, "model", None)
    if not isinstance(model, MultiTaskModel):
        return None
    return trainer.tasks[0], model


@contextlib.contextmanager
def _preserved_rng() -> Iterator[None]:
    """Training seeds every generator; the caller's random state comes back afterwards."""
    import torch

    python_state = random.getstate()
    try:
        import numpy as np

        numpy_state = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy comes with torch
        np, numpy_state = None, None
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python_state)
            if np is not None:
                np.random.set_state(numpy_state)


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------
def _backbone(backbone: str | Mapping[str, Any] | None) -> dict[str, Any]:
    if backbone is None:
        return {"spec": "mini", "vocab_size": 400}
    if isinstance(backbone, str):
        from .engine.backbone import PRESETS

        return {"spec": backbone, **({"vocab_size": 400} if backbone in PRESETS else {})}
    return dict(backbone)


def _predict(task: Task, model: Any, examples: Sequence[dict], batch_size: int) -> list[Any]:
    from .engine.evaluation import predict_features

    examples = copy.deepcopy(list(examples))
    features = task.encode(examples)
    outputs = predict_features(task, model, features, batch_size)
    return task.decode(examples, features, outputs)


def _accepted(task: Task, example: dict, path: str) -> bool:
    try:
        task.check([example], path)
    except DataError:
        return False
    return True


def _corrupted_copy(path: str, folder: Path) -> tuple[Path, int]:
    """A copy of ``path`` with a non-UTF-8 byte at the end of its second non-blank line (or its only line).

    Files beside it with the same stem are linked along (``train.en`` needs ``train.de``); a ``.gz`` file
    is corrupted inside and compressed again.
    """
    src = Path(path)
    if not src.is_file():
        raise _Fail(f"cannot make the generic bad input: {path!r} is not a file; pass bad={{PATH: LINE}}")
    folder.mkdir(parents=True, exist_ok=True)
    stem = src.name.split(".")[0]
    for sibling in src.parent.iterdir():
        if sibling != src and sibling.is_file() and sibling.name.split(".")[0] == stem:
            (folder / sibling.name).symlink_to(sibling.resolve())
    raw = src.read_bytes()
    zipped = src.suffix == ".gz"
    if zipped:
        raw = gzip.decompress(raw)
    lines = raw.split(b"\n")
    nonblank = [i for i, line in enumerate(lines) if line.strip()]
    if not nonblank:
        raise _Fail(f"cannot make the generic bad input: {path} has no non-blank line")
    index = next((i for i in nonblank if i >= 1), nonblank[0])
    line = lines[index]
    cr = b"\r" if line.endswith(b"\r") else b""
    lines[index] = line[: len(line) - len(cr)] + BAD_BYTE + cr
    data = b"\n".join(lines)
    target = folder / src.name
    target.write_bytes(gzip.compress(data) if zipped else data)
    return target, index + 1


def _score_problem(task: Task, scores: Any, where: str) -> str | None:
    if not isinstance(scores, dict):
        return f"{where} returned {type(scores).__name__}; it must return a dict of metric -> value"
    key = task.main_score
    if key not in scores:
        return (f"{where} has no {key!r}, the task's main_score (it has: {', '.join(map(str, scores)) or 'nothing'}); "
                "set main_score to the metric used for model selection")
    value = scores[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"{where}: main_score {key!r} is {value!r}; it must be a finite number"
    try:
        json.dumps(scores, allow_nan=True)
    except (TypeError, ValueError) as exc:
        return f"{where} is not JSON-serialisable ({exc}); metrics.json needs plain numbers and strings"
    return None


def _score_difference(recorded: dict[str, Any], scores: dict[str, Any]) -> str | None:
    for key, value in recorded.items():
        if key not in scores:
            return f"{key!r} missing"
        if _difference(_plain(value), _plain(scores[key])):
            return f"{key} {value!r} in training, {scores[key]!r} after reload"
    return None


def _weight_differences(trained: Any, reloaded: Any) -> list[str]:
    import torch

    a, b = trained.state_dict(), reloaded.state_dict()
    problems = []
    if set(a) != set(b):
        problems.append(f"the reloaded model has other tensors: missing {sorted(set(a) - set(b))[:5]}, "
                        f"new {sorted(set(b) - set(a))[:5]}")
    changed = [k for k in sorted(set(a) & set(b))
               if a[k].shape != b[k].shape or not torch.equal(a[k].cpu(), b[k].cpu())]
    if changed:
        problems.append(f"{len(changed)} reloaded tensor(s) differ from the trained ones ({', '.join(changed[:5])})")
    return problems


def _first_prediction_difference(before: Sequence[Any], after: Sequence[Any], examples: Sequence[dict]) -> str | None:
    if len(before) != len(after):
        return f"{len(before)} predictions before, {len(after)} after"
    for i, (a, b) in enumerate(zip(before, after)):
        diff = _difference(_plain(a), _plain(b))
        if diff:
            return f"example {i} ({_where(examples[i])}): {diff}: before {_short(a)}, after {_short(b)}"
    return None


def _plain(value: Any) -> Any:
    """Tensors and arrays as lists, tuples as lists: what a JSON round trip would leave."""
    if hasattr(value, "tolist") and callable(value.tolist):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _difference(a: Any, b: Any, where: str = "") -> str | None:
    """Where two plain values differ (floats to 1e-6 relative), or None."""
    label = where or "value"
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{label}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for k in a:
            diff = _difference(a[k], b[k], f"{where}.{k}" if where else str(k))
            if diff:
                return diff
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{label}: {len(a)} items vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            diff = _difference(x, y, f"{where}[{i}]")
            if diff:
                return diff
        return None
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        if (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9):
            return None
        return f"{label}: {a!r} vs {b!r}"
    return None if a == b else f"{label}: {_short(a)} vs {_short(b)}"


def _json_round_trip(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, ensure_ascii=False))
    except (TypeError, ValueError) as exc:
        raise _Fail(f"{what} is not JSON-serialisable ({exc}): {_short(value)}; it is saved in the "
                    "checkpoint's nlpkit.json, so keep it to dicts, lists, strings and numbers") from None


def _as_record(example: dict) -> dict:
    """A dev example as `nlpkit predict` would get it: a JSON object (fields that are not JSON dropped)."""
    record = {}
    for key, value in example.items():
        try:
            record[key] = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            continue
    return record


def _where(example: Any) -> str:
    if isinstance(example, dict):
        for key in ("line", "record"):
            if example.get(key) is not None:
                return f"{key} {example[key]}"
    return "no line recorded"


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(exc: BaseException) -> str:
    """``Type: message (at file:line in function)``: the innermost frame, where the plugin went wrong."""
    frames = traceback.extract_tb(exc.__traceback__)
    at = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    return f"{type(exc).__name__}: {exc}{at}"


def _tail(output: str, lines: int = 6) -> str:
    kept = [line for line in output.strip().splitlines() if line.strip()][-lines:]
    return ("\n      trainer output (last lines):\n" + "\n".join("        " + line for line in kept)) if kept else ""
