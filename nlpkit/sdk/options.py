"""Build typed dataclasses from plain dicts (YAML, JSON, CLI), failing early with the key at fault.

One small checker instead of a config framework. It is total over the field types our configs use
(bool, int, float, str, Any, Optional/Union, Literal, list, tuple, dict, nested dataclasses, and
``Annotated[int, Range(lo, hi)]`` for bounded integers): whatever a recipe holds, the result is either
a well-typed object or a ConfigError naming the full dotted key and what was expected.
"""
from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Range:
    """``Annotated[int, Range(0, 2**32 - 1)]``: a bound that holds for every value of the field, wherever it
    comes from (recipe, flag, --set), checked with the type instead of in each ``validate``."""

    lo: float | None = None
    hi: float | None = None

    def check(self, value: Any, key: str) -> None:
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            lo = "" if self.lo is None else f"{self.lo:g}" if isinstance(self.lo, float) else str(self.lo)
            hi = "" if self.hi is None else f"{self.hi:g}" if isinstance(self.hi, float) else str(self.hi)
            what = f"between {lo} and {hi}" if lo and hi else f"at least {lo}" if lo else f"at most {hi}"
            raise ConfigError(f"{key}: must be {what}, got {show(value)}")


_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxdict, _SHOW.maxstring, _SHOW.maxother = 2, 5, 5, 80, 80


def show(value: Any) -> str:
    """A value for an error message, cut short: a recipe may hold a huge (or YAML-alias-bombed) structure."""
    return _SHOW.repr(value)


def _is_scalar(tp: Any) -> bool:
    return tp in (bool, int, float, str) or get_origin(tp) is Literal


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _describe(tp: Any) -> str:
    """Words for a type in an error message ("a number or null", not "Optional[float]")."""
    if tp is type(None):
        return "null"
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(map(repr, get_args(tp)))
    if get_origin(tp) is Annotated:
        return _describe(get_args(tp)[0])
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", list: "a list",
             tuple: "a list", dict: "a mapping"}
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return names.get(tp) or names.get(get_origin(tp)) or _type_name(tp)


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently convert: int→float, "3"→3 from the command line) ``value`` against ``tp``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        base, *metadata = get_args(tp)
        value = coerce(value, base, key)
        for meta in metadata:
            if isinstance(meta, Range):
                meta.check(value, key)
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        choices = [a for a in args if a is not type(None)]
        if len(choices) == 1 and not _is_scalar(choices[0]):
            return coerce(value, choices[0], key)  # Optional[X]: X's own message (a range, a nested key)
        for arg in choices:
            try:
                return coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {' or '.join(_describe(a) for a in args)}, got {show(value)}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: expected one of {', '.join(map(repr, allowed))}, got {show(value)}")
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        return _sequence(value, tp, key)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {show(value)}")
        args = get_args(tp)
        key_tp, val_tp = args if len(args) == 2 else (Any, Any)
        return {(str(k) if key_tp in (str, Any) else coerce(k, key_tp, f"{key} (key {k!r})")): coerce(v, val_tp, f"{key}.{k}")
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp in _SCALARS:
        return _SCALARS[tp](value, key)
    if origin is not None or not isinstance(tp, type):  # a field type this checker does not know: a bug
        raise TypeError(f"nlpkit.sdk.options cannot check {tp!r} (key {key}); field types are bool, int, float, "
                        "str, Any, Optional, Literal, list, tuple, dict, Annotated[..., Range] or a dataclass")
    if not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {show(value)}")
    return value


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ConfigError(f"{key}: expected true or false, got {show(value)}")


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {show(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ConfigError(f"{key}: expected an integer, got {show(value)}")


def _float(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {show(value)}")
    number = None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if number is not None and math.isfinite(number):
        return number
    raise ConfigError(f"{key}: expected a finite number, got {show(value)}")


def _str(value: Any, key: str) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{key}: expected a string, got {show(value)}")


#: the scalar field types and their checks (a command-line string converts: "3" -> 3, "yes" -> True)
_SCALARS = {bool: _bool, int: _int, float: _float, str: _str}


def _sequence(value: Any, tp: Any, key: str) -> list[Any]:
    """list[X], tuple[X, ...] and fixed tuples; a comma-separated string is a list of scalars (--set a=x,y)."""
    args = get_args(tp)
    if isinstance(value, str) and all(a in (str, int, float, Any) for a in args if a is not Ellipsis):
        value = [v for v in value.split(",") if v]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list, got {show(value)}")
    if get_origin(tp) is tuple and args and Ellipsis not in args:  # tuple[int, str]: one type per place
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} items, got {show(value)}")
        return [coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
    item_tp = args[0] if args else Any
    return [coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]


def unknown_key(cls: type, data: dict[str, Any], key: str = "") -> None:
    """Raise for the first key of ``data`` that ``cls`` has no field for, suggesting the closest field."""
    import difflib

    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    prefix = f"{key}." if key else ""
    for k in data:
        if k not in fields:
            close = difflib.get_close_matches(str(k), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key {prefix}{k}{hint}; known keys: {', '.join(fields)}")


def build(cls: type, data: Any, key: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a mapping; unknown keys, missing required keys and bad types
    raise ConfigError naming the dotted key."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{key or cls.__name__}: expected a mapping, got {show(data)}")
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{key}." if key else ""
    unknown_key(cls, data, key)
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in data:
            raise ConfigError(f"{prefix}{name}: missing; it is required ({_describe(hints[name])})")
    kwargs = {name: coerce(value, hints[name], prefix + name) for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{key or cls.__name__}: {exc}") from exc
    check = getattr(obj, "validate", None)
    if callable(check):
        check(key)
    return obj


def replace(obj: Any, changes: dict[str, Any], key: str = "") -> Any:
    """``dataclasses.replace`` with the checks of ``build``: unknown keys, types, ranges and ``validate``
    (e.g. ``num_beams`` given to one ``predict`` call)."""
    cls = type(obj)
    unknown_key(cls, changes, key)
    hints = get_type_hints(cls, include_extras=True)
    prefix = f"{key}." if key else ""
    new = dataclasses.replace(obj, **{k: coerce(v, hints[k], prefix + k) for k, v in changes.items()})
    check = getattr(new, "validate", None)
    if callable(check):
        check(key)
    return new


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def require(condition: bool, key: str, message: str) -> None:
    """Range checks inside ``validate`` methods."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


__all__ = ["Range", "build", "coerce", "replace", "show", "to_dict", "require", "unknown_key", "typing"]
