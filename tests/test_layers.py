"""The layers (nlpkit/sdk <- engine <- apps), checked from the source by scripts/check_layers.py, and the old
module paths kept for one release."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import check_layers  # noqa: E402


def test_the_repository_keeps_its_layers():
    problems, counts = check_layers.report(ROOT)
    assert problems == []
    assert counts["modules"] > 40  # the walk found the package, not an empty folder


@pytest.fixture
def copy(tmp_path):
    """nlpkit/ and tasks/ copied, to plant a bad import in."""
    for name in ("nlpkit", "tasks"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "check_layers.py", tmp_path / "scripts")
    return tmp_path


def _plant(path: Path, text: str) -> None:
    path.write_text(path.read_text() + "\n\n" + text + "\n")


def test_an_upward_import_fails_even_inside_a_function(copy):
    _plant(copy / "nlpkit" / "sdk" / "data.py", "def planted():\n    from ..engine import trainer\n    return trainer")
    problems, _ = check_layers.report(copy)
    assert any("nlpkit.sdk.data" in p and "imports nlpkit.engine.trainer" in p and "sdk may not import engine" in p
               for p in problems), problems
    result = subprocess.run([sys.executable, str(copy / "scripts" / "check_layers.py")], capture_output=True, text=True)
    assert result.returncode == 1  # what CI runs (.ci/run) fails
    assert "nlpkit.sdk.data (line" in result.stdout and "sdk may not import engine" in result.stdout
    _plant(copy / "nlpkit" / "engine" / "config.py", "from ..apps import cli  # noqa")
    problems, _ = check_layers.report(copy)
    assert any("nlpkit.engine.config (line" in p and "engine may not import apps" in p for p in problems), problems


def test_a_cycle_fails_even_within_a_layer(copy):
    _plant(copy / "nlpkit" / "engine" / "checkpoint.py", "def planted():\n    from . import trainer\n    return trainer")
    problems, _ = check_layers.report(copy)
    assert any(p.startswith("import cycle:") and "nlpkit.engine.checkpoint" in p and "nlpkit.engine.trainer" in p
               for p in problems), problems


def test_an_old_path_or_the_package_root_inside_nlpkit_fails(copy):
    _plant(copy / "nlpkit" / "engine" / "optim.py", "from nlpkit.data import open_text  # noqa")
    problems, _ = check_layers.report(copy)
    assert any("nlpkit.engine.optim" in p and "imports nlpkit:" in p for p in problems), problems


def test_a_plugin_importing_past_the_sdk_fails(copy):
    _plant(copy / "tasks" / "ner.py", "from nlpkit.engine.backbone import PRESETS  # noqa")
    problems, _ = check_layers.report(copy)
    assert any("plugin imports past nlpkit.sdk: tasks/ner.py:" in p and "nlpkit.engine.backbone" in p
               for p in problems), problems


@pytest.mark.parametrize("old,new,moved", [
    ("nlpkit.data", "nlpkit.sdk.data", "nlpkit.data moved to nlpkit.sdk.data"),
    ("nlpkit.trainer", "nlpkit.engine.trainer", "nlpkit.trainer moved to nlpkit.engine.trainer"),
    ("nlpkit.heads.classification", "nlpkit.sdk.heads.classification", "nlpkit.heads moved to nlpkit.sdk.heads"),
    ("nlpkit.cli", "nlpkit.apps.cli", "nlpkit.cli moved to nlpkit.apps.cli"),
    ("nlpkit.apps.onnx_export", "nlpkit.apps.export.onnx", "nlpkit.apps.onnx_export moved to nlpkit.apps.export.onnx"),
    ("nlpkit.onnx_export", "nlpkit.apps.export.onnx", "nlpkit.onnx_export moved to nlpkit.apps.export.onnx")])
def test_old_module_paths_are_the_new_modules_with_a_warning(old, new, moved):
    code = (f"import warnings, importlib; warnings.simplefilter('error', DeprecationWarning)\n"
            f"try:\n    importlib.import_module({old!r})\nexcept DeprecationWarning as w:\n    print(w)\n"
            f"warnings.simplefilter('ignore')\n"
            f"print(importlib.import_module({old!r}) is importlib.import_module({new!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == f"{moved}; import it from there (the old path goes in the next release)"
    assert out[1] == "True"


def test_no_core_module_names_a_built_in_task_type():
    """The core learns about tasks through the plugin API only: no string literal in nlpkit/ is a built-in type."""
    from importlib import metadata

    types = {ep.name for ep in metadata.entry_points(group="nlpkit.tasks")}
    assert {"ner", "classification", "qa"} <= types
    found = []
    for path in sorted((ROOT / "nlpkit").rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and node.value in types and id(node) not in docstrings]
    assert found == []


def test_no_core_function_is_over_80_lines():
    """A function a newcomer cannot read in one screen is split by concern (scripts/architecture_report.py
    prints the longest ones)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import architecture_report

    long = [f"{path.relative_to(ROOT)}:{name} ({n} lines)" for path in architecture_report.python_files(ROOT)
            for name, n in architecture_report.functions(ast.parse(path.read_text())) if n > 80]
    assert long == []
