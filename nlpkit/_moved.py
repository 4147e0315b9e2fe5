"""Old module paths, kept working for one release: ``import nlpkit.data`` (a plugin written before the layers)
gets ``nlpkit.sdk.data`` itself, with a DeprecationWarning naming the new path. One table, one finder; nothing in
nlpkit imports through it (tests/test_layers.py checks that the old paths are only aliases)."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

_LAYERS = {
    "sdk": ("cache", "corpus", "data", "errors", "generation", "heads", "options", "registry", "task"),
    "engine": ("adapters", "backbone", "build", "checkpoint", "config", "curves", "distributed", "evaluation",
               "fast_dropout", "heap", "model", "optim", "phases", "preemption", "run_log",
               "sharding", "tables", "task_data", "task_weighting", "tracking", "train_state", "trainer"),
    "apps": ("cli", "export", "onnx_runtime", "predict", "report", "serve"),
}
#: old dotted name -> where the module lives now
MOVED = {f"nlpkit.{name}": f"nlpkit.{layer}.{name}" for layer, names in _LAYERS.items() for name in names}
MOVED["nlpkit.inference_precision"] = "nlpkit.engine.precision"  # joined with training's precision rules
MOVED["nlpkit.onnx_export"] = MOVED["nlpkit.apps.onnx_export"] = "nlpkit.apps.export.onnx"  # export by format


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        top = next((old for old in MOVED if fullname == old or fullname.startswith(old + ".")), None)
        if top is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        top = next(old for old in MOVED if spec.name == old or spec.name.startswith(old + "."))
        new = MOVED[top] + spec.name[len(top):]
        warnings.warn(f"{spec.name} moved to {new}; import it from there (the old path goes in the next release)",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module) -> None:
        return None


def install() -> None:
    if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
        sys.meta_path.insert(0, _OldPaths())  # before PathFinder, which would load a second copy of a submodule
