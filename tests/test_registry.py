import pytest

from nlpkit import NlpkitError, Task, UnknownTaskError, register_task
from nlpkit.apps.cli import main
from nlpkit.sdk.registry import get_task_class, list_tasks, unregister_task


def test_register_and_look_up():
    @register_task("test-dummy")
    class Dummy(Task):
        pass

    try:
        assert get_task_class("test-dummy") is Dummy
        assert Dummy.type_name == "test-dummy"
        info = {i.name: i for i in list_tasks()}["test-dummy"]
        assert info.source == f"module {__name__}"
    finally:
        unregister_task("test-dummy")


def test_duplicate_name_is_refused_unless_replaced():
    @register_task("test-dup")
    class First(Task):
        pass

    try:
        with pytest.raises(NlpkitError, match="already registered"):
            @register_task("test-dup")
            class Second(Task):
                pass

        @register_task("test-dup", replace=True)
        class Third(Task):
            pass

        assert get_task_class("test-dup") is Third
    finally:
        unregister_task("test-dup")


def test_only_task_subclasses_register():
    with pytest.raises(NlpkitError, match="subclass of nlpkit.Task"):
        register_task("test-bad")(object)


def test_unknown_task_lists_known_ones_and_suggests():
    with pytest.raises(UnknownTaskError) as err:
        get_task_class("nerr")
    assert "Did you mean 'ner'" in str(err.value)
    assert "ner" in str(err.value).split("Known tasks:")[1]


def test_builtin_ner_comes_from_the_entry_point_group():
    info = {i.name: i for i in list_tasks()}["ner"]
    assert info.source == "built-in"
    assert info.entry_point is not None and info.entry_point.value == "nlpkit_tasks.ner:NerTask"
    assert get_task_class("ner").__module__ == "nlpkit_tasks.ner"


def test_wheel_ships_nlpkit_tasks_not_a_generic_tasks_module(tmp_path):
    """Users have their own tasks.py: the wheel must not put a top-level `tasks` in site-packages."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(root)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("nlpkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "nlpkit_tasks/ner.py" in names and "nlpkit_tasks/data/ner/train.conll" in names
    assert not any(n.startswith("tasks/") for n in names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "ner = nlpkit_tasks.ner:NerTask" in entry_points


def test_cli_tasks_lists_builtins(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "ner" in out and "built-in" in out


def test_cli_unknown_task_is_a_clear_error(capsys, tmp_path):
    assert main(["train", "--task", "nope", "--output-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'nope'" in err and "Traceback" not in err
