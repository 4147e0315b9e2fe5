"""Every test runs offline: a stray hub call fails at once instead of hanging."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# precision "auto" would pick bf16 on CPUs with native bf16: the suite's numbers must not depend on the machine
# (tests of the choice itself fake the CPU; nlpkit.engine.precision.cpu_bf16)
os.environ.setdefault("NLPKIT_CPU_BF16", "0")
# pretraining tasks' token caches (nlpkit.sdk.corpus) go to a folder of this session, never to ~/.cache
if "NLPKIT_CACHE" not in os.environ:
    import tempfile

    os.environ["NLPKIT_CACHE"] = tempfile.mkdtemp(prefix="nlpkit-test-cache-")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

#: the one setting that lets tests read outside the repository: the folder holding conll2003/, sst2/, trec/, ...
BENCHMARKS_VAR = "NLPKIT_BENCHMARKS"
#: files the official scorers produced and small excerpts of releases whose licence allows it (README beside each)
GOLDEN = Path(__file__).resolve().parent / "golden"


def benchmark_dir(name: str) -> Path:
    """The folder of one benchmark release, ``$NLPKIT_BENCHMARKS/<name>``; skips the calling test (or fixture)
    when the variable is unset or names a folder without ``<name>/``.

    The one rule for every test that reads data the repository cannot ship (licences: CoNLL-2003's Reuters
    text, SST-2, TREC, ...): nothing is read outside the repository unless this setting says where, and
    there is no silent fallback to a folder beside the clone. ``.ci/run`` sets it to ../shared/benchmarks
    when that folder exists.
    """
    root = os.environ.get(BENCHMARKS_VAR, "").strip()
    hint = f"set {BENCHMARKS_VAR}=DIR to the benchmark folder to run this"
    if not root:
        pytest.skip(f"{hint}: it reads {name}/ of the benchmark folder, which is not shipped with the repository")
    folder = Path(root).expanduser().resolve() / name
    if not folder.is_dir():
        pytest.skip(f"{hint}: {BENCHMARKS_VAR}={root} has no {name}/ folder")
    return folder


#: why a test marked ``gpu`` is skipped on a machine without CUDA (tests/test_gpu.py)
GPU_SKIP_REASON = "needs a CUDA GPU (run scripts/gpu_check.sh on one)"


def pytest_configure(config):
    # registered here rather than in pyproject.toml: scripts/setup.sh reinstalls whenever pyproject.toml changes
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped with the reason where none is visible "
                                       "(scripts/gpu_check.sh runs them)")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are collected everywhere and skipped, with the reason, where no CUDA device is visible."""
    marked = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=GPU_SKIP_REASON)
    for item in marked:
        item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A benchmark_dir skip is reported at the test that needs the data (``-ra`` lists each one), not here."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and isinstance(report.longrepr, tuple) and f"set {BENCHMARKS_VAR}=DIR" in report.longrepr[2]:
        path, line = item.reportinfo()[:2]
        report.longrepr = (str(path), (line or 0) + 1, report.longrepr[2])


@pytest.fixture(autouse=True)
def _seed():
    import random

    import torch

    random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module's tests: on 2 shared cores, two OpenMP threads fighting other processes ran
    ~8x slower than one. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_sections(**settings) -> dict:
    """Run settings by key name, in their config sections: ``run_sections(lr=1e-3, log_every=2, precision="fp32")``
    -> ``{"trainer": {"lr": 1e-3}, "logging": {"log_every": 2}, "precision": {"compute": "fp32"}}``.

    Read off the section dataclasses (not the table of old names), so that tests name each key where it lives."""
    import dataclasses

    from nlpkit.engine.config import RunConfig

    home = {}
    for section in ("trainer", "precision", "multitask", "checkpoint", "logging", "performance"):
        cls = RunConfig.__dataclass_fields__[section].default_factory
        for f in dataclasses.fields(cls):
            home[f.name] = (section, f.name)
    home["precision"] = ("precision", "compute")
    out: dict = {}
    for key, value in settings.items():
        section, name = home[key]
        out.setdefault(section, {})[name] = value
    return out


def tiny_config(task_type: str, tmp_path, data: dict | None = None, **trainer) -> dict:
    """A run config for a few steps of the smallest from-scratch backbone; ``trainer``: run settings by key name
    (``log_every=1``, ``precision="bf16"``), each put in its section."""
    return {
        "tasks": [{"type": task_type, "data": data or {}}],
        "backbone": {"spec": "mini", "vocab_size": 400},
        **run_sections(**{"max_steps": 4, "batch_size": 8, "progress": False, "log_every": 2, **trainer}),
        "output_dir": str(tmp_path / "run"),
    }


@pytest.fixture(scope="module")
def lines_tsv(tmp_path_factory) -> Path:
    """LABEL<TAB>TEXT lines for the minimal plugin (examples/minimal_plugin.py) and its variants."""
    rows = []
    for i in range(24):
        rows.append(f"question\tWhere is station {i} ?")
        rows.append(f"statement\tStation {i} is near the river .")
    path = tmp_path_factory.mktemp("lines") / "lines.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path
