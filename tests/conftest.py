"""Every test runs offline: a stray hub call fails at once instead of hanging."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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


def tiny_config(task_type: str, tmp_path, data: dict | None = None, **trainer) -> dict:
    """A run config for a few steps of the smallest from-scratch backbone."""
    return {
        "tasks": [{"type": task_type, "data": data or {}}],
        "backbone": {"spec": "mini", "vocab_size": 400},
        "trainer": {"max_steps": 4, "batch_size": 8, "progress": False, "log_every": 2, **trainer},
        "output_dir": str(tmp_path / "run"),
    }
