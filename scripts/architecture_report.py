#!/usr/bin/env python3
"""The figures of docs/architecture.md's before/after table, counted from the source of one commit.

    python scripts/architecture_report.py                   # the working tree
    python scripts/architecture_report.py --rev fb4d572     # a commit (git archive into a temporary folder)
    python scripts/architecture_report.py --rev fb4d572 --rev HEAD   # side by side

Standard library only, and nothing is imported from the checkout: an old commit's layout is read as text.
What is counted:
  * files and lines of nlpkit/, per subpackage (a flat package counts as "top");
  * the longest functions and how many are over 80 lines;
  * per capability, the files whose identifiers (code names, not comments or strings) name it: PEFT
    (peft, lora, dora, adapter), precision (bf16, fp16, autocast, precision), generation (generate, generation,
    generative, num_beams), export (export, onnx). A crude measure of how far a capability has spread: a file
    that only passes an option through counts as much as its home (``--files`` lists them);
  * run-config keys per section (the dataclass fields behind RunConfig);
  * hooks the minimal example plugin (examples/minimal_plugin.py) writes, and methods of the Trainer class.
"""
from __future__ import annotations

import argparse
import ast
import io
import re
import subprocess
import sys
import tarfile
import tempfile
import tokenize
from pathlib import Path

CAPABILITIES = {
    "PEFT": re.compile(r"peft|lora|dora|adapter", re.I),
    "precision": re.compile(r"bf16|fp16|bfloat16|float16|autocast|precision", re.I),
    "generation": re.compile(r"generat(e|ion|ive|ed)|TextGenerat|num_beams", re.I),  # not torch's Generator
    "export": re.compile(r"export|onnx", re.I),
}
TASK_HOOKS = {"default_data", "read", "read_hub", "fit", "check", "texts", "state_dict", "load_state_dict",
              "special_tokens", "modeling", "setup", "encode", "collate", "feature_length", "feature_lengths",
              "describe_features", "build_head", "predict_batch", "decode", "score", "parse_input",
              "format_prediction", "export_model", "export_logits", "export_tokenizer"}


def python_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "nlpkit").rglob("*.py") if "__pycache__" not in p.parts)


def layer_of(root: Path, path: Path) -> str:
    parts = path.relative_to(root / "nlpkit").parts
    return parts[0] if len(parts) > 1 and parts[0] in ("sdk", "engine", "apps") else "top"


def functions(tree: ast.AST) -> list[tuple[str, int]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append((node.name, node.end_lineno - node.lineno + 1))
    return out


def identifiers(source: str) -> set[str]:
    names = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME:
            names.add(tok.string)
    return names


def config_sections(root: Path) -> dict[str, int]:
    """RunConfig's dataclass sections and how many keys each has (top-level scalars counted as one section)."""
    candidates = [root / "nlpkit" / "engine" / "config.py", root / "nlpkit" / "config.py"]
    path = next(p for p in candidates if p.exists())
    tree = ast.parse(path.read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}

    def fields(cls: ast.ClassDef) -> list[tuple[str, str]]:
        return [(s.target.id, ast.unparse(s.annotation)) for s in cls.body
                if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]

    out, scalars = {}, 0
    for name, annotation in fields(classes["RunConfig"]):
        inner = re.sub(r"^(Optional|list)\[(.*)\]$", r"\2", annotation)
        if inner in classes:
            out[name] = len(fields(classes[inner]))
        else:
            scalars += 1
    out["(top level)"] = scalars
    return out


def class_methods(path: Path, class_name: str) -> list[str]:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return [n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return []


def report(root: Path) -> dict[str, object]:
    files = python_files(root)
    per_layer: dict[str, list[int]] = {}
    longest: list[tuple[int, str]] = []
    spread: dict[str, list[str]] = {cap: [] for cap in CAPABILITIES}
    for path in files:
        source = path.read_text()
        lines = source.count("\n")
        entry = per_layer.setdefault(layer_of(root, path), [0, 0])
        entry[0] += 1
        entry[1] += lines
        rel = str(path.relative_to(root))
        longest += [(n, f"{rel}:{name}") for name, n in functions(ast.parse(source))]
        names = identifiers(source)
        for cap, pattern in CAPABILITIES.items():
            if any(pattern.search(name) for name in names):
                spread[cap].append(str(path.relative_to(root / "nlpkit")))
    longest.sort(reverse=True)
    trainer = next(p for p in (root / "nlpkit" / "engine" / "trainer.py", root / "nlpkit" / "trainer.py") if p.exists())
    example = root / "examples" / "minimal_plugin.py"
    plugin_class = re.search(r"^class (\w+)\(Task\)", example.read_text(), re.M).group(1)
    return {
        "files / lines": {k: tuple(v) for k, v in sorted(per_layer.items())},
        "total": (len(files), sum(v[1] for v in per_layer.values())),
        "longest functions": [f"{name} {n}" for n, name in longest[:3]],
        "functions over 80 lines": sum(n > 80 for n, _ in longest),
        "files naming the capability": spread,
        "config keys per section": config_sections(root),
        "hooks of the minimal plugin": sorted(set(class_methods(example, plugin_class)) & TASK_HOOKS),
        "methods of Trainer": len(class_methods(trainer, "Trainer")),
    }


def checkout(rev: str, into: Path) -> Path:
    data = subprocess.run(["git", "archive", "--format=tar", rev], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def show(label: str, figures: dict[str, object], files: bool = False) -> None:
    print(f"== {label}")
    for key, value in figures.items():
        if key == "hooks of the minimal plugin":
            value = f"{len(value)}: {', '.join(value)}"
        if key == "files naming the capability":
            value = {cap: f"{len(names)}" + (f" ({', '.join(names)})" if files else "") for cap, names in value.items()}
        print(f"{key}: {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", action="append", default=[], help="a commit to count (repeat for several)")
    parser.add_argument("--files", action="store_true", help="list the files that name each capability")
    args = parser.parse_args(argv)
    if not args.rev:
        show("working tree", report(Path(__file__).resolve().parents[1]), args.files)
        return 0
    for rev in args.rev:
        with tempfile.TemporaryDirectory() as tmp:
            show(rev, report(checkout(rev, Path(tmp))), args.files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
