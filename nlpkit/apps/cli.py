"""The command line: a thin layer over the Python API (nlpkit.train, nlpkit.load)."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, Iterator, Sequence

from .._version import __version__
from ..sdk.errors import ConfigError, Interrupted, NlpkitError
from ..sdk.options import show


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (batch sizes, beams, processes); argparse names the flag."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nlpkit", description="Fine-tune one shared transformer on many NLP tasks.")
    p.add_argument("--version", action="version", version=f"nlpkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    _add_train_parser(sub)
    _add_evaluate_predict_parsers(sub)
    ls = sub.add_parser("tasks", help="list registered tasks and where they come from")
    ls.add_argument("--plugin", action="append", default=[], metavar="MODULE")
    _add_serve_export_parsers(sub)
    return p


def _add_train_parser(sub: Any) -> None:
    t = sub.add_parser("train", help="train one or more tasks on one backbone")
    t.add_argument("--task", action="append", default=[], metavar="TYPE[:NAME]",
                   help="task type to train (repeat for multi-task); TYPE:NAME names the instance")
    t.add_argument("--recipe", help="YAML recipe file (CLI flags override it)")
    t.add_argument("--data", action="append", default=[], metavar="[TASK:]SPLIT=PATH",
                   help="data file for a split (train, dev); prefix TASK: when several tasks are trained")
    t.add_argument("--data-dir", metavar="DIR", help="a recipe's data from DIR: the benchmark's released files as "
                                                     "the recipe's `released` names them, or a local copy of its hub "
                                                     "dataset (default: the hub; datasets caches it)")
    t.add_argument("--backbone", help="preset (tiny, mini, small), alias (minilm), local folder, hub id, or an nlpkit "
                                      "run folder (a pretraining run: its backbone and tokenizer, as --init-from)")
    t.add_argument("--peft", choices=["lora", "dora"],
                   help="parameter-efficient fine-tuning through peft: train adapters, heads and added embeddings only "
                        "(rank etc.: --set backbone.peft.r=16)")
    t.add_argument("--output-dir", help="run folder (default runs/<tasks>-<time>)")
    t.add_argument("--epochs", type=float)
    t.add_argument("--max-steps", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast dtype of training (precision.compute; the weights keep backbone.dtype). Default "
                        "auto: bf16 on GPUs with bf16 units and on CPUs with native bf16, else fp32 (fp16 on older "
                        "GPUs); the log says which and why")
    t.add_argument("--eval-max-examples", type=positive_int, metavar="N",
                   help="score only the first N examples of each dev split during training (quick runs)")
    t.add_argument("--option", action="append", default=[], metavar="[TASK:]KEY=VALUE", help="task option")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, e.g. trainer.lr=3e-5")
    t.add_argument("--plugin", action="append", default=[], metavar="MODULE", help="import a module that registers tasks")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (logs only; logging.progress)")
    t.add_argument("--report-to", metavar="NAME[,NAME]",
                   help="experiment trackers, comma-separated: tensorboard (the default), mlflow, wandb (offline unless "
                        "WANDB_MODE=online), or none (logging.report_to)")
    t.add_argument("--init-from", metavar="DIR",
                   help="start from a trained checkpoint: its backbone, and the heads of tasks with the same name")
    t.add_argument("--num-processes", type=positive_int, metavar="N",
                   help="train in N processes on this machine (data parallel; starts them through torchrun)")
    t.add_argument("--no-cache", action="store_true",
                   help="read and encode the data again and keep nothing (default: tables cached in $NLPKIT_CACHE/data)")
    t.add_argument("--cache-dir", metavar="DIR", help="folder of the data cache (default $NLPKIT_CACHE/data, else "
                                                         "~/.cache/nlpkit/data)")
    t.add_argument("--num-proc", type=positive_int, metavar="N", help="processes that encode the data (default 1)")
    t.add_argument("--resume", metavar="DIR|auto|never",
                   help="continue from a run folder's newest checkpoint (or a checkpoints/step-N folder); with no "
                        "--task/--recipe the checkpoint's own config is used. Default auto: resume when --output-dir "
                        "already holds a checkpoint; never: start over (checkpoint.resume)")


def _add_evaluate_predict_parsers(sub: Any) -> None:
    e = sub.add_parser("evaluate", help="score a checkpoint on labelled data")
    e.add_argument("checkpoint")
    e.add_argument("--data", action="append", default=[], metavar="[TASK:]SPLIT=PATH")
    e.add_argument("--recipe", help="evaluate on the recipe's data (its test split, else dev; the line printed and "
                                    "the report say which)")
    e.add_argument("--data-dir", metavar="DIR", help="the recipe's data from DIR: the benchmark's released files, or "
                                                     "a local copy of its hub dataset (default: the hub)")
    e.add_argument("--split", help="recipe split to evaluate (default: test if the recipe's source has one with "
                                   "labels, else dev)")
    e.add_argument("--no-report", action="store_true", help="do not write report.md / report.json")
    e.add_argument("--task", help="task of the checkpoint to evaluate (default: the only one)")
    e.add_argument("--batch-size", type=positive_int, default=64)
    e.add_argument("--encoding", help="encoding of the data files without a byte-order mark (default: the "
                                      "checkpoint's task option encoding, else UTF-8)")
    e.add_argument("--json", action="store_true", help="print JSON")
    e.add_argument("--runtime", choices=["torch", "onnxruntime"], default="torch",
                   help="onnxruntime: score the exported fp32 graph (CPU; needs nlpkit[onnx])")
    e.add_argument("--plugin", action="append", default=[], metavar="MODULE")
    e.add_argument("--no-cache", action="store_true",
                   help="read and encode the data again and keep nothing (default: tables cached in $NLPKIT_CACHE/data)")
    e.add_argument("--cache-dir", metavar="DIR", help="folder of the data cache (default $NLPKIT_CACHE/data, else "
                                                         "~/.cache/nlpkit/data)")
    e.add_argument("--num-proc", type=positive_int, metavar="N", help="processes that encode the data (default 1)")

    r = sub.add_parser("predict", help="predict for texts given as arguments or one per line on stdin")
    r.add_argument("checkpoint")
    r.add_argument("texts", nargs="*", help="input texts (default: read stdin, plain lines or JSON objects)")
    r.add_argument("--task", help="task of the checkpoint (default: the only one)")
    r.add_argument("--json", action="store_true", help="print one JSON object per input")
    r.add_argument("--batch-size", type=positive_int, default=64)
    r.add_argument("--num-beams", type=positive_int, help="beam size for generation tasks")
    r.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                   help="default fp32 (what `nlpkit evaluate` scores); bf16 autocast, or auto: bf16 where the CPU or GPU "
                        "multiplies it natively")
    r.add_argument("--quantize", choices=["int8"], help="dynamic int8 Linear layers (CPU): faster, slightly different")
    r.add_argument("--runtime", choices=["torch", "onnxruntime"], default="torch",
                   help="onnxruntime: the same fp32 predictions from the exported graph (CPU; exported once and "
                        "cached, needs nlpkit[onnx])")
    r.add_argument("--encoding", default="utf-8",
                   help="encoding of stdin (default utf-8; a byte-order mark overrides it)")
    r.add_argument("--plugin", action="append", default=[], metavar="MODULE")


def _add_serve_export_parsers(sub: Any) -> None:
    """`serve` and `export` (kept apart from the other commands' flags)."""
    s = sub.add_parser("serve", help="serve a checkpoint over HTTP with request batching (needs nlpkit[serve])")
    s.add_argument("checkpoint")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", default=None,
                   help="require this key (Authorization: Bearer KEY or X-API-Key); default: $NLPKIT_API_KEY")
    s.add_argument("--max-batch-size", type=int, default=32, help="inputs per model call (default 32)")
    s.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long the first input of a batch waits for others (default 5)")
    s.add_argument("--max-body-bytes", type=int, default=1_000_000, help="request body limit (413 above)")
    s.add_argument("--max-items", type=int, default=64, help="inputs per request (413 above)")
    s.add_argument("--max-text-chars", type=int, default=10_000, help="characters per text field (422 above)")
    s.add_argument("--drain-timeout", type=float, default=30.0,
                   help="seconds in-flight requests get to finish after SIGTERM (default 30)")
    s.add_argument("--keep-alive", type=float, default=30.0,
                   help="seconds an idle client connection stays open (default 30)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--plugin", action="append", default=[], metavar="MODULE")

    x = sub.add_parser("export", help="export a checkpoint as a transformers folder or ONNX graphs")
    x.add_argument("checkpoint")
    x.add_argument("out", help="output folder (must not exist or be empty)")
    x.add_argument("--format", choices=["transformers", "onnx"],
                   help="transformers (a Hugging Face folder) or onnx; --merge alone means transformers")
    x.add_argument("--merge", action="store_true",
                   help="fold a peft (LoRA) checkpoint's adapters into the weights first: a plain model that loads "
                        "in transformers without peft, plus the heads")
    x.add_argument("--task", help="the task to export (default: all of them)")
    x.add_argument("--plugin", action="append", default=[], metavar="MODULE")


def subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def flags_of(parser: argparse.ArgumentParser) -> list[str]:
    return [s for action in parser._actions for s in action.option_strings if s.startswith("--")]


def did_you_mean(flag: str, choices: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(flag.split("=", 1)[0], list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


# ---- train -----------------------------------------------------------------------------------------
def _split_prefixed(value: str, names: Sequence[str], flag: str,
                    form: str = "[TASK:]KEY=VALUE") -> tuple[str | None, str, str]:
    """'[TASK:]KEY=VALUE' -> (task or None, key, value)."""
    if "=" not in value:
        raise ConfigError(f"{flag} {value!r}: expected {form}")
    left, right = value.split("=", 1)
    task = None
    if ":" in left:
        task, left = left.split(":", 1)
        if task not in names:
            raise ConfigError(f"{flag} {value!r}: no task named {task!r} in this run ({', '.join(names)})")
    elif len(names) > 1:
        raise ConfigError(f"{flag} {value!r}: several tasks are trained; write TASK:{left}=... ({', '.join(names)})")
    if not right.strip() and form.endswith("=PATH"):
        raise ConfigError(f"{flag} {value!r}: the path is empty")
    return task, left, right


def build_config(args: argparse.Namespace) -> "Any":
    from ..engine.config import RunConfig, apply_override, load_recipe

    data: dict[str, Any] = load_recipe(args.recipe) if args.recipe is not None else {}
    source = args.recipe
    resume = getattr(args, "resume", None)
    if resume and resume not in ("auto", "never") and not args.recipe and not args.task:
        from ..engine.checkpoint import training_config

        data = training_config(resume, lambda msg: print(f"warning: {msg}", file=sys.stderr))
        data["output_dir"] = None  # the checkpoint's run folder (a saved relative path may point elsewhere)
        source = f"{resume} (saved config)"
    renamed = _move_renamed_keys(data, source, reported=bool(args.recipe))
    if args.task:
        entries = []
        for spec in args.task:
            type_, _, name = spec.partition(":")
            entries.append({"type": type_, "name": name or type_})
        data["tasks"] = entries
    where = f"{source}: " if source else ""
    recipe_data = RecipeData(data, args.recipe, args.data_dir) if args.recipe else None  # takes data_dir, released
    tasks = check_tasks(data, where)
    names = [t.get("name") or t.get("type") for t in tasks]
    by_name = {n: t for n, t in zip(names, tasks)}
    if recipe_data:
        recipe_data.resolve(tasks)
    for value in args.data:
        task, split, path = _split_prefixed(value, names, "--data", "[TASK:]SPLIT=PATH")
        by_name[task or names[0]].setdefault("data", {})[split] = path
    for value in args.option:
        task, key, raw = _split_prefixed(value, names, "--option")
        by_name[task or names[0]].setdefault("options", {})[key] = _yaml_value(raw, f"--option {value!r}")
    trainer = _section(data, "trainer", where)
    for flag, key in [("epochs", "epochs"), ("max_steps", "max_steps"), ("batch_size", "batch_size"), ("lr", "lr"), ("seed", "seed"),
                      ("eval_max_examples", "eval_max_examples")]:
        if getattr(args, flag) is not None:
            trainer[key] = getattr(args, flag)
    if args.precision is not None:
        _section(data, "precision", where)["compute"] = args.precision
    if args.report_to is not None:
        _section(data, "logging", where)["report_to"] = args.report_to  # a comma-separated list; checked there
    if args.no_progress or not sys.stderr.isatty():  # a bar in a log file is noise: print log lines
        _section(data, "logging", where)["progress"] = False
    data_flags = {"cache": False if args.no_cache else None, "cache_dir": args.cache_dir, "num_proc": args.num_proc}
    if any(v is not None for v in data_flags.values()):
        _section(data, "data", where).update({k: v for k, v in data_flags.items() if v is not None})
    if args.backbone is not None:  # "" too: an empty flag is a mistake, not "use the default"
        _section(data, "backbone", where)["spec"] = args.backbone
    if args.peft is not None:
        backbone = _section(data, "backbone", where)
        peft = backbone.get("peft")
        backbone["peft"] = {**(peft if isinstance(peft, dict) else {}), "method": args.peft}
    if args.output_dir is not None:
        data["output_dir"] = args.output_dir
    if args.init_from is not None:
        data["init_from"] = args.init_from
    if resume:
        _section(data, "checkpoint", where)["resume"] = resume
    if args.plugin:
        plugins = data.get("plugins") or []
        if not isinstance(plugins, list):
            raise ConfigError(f"{where}plugins: expected a list of module names, got {show(plugins)}")
        data["plugins"] = plugins + args.plugin
    for assignment in args.set:
        moved = apply_override(data, assignment)  # an old key name lands at its new place
        renamed += [moved] if moved else []
    if recipe_data:  # after every flag: a --data file or --set path replaces the recipe's source
        recipe_data.drop_replaced_dev()
        recipe_data.require(("train", "dev"))
    return RunConfig.from_dict(data, source, renamed=renamed)


def _move_renamed_keys(data: dict[str, Any], source: str | None, reported: bool) -> list[tuple[str, str]]:
    """Keys under their old names (``trainer.sampler``) moved to their sections before any flag is merged, so
    that a flag or ``--set`` overrides the recipe whichever name it used. The moves are returned for the
    deprecation notice when the user wrote them (``reported``), not for a saved config older nlpkit wrote."""
    from ..engine import renamed_keys

    try:
        moved = renamed_keys.upgrade(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}" if source else str(exc)) from exc
    return moved if reported else []


def check_tasks(data: dict[str, Any], where: str = "") -> list[dict[str, Any]]:
    """The config's task entries, each checked as a TaskEntry (the one type checker, options.build) before
    flags are merged into them, so a recipe of the wrong shape is one line naming the key and the file."""
    from ..engine.config import RunConfig, TaskEntry
    from ..sdk.options import build, unknown_key

    def named(exc: ConfigError) -> ConfigError:
        return ConfigError(f"{where}{exc}")

    if not data.get("tasks"):
        try:
            unknown_key(RunConfig, data)  # `taks:` is a typo, not a missing task
        except ConfigError as exc:
            raise named(exc) from None
        raise ConfigError(f"{where}no task given: use --task TYPE (see `nlpkit tasks`) or a recipe with "
                          "'tasks: [{type: TYPE}]'")
    tasks = data["tasks"]
    if not isinstance(tasks, list):
        raise ConfigError(f"{where}tasks: expected a list of task mappings ({{type: TYPE, ...}}), got {show(tasks)}")
    for i, entry in enumerate(tasks):
        try:
            checked = build(TaskEntry, dict(entry) if isinstance(entry, dict) else entry, f"tasks[{i}]")
        except ConfigError as exc:
            raise named(exc) from None
        if "data" in entry:
            entry["data"] = dict(checked.data)  # paths as strings (`train: 123` is the file "123")
    return tasks


def _section(data: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    """The mapping flags are merged into (created when absent); anything else there is the recipe's mistake."""
    value = data.get(name)
    if value is None:
        value = data[name] = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}{name}: expected a mapping, got {show(value)}")
    return value


def _yaml_value(raw: str, where: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(raw)
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"{where}: the value is not valid YAML ({str(exc).splitlines()[0]})") from exc


def is_hub(path: str) -> bool:
    """``hub:...`` (nlpkit.sdk.data.is_hub, without importing torch for the command line's start-up)."""
    return str(path).startswith("hub:")


class RecipeData:
    """Where a recipe's data come from.

    A shipped recipe names its standard source as each task's ``data``: hub specs
    (``hub:DATASET[@REVISION][:CONFIG]:SPLIT``), which ``datasets`` downloads once and caches. Its ``released``
    mapping names the files of the benchmark's own release per split. With ``--data-dir DIR`` each split is
    DIR/<released name> when that file is there (with or without ``.gz``), else that split of a local copy of the
    hub dataset (DIR, or DIR/<dataset name>: Parquet files in split folders, a ``save_to_disk`` DatasetDict, a
    clone of the dataset's repository), else one ConfigError naming both ways. A split the release does not have
    (no ``released`` name) is left out. Plain relative paths (user recipes; the older ``data_dir:`` key, relative
    to the recipe file) are joined with DIR as before. Hub sources are loaded once here as a check, before anything
    is built, so an offline run without a local copy fails at once with one line that names both ways.
    """

    def __init__(self, data: dict[str, Any], recipe: str, data_dir: str | None):
        """Takes ``data_dir`` and each task's ``released`` out of the recipe (they are not run settings); call
        ``resolve`` once the task entries are checked."""
        from pathlib import Path

        default = data.pop("data_dir", None)
        if default is not None and not isinstance(default, str):
            raise ConfigError(f"{recipe}: data_dir: expected a folder name, got {show(default)}")
        self.recipe = recipe
        self.folder = data_dir or (str(Path(recipe).parent / default) if default else None)
        self.released: dict[str, dict[str, str]] = {}  # task -> split -> file name in the release
        tasks = data.get("tasks")
        for i, entry in enumerate(tasks if isinstance(tasks, list) else []):
            if not isinstance(entry, dict) or "released" not in entry:
                continue
            released = entry.pop("released")
            name = entry.get("name") or entry.get("type")
            if not isinstance(released, dict) or not all(isinstance(v, str) and v.strip() for v in released.values()):
                raise ConfigError(f"{recipe}: tasks[{i}].released: expected a mapping of split to file name, "
                                  f"e.g. {{train: train.txt, dev: valid.txt}}, got {show(released)}")
            unknown = sorted(set(released) - set((entry.get("data") or {}) if isinstance(entry.get("data"), dict) else ()))
            if unknown:
                raise ConfigError(f"{recipe}: tasks[{i}].released names split(s) {unknown} that its data does not")
            self.released[str(name)] = {str(k): v for k, v in released.items()}
        self.tasks: list[dict[str, Any]] = []
        self.written: dict[tuple[str, str], str] = {}  # (task, split) -> what the recipe wrote
        self.resolved: dict[tuple[str, str], str] = {}  # (task, split) -> what it became
        self.sources: dict[tuple[str, str], str] = {}  # (task, split) -> where it comes from, in words
        self.missing: dict[tuple[str, str], str] = {}  # (task, split) -> why it cannot be found
        self.dev_split: dict[str, Any] = {}  # the recipe's own dev_split per task

    def resolve(self, tasks: list[dict[str, Any]]) -> None:
        self.tasks = tasks
        for entry in tasks:
            name = entry.get("name") or entry.get("type")
            self.dev_split[name] = (entry.get("options") or {}).get("dev_split")
            files = entry.get("data") or {}
            for split, path in list(files.items()):
                if not isinstance(path, str):
                    continue
                self.written[(name, split)] = path
                if is_hub(path):
                    if self.folder:
                        self._local(name, split, path, files)
                    else:
                        self.sources[(name, split)] = self._hub_words(path)
                else:
                    if not os.path.isabs(path):
                        files[split] = os.path.join(self.folder, path) if self.folder else path
                    self.sources[(name, split)] = f"file {files[split]}"
                if split in files:
                    self.resolved[(name, split)] = files[split]

    @staticmethod
    def _hub_words(spec: str) -> str:
        from ..sdk.data import parse_hub_spec

        hub = parse_hub_spec(spec)
        rev = f" at revision {hub.revision}" if hub.revision else ""
        config = f", config {hub.config}" if hub.config else ""
        return f"hub dataset {hub.dataset}{rev}{config}, split {hub.split} ({spec})"

    def _local(self, name: str, split: str, spec: str, files: dict[str, str]) -> None:
        """--data-dir for a hub source: the released file, else the local copy of the hub dataset."""
        from pathlib import Path

        from ..sdk.data import HubSpec, parse_hub_spec

        hub = parse_hub_spec(spec)
        folder = Path(self.folder)
        released = self.released.get(name, {})
        file = released.get(split)
        if file:
            for candidate in (file, file[:-3] if file.endswith(".gz") else file + ".gz"):
                if (folder / candidate).exists():
                    files[split] = str(folder / candidate)
                    self.sources[(name, split)] = f"released file {files[split]}"
                    return
        copy = self.hub_copy(folder, hub.dataset)
        if copy is not None:
            files[split] = HubSpec(str(copy), None, hub.config, hub.split).text()
            self.sources[(name, split)] = (f"local copy {copy} of hub dataset {hub.dataset}"
                                           f"{f', config {hub.config}' if hub.config else ''}, split {hub.split}")
            return
        del files[split]
        if released and not file:  # the release has no such split (e.g. its test summaries are in another format)
            return
        names = ", ".join(released.values()) if released else "(this recipe names none)"
        self.missing[(name, split)] = (
            f"{self.recipe}: tasks.{name}.data.{split} expects {file!r} (the released file) or split {hub.split!r} "
            f"of a local copy of the hub dataset {hub.dataset}, and --data-dir {self.folder!r} has neither. "
            f"Either put the released files there ({names}) or a copy of the hub dataset (its Parquet files in "
            f"split folders such as train/, or a DatasetDict.save_to_disk folder; DIR or DIR/{Path(hub.dataset).name}), "
            f"or leave out --data-dir to load {spec} from the hub (online; datasets caches it), or give the file "
            f"with --data {name}:{split}=PATH")

    @staticmethod
    def hub_copy(folder: Any, dataset: str) -> Any:
        """The local copy of hub dataset ``dataset`` under --data-dir: DIR/<name>, DIR/<owner>/<name> or DIR itself,
        whichever looks like one (a saved DatasetDict, Parquet/Arrow files, a clone of the hub repository)."""
        from pathlib import Path

        for candidate in (folder / Path(dataset).name, folder / dataset, folder):
            if candidate.is_dir() and RecipeData._looks_like_hub_copy(candidate):
                return candidate
        return None

    @staticmethod
    def _looks_like_hub_copy(folder: Any) -> bool:
        if (folder / "dataset_dict.json").is_file() or (folder / ".gitattributes").is_file():
            return True
        card = folder / "README.md"
        try:
            if card.is_file() and card.read_text(errors="replace").startswith("---"):  # a dataset card's YAML header
                return True
        except OSError:
            pass
        depth0 = str(folder).count(os.sep)
        for root, dirs, names in os.walk(folder):
            if str(root).count(os.sep) - depth0 >= 3:
                dirs[:] = []
            if any(n.endswith((".parquet", ".arrow")) for n in names):
                return True
        return False

    def has(self, name: str, split: str) -> bool:
        """Whether this source has the split (found, or named but not found)."""
        return (name, split) in self.resolved or (name, split) in self.missing

    def describe(self, name: str, split: str) -> str:
        return self.sources.get((name, split), "")

    def drop_replaced_dev(self) -> None:
        """A dev_split given on the command line (--option/--set) replaces the recipe's dev split: the recipe's
        dev is dropped so training carves one from train (a copy of the release without its dev file)."""
        for entry in self.tasks:
            name = entry.get("name") or entry.get("type")
            files = entry.get("data") or {}
            carve = (entry.get("options") or {}).get("dev_split")
            if not carve or self.dev_split.get(name):
                continue
            if files.get("dev") == self.resolved.get((name, "dev")) and "dev" in files:
                del files["dev"]
            self.missing.pop((name, "dev"), None)

    def require(self, splits: Sequence[str], task: str | None = None) -> None:
        """The recipe's sources for these splits exist: its local files are there, and its hub splits load."""
        from ..sdk.data import HubLoadError, load_hub_split, parse_hub_spec

        for entry in self.tasks:
            name = entry.get("name") or entry.get("type")
            if task and name != task:
                continue
            files = entry.get("data") or {}
            for split in splits:
                if (name, split) in self.missing and split not in files:
                    raise ConfigError(self.missing[(name, split)])
                path = files.get(split)
                if path is None or path != self.resolved.get((name, split)):
                    continue  # not in the recipe, or replaced by --data / --set
                written = self.written[(name, split)]
                if is_hub(path):
                    if parse_hub_spec(path).local is not None:
                        continue  # a local copy: read (and any fault named) with the data, offline anyway
                    try:
                        load_hub_split(path)
                    except HubLoadError as exc:
                        raise ConfigError(self._hub_failed(name, exc)) from None
                elif not os.path.isabs(written) and not os.path.exists(path):
                    raise ConfigError(
                        f"{self.recipe}: tasks.{name}.data.{split} expects {written!r}, not found in {self.folder or '.'!r}. "
                        f"Pass --data-dir FOLDER holding the benchmark's files as the recipe names them, or give the "
                        f"file with --data {name}:{split}=PATH (online: --data {name}:{split}=hub:DATASET:SPLIT)")

    def _hub_failed(self, name: str, exc: Any) -> str:
        """One line: what failed, and both ways to get the data."""
        from ..sdk.data import parse_hub_spec

        hub = parse_hub_spec(exc.spec)
        released = self.released.get(name)
        files = (f"the released files ({', '.join(released.values())}; gzipped or not)" if released
                 else "the released files")
        if exc.offline:
            flags = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(v, "").strip() not in ("", "0")]
            online = "go online" + (f" (unset {' and '.join(flags)})" if flags else "")
            why = f"the hub could not be reached (offline?): {exc.reason}"
        else:
            online = "fix the source (the id, revision or split) and run online"
            why = exc.reason
        return (f"{self.recipe}: could not load hub dataset {hub.dataset} for tasks.{name} ({exc.spec}): {why}. "
                f"Either {online}: datasets downloads it once and caches it; or pass --data-dir DIR holding "
                f"{files} or a local copy of the hub dataset (Parquet files in train/ validation/ test/ folders, or "
                f"a DatasetDict.save_to_disk folder)")


def cmd_train(args: argparse.Namespace) -> int:
    from ..sdk.registry import import_plugin_module

    for module in args.plugin:
        import_plugin_module(module)
    config = build_config(args)  # a bad configuration fails here, before any process is started
    from ..engine.distributed import need_relaunch, relaunch

    if need_relaunch(args.num_processes):
        return relaunch(args.argv, args.num_processes)
    from ..engine.trainer import train

    try:
        train(config)
    finally:
        _end_process_group()
    return 0


def _end_process_group() -> None:
    """Under torchrun, destroy the process group before exit: gloo threads left running can abort."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---- evaluate --------------------------------------------------------------------------------------
def _print_metrics(name: str, metrics: dict[str, Any]) -> None:
    print(f"== {name}")
    scalars = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    for k, v in scalars.items():
        print(f"  {k:<24} {v:.4f}" if isinstance(v, float) else f"  {k:<24} {v}")
    for k, v in metrics.items():
        if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            cols = list(next(iter(v.values())).keys())
            print(f"  {k}:")
            print("    " + f"{'':<28}" + "".join(f"{c:>11}" for c in cols))
            for row, vals in v.items():
                print("    " + f"{row:<28}" + "".join(f"{vals.get(c, float('nan')):>11.4f}" if isinstance(vals.get(c), float)
                                                   else f"{str(vals.get(c, '')):>11}" for c in cols))


def carve_dev(task: Any, entry: dict[str, Any], settings: Any = None) -> Sequence[dict]:
    """The dev split a recipe carves from its training file, exactly as training carved it."""
    import dataclasses

    from ..engine.config import DataSettings, TaskEntry
    from ..engine.task_data import read_splits

    saved = task.options
    carve = {k: v for k, v in (entry.get("options") or {}).items() if k in ("dev_split", "dev_split_seed")}
    task.options = dataclasses.replace(saved, **carve)
    try:
        return read_splits(task, TaskEntry(type=entry["type"], name=entry.get("name"),
                                           data={"train": entry["data"]["train"]}),
                           settings=settings or DataSettings())["dev"]
    finally:
        task.options = saved


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..sdk.registry import import_plugin_module
    from .predict import load

    for module in args.plugin:
        import_plugin_module(module)
    from ..engine.config import DataSettings
    from ..engine.tables import set_progress

    settings = DataSettings(cache=not args.no_cache, cache_dir=args.cache_dir, num_proc=args.num_proc or 1)
    settings.validate("data")
    set_progress(sys.stderr.isatty())
    pipe = load(args.checkpoint, runtime=args.runtime)
    if args.encoding:
        from ..sdk.data import check_encoding
        from ..sdk.task import replace_options

        encoding = check_encoding(args.encoding, "--encoding")
        for name in pipe.task_names:
            replace_options(pipe.task(name), encoding=encoding)
    jobs: list[tuple[str, str, str]] = []  # (task, split, path)
    carved: dict[tuple[str, str], list[dict]] = {}
    sources: dict[tuple[str, str], str] = {}  # (task, split) -> where the split comes from, in words
    if args.recipe:
        from ..engine.config import load_recipe

        recipe = load_recipe(args.recipe)
        recipe_data = RecipeData(recipe, args.recipe, args.data_dir)  # takes data_dir and released out
        recipe_data.resolve(check_tasks(recipe, f"{args.recipe}: "))
        for entry in recipe.get("tasks") or []:
            name = entry.get("name") or entry.get("type")
            files = entry.get("data") or {}
            # the standard test split where the source has one with labels (the recipe names it), else dev
            split = args.split or ("test" if recipe_data.has(name, "test") else "dev")
            if name not in pipe.task_names:
                continue
            if split in files or recipe_data.has(name, split):
                recipe_data.require((split,), task=name)
                jobs.append((name, split, files[split]))
                sources[(name, split)] = recipe_data.describe(name, split)
            elif split == "dev" and (entry.get("options") or {}).get("dev_split") and "train" in files:
                recipe_data.require(("train",), task=name)
                jobs.append((name, split, files["train"] + " (dev_split)"))  # the hold-out training used
                options = entry.get("options") or {}
                sources[(name, split)] = (f"dev carved from train as training did (dev_split {options['dev_split']}, "
                                          f"seed {options.get('dev_split_seed', 0)}) of {recipe_data.describe(name, 'train')}")
                carved[(name, split)] = carve_dev(pipe.task(name), entry, settings)
    for value in args.data:
        task, split, path = _split_prefixed(value, pipe.task_names if not args.task else [args.task], "--data",
                                            "[TASK:]SPLIT=PATH")
        jobs.append((task or args.task or pipe.task().name, split, path))
    if not jobs:
        raise ConfigError("nothing to evaluate: give --data [TASK:]SPLIT=PATH or --recipe FILE")
    results = {}
    for name, split, path in jobs:
        source = sources.get((name, split)) or (RecipeData._hub_words(path) if is_hub(path) else f"file {path}")
        sources[(name, split)] = source
        print(f"{name}: scoring the {split} split: {source}", file=sys.stderr)
        results[f"{name}/{split}"] = pipe.evaluate(path, task=name, batch_size=args.batch_size, progress=sys.stderr.isatty(),
                                                   examples=carved.get((name, split)), data=settings)
    if not args.no_report:
        from .report import write_report

        written = write_report(args.checkpoint, pipe, results, {f"{n}/{s}": p for n, s, p in jobs}, args.recipe,
                               splits={f"{n}/{s}": {"split": s, "source": sources[(n, s)]} for n, s, _ in jobs})
        print(f"report: {', '.join(str(p) for p in written)}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, metrics in results.items():
            _print_metrics(key, metrics)
    return 0


# ---- predict ---------------------------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace, extra: list[str]) -> int:
    from ..sdk.registry import import_plugin_module
    from .predict import load

    for module in args.plugin:
        import_plugin_module(module)
    # argparse takes "--name=a value with spaces" for a text: it is a field (or a misspelled flag)
    flagged = [t for t in args.texts if re.match(r"--[A-Za-z][\w-]*=", t)]
    args.texts = [t for t in args.texts if t not in flagged]
    fields, more_texts = _parse_fields(flagged + extra)
    pipe = load(args.checkpoint, precision=args.precision, quantize=args.quantize, runtime=args.runtime)
    _check_predict_flags(pipe, args, fields)
    items: list[str | dict] = list(args.texts) + more_texts
    if fields:
        items.append(fields)
    if not items and sys.stdin.isatty():
        print("reading one input per line from stdin (Ctrl-D to end)", file=sys.stderr)
    opts = {"num_beams": args.num_beams} if args.num_beams else {}
    seen = 0
    # stdin is predicted a chunk at a time, each chunk printed before the next is read: a file of any size runs
    # in bounded memory, and a pipe sees its first answers early
    for chunk in _chunked(iter(items) if items else _stdin_items(args.encoding), PREDICT_CHUNK):
        preds = pipe.predict(chunk, task=args.task, batch_size=args.batch_size, **opts)
        for item, pred in zip(chunk, preds):
            if args.json:
                print(json.dumps({"input": item, "prediction": pred}, ensure_ascii=False))
            else:
                print(pipe.format(pred, args.task))
        sys.stdout.flush()
        seen += len(chunk)
    if not seen:
        raise ConfigError("nothing to predict: give texts as arguments or on stdin")
    return 0


#: inputs of `nlpkit predict` read from stdin per model call (sorted by length within it)
PREDICT_CHUNK = 4096


def _chunked(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    import itertools

    while chunk := list(itertools.islice(items, size)):
        yield chunk


def _stdin_items(encoding: str) -> Iterator[str | dict]:
    """Non-blank stdin lines; a line that is a JSON object is a record input."""
    for line in _stdin_lines(encoding):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                yield json.loads(line)
                continue
            except (json.JSONDecodeError, RecursionError):
                pass
        yield line


def _stdin_lines(encoding: str) -> Iterator[str]:
    """stdin's lines, decoded as data files are (a BOM decides, else strict ``encoding``; NUL = binary)."""
    from ..sdk.data import check_encoding, stream_lines

    check_encoding(encoding, "--encoding")
    binary = getattr(sys.stdin, "buffer", None)
    if binary is None:  # already text (a StringIO in tests): nothing left to decode
        return (line.rstrip("\r\n") for line in sys.stdin)
    return stream_lines(binary, "<stdin>", encoding, hint="--encoding latin-1")


def _parse_fields(extra: list[str]) -> tuple[dict[str, str | None], list[str]]:
    """``--question Q --context C`` style fields for tasks whose input is a record; other leftovers are
    texts that argparse could not place (a text after an option). A flag with no value maps to None:
    whether it is a misspelled flag or a field without its value is told once the task is known."""
    fields: dict[str, str | None] = {}
    texts, i = [], 0
    while i < len(extra):
        key = extra[i]
        if not key.startswith("--"):
            texts.append(key)
            i += 1
            continue
        name, eq, inline = key[2:].partition("=")
        if eq:
            fields[name.replace("-", "_")] = inline
            i += 1
            continue
        has_value = i + 1 < len(extra) and not extra[i + 1].startswith("--")
        fields[name.replace("-", "_")] = extra[i + 1] if has_value else None
        i += 2 if has_value else 1
    return fields, texts


def _check_predict_flags(pipe: Any, args: argparse.Namespace, fields: dict[str, str | None]) -> None:
    """Flags argparse left over must be fields of the task's input (``Task.input_fields``), each with a
    value; --num-beams only means something to a task that generates text."""
    if not fields and not args.num_beams:
        return
    task = pipe.task(args.task)
    allowed = tuple(getattr(task, "input_fields", ()))
    flags = [f for f in flags_of(subcommand(_parser(), "predict")) if f != "--help"]
    for name, value in fields.items():
        flag = "--" + name.replace("_", "-")
        if name not in allowed:
            takes = (f"its input fields are {', '.join('--' + f.replace('_', '-') for f in allowed)}" if allowed
                     else "its input is plain text (texts as arguments or one per line on stdin)")
            hint = did_you_mean(flag, flags + ["--" + f.replace("_", "-") for f in allowed])
            raise ConfigError(f"unknown flag {flag}{hint}: predict takes {', '.join(flags)}; for task "
                              f"{task.name!r} {takes}")
        if value is None:
            raise ConfigError(f"{flag} needs a value (fields are given as --NAME VALUE)")
    if args.num_beams and not getattr(task, "generative", False):
        raise ConfigError(f"--num-beams is for tasks that generate text (translation, summarization); "
                          f"task {task.name!r} ({task.type_name}) does not")


# ---- tasks -----------------------------------------------------------------------------------------
def cmd_tasks(args: argparse.Namespace) -> int:
    from ..sdk.registry import import_plugin_module, list_tasks

    for module in args.plugin:
        import_plugin_module(module)
    infos = list_tasks(load=False)
    width = max([len(i.name) for i in infos] + [4])
    print(f"{'task':<{width}}  source")
    for info in infos:
        target = info.entry_point.value if info.entry_point else f"{info.cls.__module__}.{info.cls.__qualname__}"
        print(f"{info.name:<{width}}  {info.source} ({target})")
    return 0


# ---- serve / export --------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from ..sdk.registry import import_plugin_module
    from .serve import Limits, require_serve_extra, serve

    require_serve_extra()
    for module in args.plugin:
        import_plugin_module(module)
    key = args.api_key if args.api_key is not None else os.environ.get("NLPKIT_API_KEY") or None
    limits = Limits(args.max_body_bytes, args.max_items, args.max_text_chars)
    serve(args.checkpoint, host=args.host, port=args.port, api_key=key, max_batch_size=args.max_batch_size,
          max_wait_ms=args.max_wait_ms, limits=limits, drain_timeout=args.drain_timeout, keep_alive=args.keep_alive,
          log_level=args.log_level)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..sdk.registry import import_plugin_module
    from .export import export
    from .export.onnx import require_onnx_extra

    if args.format is None and not args.merge:
        raise ConfigError("nlpkit export: give --format transformers|onnx (or --merge for a merged transformers model)")
    fmt = args.format or "transformers"
    if fmt == "onnx":
        require_onnx_extra()
    for module in args.plugin:
        import_plugin_module(module)
    result = export(args.checkpoint, fmt, args.out, task=args.task, merge=args.merge)
    for name, what in result.written.items():
        diff = f" (checked: largest difference {result.max_diff[name]:.1e})" if name in result.max_diff else ""
        print(f"{name}: {what}{diff}")
    for name, diff in result.max_diff.items():
        if name.endswith(" (merge)"):
            print(f"{name[:-8]}: adapters merged into the weights (predictions checked: largest difference {diff:.1e})")
    for name, why in result.notes.items():
        print(f"{name}: {why}", file=sys.stderr)
    print(f"exported to {result.out} (model card: {result.out / 'README.md'})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    if argv is None:  # a real `nlpkit` process (not a call from Python): time its start-up too
        from ..engine.phases import count_from_process_start

        count_from_process_start()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    args.argv = argv
    if extra and args.command != "predict":  # predict takes --FIELD VALUE pairs: checked against its task
        command = subcommand(parser, args.command)
        flag = next((x for x in extra if x.startswith("-")), extra[0])
        command.error(f"unrecognized arguments: {' '.join(extra)}{did_you_mean(flag, flags_of(command))}")
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "predict":
            return cmd_predict(args, extra)
        if args.command == "tasks":
            return cmd_tasks(args)
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "export":
            return cmd_export(args)
    except Interrupted as exc:  # a signal: the checkpoint is saved, the message says how to resume
        if os.environ.get("RANK", "0") == "0":  # every process of a run stopped; one says so
            print(f"nlpkit: {exc}", file=sys.stderr)
        return exc.exit_code
    except NlpkitError as exc:
        print(f"nlpkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nlpkit: interrupted", file=sys.stderr)
        return 130
    return 0
