"""Benchmark reports: what was evaluated, with which model and budget, and every score with the
version of the scorer that produced it, as report.json (machines) and report.md (people)."""
from __future__ import annotations

import json
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

SCORERS = ("seqeval", "sacrebleu", "rouge-score", "nlpkit")


def scorer_versions() -> dict[str, str]:
    out = {}
    for name in SCORERS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _run_folder(checkpoint_path: Path) -> Path:
    """The run folder of a checkpoint (best/ or checkpoints/step-N/), or the folder itself."""
    for folder in (checkpoint_path, checkpoint_path.parent, checkpoint_path.parent.parent):
        if (folder / "metrics.json").is_file() or (folder / "log.jsonl").is_file():
            return folder
    return checkpoint_path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def write_report(target: str | Path, pipe: Any, results: Mapping[str, dict[str, Any]], files: Mapping[str, str],
                 recipe: str | None = None, splits: Mapping[str, dict[str, str]] | None = None) -> list[Path]:
    """Write report.json, report.md and learning curves into the run folder; returns the files. ``splits``: per
    result, the split scored and its source in words ({"split": "test", "source": "hub dataset ..."})."""
    run = _run_folder(Path(pipe.path))
    config = _read_json(run / "config.json") or pipe.meta.get("config", {})
    training = _read_json(run / "metrics.json")
    trainer = config.get("trainer", {})
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "checkpoint": str(pipe.path),
        "recipe": recipe,
        "model": {**pipe.meta.get("backbone", {}), "tasks": [{"name": t["name"], "type": t["type"],
                                                               "version": t.get("version")} for t in pipe.meta["tasks"]]},
        "budget": {k: trainer.get(k) for k in ("epochs", "max_steps", "batch_size", "lr", "seed") if k in trainer}
                  | {k: training.get(k) for k in ("steps", "best_step", "wall_time_s", "device", "processes",
                                                  "precision") if k in training},
        "results": {key: {"data": files.get(key), **((splits or {}).get(key) or {}), "metrics": metrics}
                    for key, metrics in results.items()},
        "scorers": scorer_versions(),
        "versions": pipe.meta.get("versions", {}),
    }
    written = [run / "report.json", run / "report.md"]
    (run / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (run / "report.md").write_text(_markdown(report))
    if (run / "log.jsonl").is_file():
        try:
            from ..engine.curves import plot_run

            scores = {t.name: t.main_score for t in pipe.tasks}
            shown = {t.name: t.curve_metric for t in pipe.tasks if getattr(t, "curve_metric", None)}
            written += list(plot_run(run / "log.jsonl", run / "curves", scores, shown).values())
        except ImportError:  # matplotlib is optional
            pass
    return written


def _markdown(report: dict[str, Any]) -> str:
    model = report["model"]
    lines = [
        "# nlpkit benchmark report", "",
        f"- checkpoint: `{report['checkpoint']}`" + (f" (recipe `{report['recipe']}`)" if report["recipe"] else ""),
        f"- backbone: `{model.get('spec')}` ({model.get('model_type')}, {model.get('parameters', 0) / 1e6:.1f}M parameters)",
        "- budget: " + ", ".join(f"{k} {v}" for k, v in report["budget"].items() if v is not None),
        "- scorers: " + ", ".join(f"{k} {v}" for k, v in report["scorers"].items()),
        f"- created: {report['created']}", "",
    ]
    for key, entry in report["results"].items():
        lines += [f"## {key}", "", f"data: `{entry['data']}`", ""]
        if entry.get("split"):
            lines += [f"split: **{entry['split']}**" + (f" ({entry['source']})" if entry.get("source") else ""), ""]
        lines += ["| metric | value |", "|---|---|"]
        nested = []
        for name, value in entry["metrics"].items():
            if isinstance(value, dict):
                nested.append((name, value))
            elif isinstance(value, float):
                lines.append(f"| {name} | {value:.2f} |")
            else:
                lines.append(f"| {name} | {value} |")
        for name, table in nested:
            rows = [(k, v) for k, v in table.items() if isinstance(v, dict)]
            if not rows:
                continue
            cols = list(rows[0][1])
            lines += ["", f"{name}:", "", "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
            for k, v in rows:
                lines.append(f"| {k} | " + " | ".join(f"{v.get(c):.2f}" if isinstance(v.get(c), float) else str(v.get(c, ""))
                                                      for c in cols) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"
