"""nlpkit's built-in task plugins (installed as the package ``nlpkit_tasks``).

Each module registers itself with ``@nlpkit.register_task`` and is listed in the ``nlpkit.tasks``
entry-point group of nlpkit's pyproject.toml: exactly what a third-party plugin package does.
"""
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
