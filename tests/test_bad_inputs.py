"""The bad-input sweep: every case in tests/bad_inputs/*.yaml runs through ``nlpkit.apps.cli.main`` in-process.

The case format is described in tests/bad_inputs/README.md. Each case gets a fresh folder (with a copy of
a tiny trained run when it asks for one), its files, its stdin, a time limit, and the checks: nothing but
SystemExit escapes ``main``, the exit code (2 unless the case says otherwise), the expected stderr text,
the expected standard output (text, number of lines) and written files, and byte-identical ``unchanged`` paths.
A case that expects success must check at least one of its results. A last test prints the tally over all cases.
"""
from __future__ import annotations

import collections
import contextlib
import gzip
import hashlib
import io
import shutil
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import benchmark_dir, tiny_config

ROOT = Path(__file__).resolve().parents[1]
CASES_DIR = Path(__file__).parent / "bad_inputs"
#: the keys that check what a case produced (a success must have one; tests/bad_inputs/README.md)
RESULT_CHECKS = ("expect", "stdout", "stdout_lines", "produced")
DEFAULT_TIMEOUT = 60
MIN_CASES = 100


def _load_cases() -> list[dict[str, Any]]:
    """Every case of every YAML file, with the file it came from; ids must be unique across files."""
    cases, seen = [], {}
    for path in sorted(CASES_DIR.glob("*.yaml")):
        entries = yaml.safe_load(path.read_text(encoding="utf-8")) or []
        assert isinstance(entries, list), f"{path}: a case file is a list of cases"
        for entry in entries:
            assert isinstance(entry, dict) and "id" in entry and "argv" in entry, f"{path}: bad case {entry!r}"
            assert entry["id"] not in seen, f"{path}: case id {entry['id']!r} also in {seen[entry['id']]}"
            assert entry.get("exit", 2) != 0 or any(k in entry for k in RESULT_CHECKS), (
                f"{path}: case {entry['id']!r} expects success but checks nothing of the result: give it one of "
                f"{', '.join(RESULT_CHECKS)}")
            seen[entry["id"]] = path.name
            cases.append({**entry, "_file": path.name})
    return cases


CASES = _load_cases()
#: case id -> outcome, filled as the cases run; the summary test prints it
RESULTS: dict[str, dict[str, Any]] = {}


# ---- the tiny trained runs ------------------------------------------------------------------------
class TrainedRuns:
    """One tiny checkpoint per task type, trained on first use (only for the types cases ask for)."""

    def __init__(self, root: Path):
        self.root = root
        self.runs: dict[str, Path] = {}

    def get(self, task_type: str) -> Path:
        if task_type not in self.runs:
            import nlpkit

            folder = self.root / task_type
            config = tiny_config(task_type, folder, max_steps=2, batch_size=8, plots=False, tensorboard=False)
            nlpkit.train(config)
            self.runs[task_type] = folder / "run"
        return self.runs[task_type]


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory) -> TrainedRuns:
    return TrainedRuns(tmp_path_factory.mktemp("bad-input-runs"))


# ---- files ----------------------------------------------------------------------------------------
def _fill(text: str, tmp: Path) -> str:
    """Placeholders by plain replacement (file texts may hold JSON braces, so no str.format).

    ``{benchmarks}`` is the folder named by $NLPKIT_BENCHMARKS; a case that uses it is skipped when it is unset."""
    text = text.replace("{tmp}", str(tmp)).replace("{repo}", str(ROOT))
    if "{benchmarks}" in text:
        text = text.replace("{benchmarks}", str(_benchmarks_root(text)))
    return text


def _benchmarks_root(text: str) -> Path:
    """$NLPKIT_BENCHMARKS, through the suite's one rule (conftest.benchmark_dir: skip when unset or missing)."""
    after = text.split("{benchmarks}", 1)[1].lstrip("/")
    name = after.split("/", 1)[0]
    if not name:
        raise ValueError(f"{{benchmarks}} must be followed by /NAME/... (the benchmark's folder), got {text!r}")
    return benchmark_dir(name).parent


def _content(spec: Any, tmp: Path, target: Path | None = None) -> bytes:
    """The bytes a file spec of the README stands for."""
    if isinstance(spec, str):
        return _fill(spec, tmp).encode("utf-8")
    if not isinstance(spec, dict):
        raise ValueError(f"bad file spec {spec!r}")
    if "text" in spec:
        encoding = spec.get("encoding", "utf-8")
        data = _fill(spec["text"], tmp).encode(encoding)
        if spec.get("bom"):
            data = _bom(encoding) + data
    elif "gzip" in spec:
        data = gzip.compress(_fill(spec["gzip"], tmp).encode("utf-8"), mtime=0)
    elif "hex" in spec:
        data = bytes.fromhex(spec["hex"])
    elif "repeat" in spec:
        body = _fill(spec["repeat"], tmp) * int(spec["times"])
        data = (_fill(spec.get("prefix", ""), tmp) + body + _fill(spec.get("suffix", ""), tmp)).encode("utf-8")
    elif "copy" in spec:
        data = (ROOT / _fill(spec["copy"], tmp)).read_bytes()
        data += _fill(spec.get("append", ""), tmp).encode("utf-8")
    else:
        raise ValueError(f"bad file spec {spec!r}")
    if "truncate" in spec:
        data = data[: int(spec["truncate"])]
    if spec.get("same_size"):
        data = _same_size(data, target)
    return data


def _same_size(data: bytes, target: Path | None) -> bytes:
    """Damage the size check cannot see: pad with spaces (still valid JSON) or cut to the replaced file's size."""
    if target is None or not target.is_file():
        raise ValueError(f"same_size: {target} is not an existing file")
    size = target.stat().st_size
    return data[:size] + b" " * max(0, size - len(data))


def _bom(encoding: str) -> bytes:
    import codecs

    name = codecs.lookup(encoding).name
    boms = {"utf-8": codecs.BOM_UTF8, "utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE,
            "utf-32-le": codecs.BOM_UTF32_LE, "utf-32-be": codecs.BOM_UTF32_BE,
            "utf-16": codecs.BOM_UTF16, "utf-32": codecs.BOM_UTF32}
    return boms.get(name, b"")


def _write_files(files: dict[str, Any], tmp: Path) -> None:
    for name, spec in (files or {}).items():
        path = tmp / _fill(name, tmp)
        if isinstance(spec, dict) and "copy" in spec and (ROOT / _fill(spec["copy"], tmp)).is_dir():
            shutil.copytree(ROOT / _fill(spec["copy"], tmp), path, dirs_exist_ok=True)
            continue
        if name.endswith("/"):
            if path.is_file():
                path.unlink()  # a folder where the run has a file: damage the size check reports
            path.mkdir(parents=True, exist_ok=True)
            continue
        data = _content(spec, tmp, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.rmtree(path)
        path.write_bytes(data)


def _snapshot(path: Path) -> Any:
    """Bytes (as hashes) of a file, or of every file under a folder; None when it does not exist."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if path.is_dir():
        return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(path.rglob("*")) if p.is_file()}
    return None


# ---- running one case -----------------------------------------------------------------------------
class Hang(BaseException):
    """Raised by the alarm: BaseException so that no ``except Exception`` in nlpkit swallows it."""


@contextlib.contextmanager
def _alarm(seconds: int):
    def ring(signum, frame):
        raise Hang(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _run_main(argv: list[str], stdin: bytes, timeout: int) -> dict[str, Any]:
    """(exit code, stderr, traceback or None, hang) of one in-process ``main(argv)``."""
    from nlpkit.apps.cli import main

    err = io.StringIO()
    out = io.StringIO()
    fake_stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    result: dict[str, Any] = {"exit": None, "traceback": None, "hang": False}
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = fake_stdin, out, err
    try:
        with _alarm(timeout):
            code = main(argv)
        result["exit"] = 0 if code is None else code
    except SystemExit as exc:
        result["exit"] = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=err)
    except Hang as exc:
        result["hang"] = True
        result["traceback"] = f"hang: {exc}\n" + traceback.format_exc()
    except BaseException:  # noqa: BLE001 - a traceback is exactly what the sweep counts
        result["traceback"] = traceback.format_exc()
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
    result["stderr"], result["stdout"] = err.getvalue(), out.getvalue()
    return result


def _check(case: dict[str, Any], result: dict[str, Any], before: dict[str, Any], tmp: Path) -> list[str]:
    problems = []
    if result["hang"]:
        problems.append(f"hang (timeout {case.get('timeout', DEFAULT_TIMEOUT)} s)")
    if result["traceback"]:
        problems.append("traceback:\n" + result["traceback"])
    want = case.get("exit", 2)
    if not result["traceback"] and result["exit"] != want:
        problems.append(f"exit code {result['exit']}, expected {want}")
    expect = case.get("expect")
    if expect is not None and _fill(str(expect), tmp).lower() not in result["stderr"].lower():
        problems.append(f"stderr lacks {expect!r}")
    for text in _texts(case.get("stdout")):
        if _fill(text, tmp).lower() not in result["stdout"].lower():
            problems.append(f"stdout lacks {text!r}")
    if "stdout_lines" in case:
        lines = [line for line in result["stdout"].splitlines() if line.strip()]
        if len(lines) != int(case["stdout_lines"]):
            problems.append(f"stdout has {len(lines)} non-empty lines, expected {case['stdout_lines']}")
    for rel, wanted in (case.get("produced") or {}).items():
        path = tmp / _fill(rel, tmp)
        if not path.is_file():
            problems.append(f"{rel} was not written")
            continue
        content = path.read_text(encoding="utf-8", errors="replace")
        problems += [f"{rel} lacks {text!r}" for text in _texts(wanted) if _fill(text, tmp) not in content]
    for rel, snap in before.items():
        if _snapshot(tmp / rel) != snap:
            problems.append(f"{rel} changed (it must stay unchanged)")
    return problems


def _texts(spec: Any) -> list[str]:
    """A check's texts: one string or a list of them."""
    if spec is None:
        return []
    return [str(t) for t in spec] if isinstance(spec, list) else [str(spec)]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(case, trained_runs, tmp_path, monkeypatch):
    tmp = tmp_path
    if case.get("run"):
        shutil.copytree(trained_runs.get(case["run"]), tmp / "run")
    _write_files(case.get("files") or {}, tmp)
    stdin = _content(case["stdin"], tmp) if "stdin" in case else b""
    before = {rel: _snapshot(tmp / rel) for rel in case.get("unchanged") or []}
    monkeypatch.chdir(tmp)
    monkeypatch.syspath_prepend(str(tmp))  # as `python -m nlpkit` run there: --plugin finds the case's modules
    modules = set(sys.modules)
    argv = [_fill(str(a), tmp) for a in case["argv"]]
    result = _run_main(argv, stdin, int(case.get("timeout", DEFAULT_TIMEOUT)))
    for name in set(sys.modules) - modules:  # a case's plugin must not leak into the next case
        if str(tmp) in str(getattr(sys.modules[name], "__file__", "") or ""):
            del sys.modules[name]
    problems = _check(case, result, before, tmp)
    RESULTS[case["id"]] = {**result, "problems": problems, "file": case["_file"]}
    assert not problems, (f"{case['_file']}: {case['id']}: nlpkit {' '.join(argv)}\n" + "\n".join(problems)
                          + f"\n--- stderr ---\n{result['stderr'][-3000:]}")


def test_summary(capsys):
    """At least MIN_CASES cases exist; prints the tally of the cases that ran in this session."""
    ran = list(RESULTS.values())
    exits = collections.Counter(str(r["exit"]) for r in ran if not r["traceback"])
    tally = (f"bad-input sweep: {len(CASES)} cases in {len({c['_file'] for c in CASES})} files, {len(ran)} ran; "
             f"tracebacks {sum(1 for r in ran if r['traceback'] and not r['hang'])}, "
             f"hangs {sum(1 for r in ran if r['hang'])}, "
             f"failed checks {sum(1 for r in ran if r['problems'])}; "
             f"exit codes {dict(sorted(exits.items()))}")
    with capsys.disabled():
        print("\n" + tally)
    assert len(CASES) >= MIN_CASES, f"only {len(CASES)} cases; the sweep needs at least {MIN_CASES}"
