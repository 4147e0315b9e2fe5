"""Where nlpkit keeps what it can make again: one root for every cache (data tables, token caches, ONNX graphs).

``$NLPKIT_CACHE/<kind>``, else ``$XDG_CACHE_HOME/nlpkit/<kind>``, else ``~/.cache/nlpkit/<kind>``. Deleting any
of these folders is always safe: the next run rebuilds what it needs.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_root(kind: str) -> Path:
    """The cache folder of one kind ("data", "corpus", "onnx")."""
    root = os.environ.get("NLPKIT_CACHE")
    if root:
        return Path(root) / kind
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nlpkit" / kind
