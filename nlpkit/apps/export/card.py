"""The model card: what a checkpoint was trained on and how well it did, as data (``GET /v1/tasks`` serves it) and
as the README.md every export carries (Hugging Face front matter: license, library, tags). The base model's license
is read from its own card where one is at hand, never guessed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ...sdk.errors import NlpkitError


def model_card(pipe: Any) -> dict[str, Any]:
    """What a model card says, as data (``/v1/tasks`` serves it; exports render it as README.md)."""
    meta = pipe.meta
    config = meta.get("config") or {}
    entries = {(e.get("name") or e.get("type")): e for e in config.get("tasks") or []}
    metrics = meta.get("metrics") or {}
    tasks = []
    for t in pipe.tasks:
        data = dict((entries.get(t.name) or {}).get("data") or {})
        if not data:
            try:
                data = {k: f"{v} (bundled with nlpkit)" for k, v in t.default_data().items()}
            except Exception:  # noqa: BLE001 - a plugin without embedded data
                data = {}
        scores = {k: v for k, v in (metrics.get(t.name) or {}).items() if isinstance(v, (int, float))}
        tasks.append({"name": t.name, "type": t.type_name, "labels": t.state_dict().get("labels"),
                      "training_data": data, "dev_metrics": scores, "main_score": t.main_score})
    backbone = meta.get("backbone") or {}
    return {
        "nlpkit_version": (meta.get("versions") or {}).get("nlpkit"),
        "versions": meta.get("versions"),
        "created": meta.get("created"),
        "step": meta.get("step"),
        "backbone": backbone,
        "license": base_model_license(backbone.get("spec")),
        "tasks": tasks,
        "config": config,
    }


def base_model_license(spec: str | None) -> str | None:
    """The license of the base model, read from its model card's front matter where one is at hand
    (a local folder, an installed alias, the Hugging Face cache); None when it is not known."""
    if not spec:
        return None
    from ...engine.backbone import PRESETS, resolve_alias

    if spec in PRESETS:
        return None  # trained from scratch: no base model, the license is the user's
    candidates: list[Path] = []
    try:
        source = resolve_alias(spec)
    except NlpkitError:
        return None
    folder = Path(source)
    if folder.exists():
        candidates += [folder / "README.md", folder.parent / "README.md"]
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec, "README.md")
            if isinstance(cached, str):
                candidates.append(Path(cached))
        except Exception:  # noqa: BLE001 - no cache, no license
            pass
    for path in candidates:
        found = _front_matter_license(path)
        if found:
            return found
    return None


def _front_matter_license(path: Path) -> str | None:
    if not path.is_file():
        return None
    text = path.read_text(errors="replace")
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    if end < 0:
        return None
    import yaml

    try:
        front = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return None
    value = front.get("license") if isinstance(front, dict) else None
    return str(value) if value else None


def card_markdown(card: dict[str, Any], export_notes: Sequence[str] = ()) -> str:
    """README.md for an export, with Hugging Face front matter (license, library, tags)."""
    front = {"library_name": "transformers", "tags": ["nlpkit"] + [t["type"] for t in card["tasks"]]}
    if card.get("license"):
        front["license"] = card["license"]
    import yaml

    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# nlpkit model: {', '.join(t['name'] for t in card['tasks'])}", "",
             f"Exported from an nlpkit {card.get('nlpkit_version')} checkpoint (step {card.get('step')}, "
             f"saved {card.get('created')}).", ""]
    bb = card.get("backbone") or {}
    lines += [f"- backbone: `{bb.get('spec')}` ({bb.get('model_type')}, {bb.get('kind')}, "
              f"{bb.get('parameters')} parameters)",
              f"- license: {card.get('license') or 'not known (no base model license found; a from-scratch '}"
              + ("" if card.get("license") else "model is under the terms its trainer chooses)"),
              f"- versions: {card.get('versions')}", ""]
    if export_notes:
        lines += ["## This export", ""] + [f"- {n}" for n in export_notes] + [""]
    for t in card["tasks"]:
        lines += [f"## Task `{t['name']}` ({t['type']})", ""]
        if t.get("labels"):
            lines.append(f"- labels: {', '.join(map(str, t['labels']))}")
        for split, path in (t.get("training_data") or {}).items():
            lines.append(f"- {split} data: `{path}`")
        if t.get("dev_metrics"):
            scores = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in t["dev_metrics"].items())
            lines.append(f"- dev metrics (main score `{t['main_score']}`): {scores}")
        lines.append("")
    lines += ["## Training config", "", "```json", json.dumps(card.get("config"), indent=2), "```", ""]
    return "\n".join(lines)


def write_card(pipe: Any, tasks: Sequence[Any], folder: Path, notes: Sequence[str]) -> None:
    """README.md in ``folder``: the card of the exported tasks only, with what this export wrote for each."""
    card = model_card(pipe)
    card["tasks"] = [t for t in card["tasks"] if t["name"] in {x.name for x in tasks}]
    (folder / "README.md").write_text(card_markdown(card, notes))
