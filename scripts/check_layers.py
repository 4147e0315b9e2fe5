#!/usr/bin/env python
"""Checks nlpkit's layers from the source: every import between nlpkit modules, at module level or inside a
function (a lazy import is still a dependency), must go down or sideways, and none may close a cycle.

    sdk     nlpkit/sdk/     what a task plugin uses (Task, options, data, heads, generation, registry, errors)
    engine  nlpkit/engine/  config, model building, checkpoints, precision, sharding, the trainer, evaluation
    apps    nlpkit/apps/    cli, Pipeline (predict), serve, export, the onnxruntime runtime, reports
    top     nlpkit/__init__.py, __main__.py, testing.py: re-exports and plugin authors' test helpers

``_version`` and ``_moved`` (old paths kept for one release) are leaves below the sdk. Plugins (tasks/) may import
``nlpkit`` and ``nlpkit.sdk`` only; ``nlpkit.testing`` is for their tests.

    python scripts/check_layers.py            # the report; exit status 1 on a violation
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RANK = {"leaf": 0, "sdk": 1, "engine": 2, "apps": 3, "top": 4}
LEAVES = ("_version", "_moved")
TOP = ("", "__main__", "testing")


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module, dotted
    line: int
    in_function: bool


def layer(module: str) -> str:
    """``nlpkit.engine.trainer`` -> engine; the package root and its helpers -> top."""
    parts = module.split(".")[1:]
    head = parts[0] if parts else ""
    if head in LEAVES:
        return "leaf"
    if head in TOP:
        return "top"
    if head in ("sdk", "engine", "apps"):
        return head
    raise ValueError(f"{module}: not in a layer (a module directly in nlpkit/ that is not {TOP + LEAVES})")


def modules(package: Path) -> dict[str, tuple[Path, bool]]:
    """dotted name -> (file, is a package)"""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def imports(package: Path) -> list[Import]:
    """Every import of a module of ``package`` by a module of ``package``, with where it is."""
    known = modules(package)
    found = []
    for name, (path, is_pkg) in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node, in_function in _walk(tree, False):
            for target in sorted(set(_targets(name, is_pkg, node, known)) - {name}):
                found.append(Import(name, target, node.lineno, in_function))
    return found


def _walk(node: ast.AST, in_function: bool):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        yield from _walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))


def _targets(module: str, is_pkg: bool, node: ast.AST, known: dict) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_pkg else module.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix for a in node.names]
    out = []
    for dotted in names:
        while dotted and dotted not in known:  # nlpkit.sdk.data.thing -> nlpkit.sdk.data
            dotted = dotted.rpartition(".")[0]
        if dotted:
            out.append(dotted)
    return out


def upward(found: list[Import]) -> list[Import]:
    return [i for i in found if RANK[layer(i.target)] > RANK[layer(i.source)]]


def cycles(found: list[Import]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), every import counted."""
    graph: dict[str, set[str]] = {}
    for i in found:
        graph.setdefault(i.source, set()).add(i.target)
        graph.setdefault(i.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def plugin_imports(plugins: Path) -> list[str]:
    """Imports of nlpkit by plugin code that go past the sdk: 'file:line: module'."""
    bad = []
    for path in sorted(plugins.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node, _ in _walk(tree, False):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if not node.level else [])
            for name in names:
                if name == "nlpkit.testing" and "tests" in path.parts:
                    continue
                if name.split(".")[0] == "nlpkit" and name != "nlpkit" and not name.startswith("nlpkit.sdk"):
                    bad.append(f"{path.relative_to(plugins.parent)}:{node.lineno}: {name}")
    return bad


def report(root: Path = ROOT) -> tuple[list[str], dict[str, int]]:
    """(problems, counts)"""
    found = imports(root / "nlpkit")
    problems = [f"{i.source} (line {i.line}) imports {i.target}: {layer(i.source)} may not import {layer(i.target)}"
                for i in upward(found)]
    problems += [f"import cycle: {', '.join(group)} import each other" for group in cycles(found)]
    problems += [f"plugin imports past nlpkit.sdk: {line}" for line in plugin_imports(root / "tasks")]
    counts = {"modules": len(modules(root / "nlpkit")), "import statements": len(found),
              "inside functions": sum(i.in_function for i in found),
              "module pairs": len({(i.source, i.target) for i in found})}
    return problems, counts


def main() -> int:
    problems, counts = report()
    print(", ".join(f"{v} {k}" for k, v in counts.items()) + f"; {len(problems)} problems")
    for line in problems:
        print("  " + line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
