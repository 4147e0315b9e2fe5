"""Every test runs offline: a stray hub call fails at once instead of hanging."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# precision "auto" would pick bf16 on CPUs with native bf16: the suite's numbers must not depend on the machine
# (tests of the choice itself fake the CPU; nlpkit.distributed.cpu_bf16)
os.environ.setdefault("NLPKIT_CPU_BF16", "0")
# pretraining tasks' token caches (nlpkit.corpus) go to a folder of this session, never to ~/.cache
if "NLPKIT_CACHE" not in os.environ:
    import tempfile

    os.environ["NLPKIT_CACHE"] = tempfile.mkdtemp(prefix="nlpkit-test-cache-")

import pytest  # noqa: E402


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


def tiny_config(task_type: str, tmp_path, data: dict | None = None, **trainer) -> dict:
    """A run config for a few steps of the smallest from-scratch backbone."""
    return {
        "tasks": [{"type": task_type, "data": data or {}}],
        "backbone": {"spec": "mini", "vocab_size": 400},
        "trainer": {"max_steps": 4, "batch_size": 8, "progress": False, "log_every": 2, **trainer},
        "output_dir": str(tmp_path / "run"),
    }
