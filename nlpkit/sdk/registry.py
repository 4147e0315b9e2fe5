"""The task registry: a plain dict filled by a decorator, plus lazily loaded entry points.

Built-in tasks and third-party plugins use the same two mechanisms: the ``@register_task`` decorator
and the ``nlpkit.tasks`` entry-point group. Entry points are only imported when their name is asked
for (or when ``load_all`` is called), so one broken plugin never breaks ``nlpkit --help`` or other tasks.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, TypeVar

from .errors import NlpkitError, UnknownTaskError
from .task import Task

ENTRY_POINT_GROUP = "nlpkit.tasks"

T = TypeVar("T", bound=type)


@dataclass
class TaskInfo:
    name: str
    cls: type | None  # None until an entry point is loaded
    source: str  # "built-in", "plugin <dist>", or "module <name>"
    entry_point: metadata.EntryPoint | None = None


_REGISTRY: dict[str, TaskInfo] = {}


def register_task(name: str, *, replace: bool = False) -> Callable[[T], T]:
    """Class decorator that makes a Task subclass available under ``name``.

    A name registered twice is an error unless ``replace=True``: silently shadowing a task would make
    a checkpoint load a different plugin than the one that trained it.
    """

    def decorate(cls: T) -> T:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise NlpkitError(f"@register_task({name!r}) must decorate a subclass of nlpkit.Task, got {cls!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.cls is not None and existing.cls is not cls and not replace:
            if _qualname(existing.cls) != _qualname(cls):
                raise NlpkitError(
                    f"task name {name!r} is already registered by {_qualname(existing.cls)}; "
                    "pass replace=True to override it on purpose"
                )
        source = existing.source if existing is not None else f"module {cls.__module__}"
        cls.type_name = name
        _REGISTRY[name] = TaskInfo(name, cls, source, existing.entry_point if existing else None)
        return cls

    return decorate


def unregister_task(name: str) -> None:
    _REGISTRY.pop(name, None)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


_entry_points_scanned = False


def _scan_entry_points() -> None:
    """Record entry points by name without importing them."""
    global _entry_points_scanned
    if _entry_points_scanned:
        return
    _entry_points_scanned = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else "?"
        source = "built-in" if dist_name == "nlpkit" else f"plugin {dist_name}"
        existing = _REGISTRY.get(ep.name)
        if existing is None:
            _REGISTRY[ep.name] = TaskInfo(ep.name, None, source, ep)
        elif existing.cls is not None and existing.cls.__module__ == ep.module:
            # imported directly before the scan: it is still the entry point's task
            existing.source, existing.entry_point = source, ep


def rescan_entry_points() -> None:
    """Forget the cached scan (after installing a plugin package in the same process)."""
    global _entry_points_scanned
    _entry_points_scanned = False
    importlib.invalidate_caches()


def _load(info: TaskInfo) -> type[Task]:
    if info.cls is None:
        assert info.entry_point is not None
        try:
            obj = info.entry_point.load()
        except Exception as exc:  # a broken plugin must say which one
            raise NlpkitError(
                f"could not load task {info.name!r} from entry point {info.entry_point.value!r}: {exc}"
            ) from exc
        if not (isinstance(obj, type) and issubclass(obj, Task)):
            raise NlpkitError(f"entry point {info.entry_point.value!r} for task {info.name!r} is not a Task subclass")
        # The module's own @register_task normally registered it already; keep the entry point's source.
        current = _REGISTRY.get(info.name)
        obj.type_name = info.name
        _REGISTRY[info.name] = TaskInfo(info.name, obj, info.source, info.entry_point)
        if current is not None and current.cls not in (None, obj):
            raise NlpkitError(f"entry point {info.name!r} loaded {obj!r} but {current.cls!r} claims that name")
    return info.cls or _REGISTRY[info.name].cls  # type: ignore[return-value]


def import_plugin_module(module: str) -> None:
    """Import a user module (``--plugin my_pkg.my_task``) so its decorators run."""
    if not module or module.startswith("."):
        raise NlpkitError(f"plugin module {module!r}: expected an absolute module name, e.g. my_package.my_task")
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise NlpkitError(f"cannot import plugin module {module!r}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - the plugin's own code failed while importing: say which one
        where = ""
        if isinstance(exc, SyntaxError) and exc.filename:
            where = f" ({exc.filename}:{exc.lineno})"
        raise NlpkitError(f"plugin module {module!r} failed while importing{where}: {type(exc).__name__}: {exc}") from exc


def get_task_class(name: str) -> type[Task]:
    _scan_entry_points()
    info = _REGISTRY.get(name)
    if info is None:
        known = sorted(_REGISTRY)
        hint = difflib.get_close_matches(name, known, n=1)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        raise UnknownTaskError(
            f"unknown task {name!r}.{did_you_mean} Known tasks: {', '.join(known) or '(none)'}. "
            "Register your own with @nlpkit.register_task or the 'nlpkit.tasks' entry-point group."
        )
    return _load(info)


def list_tasks(load: bool = False) -> list[TaskInfo]:
    """All known tasks; with ``load=True`` entry points are imported (to read their descriptions)."""
    _scan_entry_points()
    infos = sorted(_REGISTRY.values(), key=lambda i: i.name)
    if load:
        for info in infos:
            try:
                _load(info)
            except NlpkitError:
                pass
        infos = sorted(_REGISTRY.values(), key=lambda i: i.name)
    return infos
