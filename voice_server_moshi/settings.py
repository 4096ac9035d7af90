"""Typed, validated settings: dataclasses parsed from a host's config section.

A settings class is a frozen dataclass. Field types may be ``bool``, ``int``, ``float``,
``str``, ``Literal[...]``, ``X | None`` and ``Mapping[str, Any]`` (a table, handed on as
given: another component's settings, parsed by it); ``field(metadata={"min": ..., "max": ...,
"help": "..."})`` adds bounds and documentation. :func:`parse_settings` reports every
problem at once, naming the key, what was expected and what was given.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections import abc
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from .errors import SettingsError

T = TypeVar("T")

_SECRET_HINTS = ("token", "key", "secret", "password")


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_describe(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if origin in (dict, abc.Mapping):
        return "table"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any) -> tuple[bool, Any]:
    """Return (ok, value) converting only where it is lossless (int -> float)."""
    origin = get_origin(tp)
    if origin is Literal:
        return (value in get_args(tp), value)
    if origin in (typing.Union, types.UnionType):
        for arg in get_args(tp):
            ok, out = _coerce(arg, value)
            if ok:
                return True, out
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if origin in (dict, abc.Mapping):
        ok = isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
        return ok, dict(value) if ok else value
    if origin in (tuple, list) and isinstance(value, list | tuple):
        (item_tp, *_) = get_args(tp) or (Any,)
        out = []
        for v in value:
            ok, cv = _coerce(item_tp, v) if item_tp is not Any else (True, v)
            if not ok:
                return False, value
            out.append(cv)
        return True, tuple(out) if origin is tuple else out
    return isinstance(value, tp), value


def is_secret(key: str) -> bool:
    return any(h in key.lower() for h in _SECRET_HINTS)


def parse_settings(cls: type[T], raw: Mapping[str, Any] | None, *, section: str) -> T:
    """Build ``cls`` from ``raw``, or raise :class:`SettingsError` listing every problem."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a settings dataclass")
    raw = dict(raw or {})
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key in sorted(set(raw) - set(fields)):
        problems.append(f"unknown key {key!r}; known keys: {', '.join(sorted(fields))}")
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{name}: required ({_describe(hints[name])})")
            continue
        value = raw[name]
        ok, value = _coerce(hints[name], value)
        if not ok:
            shown = "<redacted>" if is_secret(name) else repr(raw[name])
            problems.append(f"{name}: expected {_describe(hints[name])}, got {shown}")
            continue
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if lo is not None and value < lo:
                problems.append(f"{name}: must be >= {lo}, got {value}")
            if hi is not None and value > hi:
                problems.append(f"{name}: must be <= {hi}, got {value}")
        values[name] = value
    if problems:
        raise SettingsError(section, problems)
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:  # cross-field checks in __post_init__
        raise SettingsError(section, [str(exc)]) from exc


def describe_settings(cls: type[Any]) -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) rows for documentation and ``--help`` output."""
    hints = get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        rows.append((f.name, _describe(hints[f.name]), default, str(f.metadata.get("help", ""))))
    return rows


def redacted(settings: Any) -> dict[str, Any]:
    """The settings as a dict with secrets masked: safe to log."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        v = getattr(settings, f.name)
        if isinstance(v, Mapping):  # another component's table: its secrets too
            v = {k: "<redacted>" if (is_secret(str(k)) and x) else x for k, x in v.items()}
        out[f.name] = "<redacted>" if (is_secret(f.name) and v) else v
    return out
