"""Typed dataclass fields from loose input (JSON, YAML, command-line flags), in one place.

One rule for every source: a field gets a value of its declared type, or the load fails with a
``ValueError`` that names the field, what it expects and what it got. Numbers written as strings
are accepted when the whole string is a number of the field's kind (``"5"`` for an int, ``"2e-3"``
for a float; YAML reads ``2e-3`` without a dot as a string), so JSON, YAML and flags agree;
``2.5`` for an int field, ``"abc"`` for a number, ``"yes"`` for a bool are refused.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

__all__ = ["coerce", "coerce_fields"]


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _from_string(value: Any, parse: type, what: str, where: str) -> Any:
    """A number written as a string, parsed whole (``"5"``, ``"2e-3"``); other values unchanged."""
    if not isinstance(value, str):
        return value
    try:
        return parse(value.strip())
    except ValueError:
        raise ValueError(f"{where}: expected {what}, got {_describe(value)}") from None


def coerce(value: Any, kind: Any, where: str) -> Any:
    """``value`` as type ``kind`` (int, float, bool, str, ``X | None``, ``tuple[X, ...]``, dict)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        (inner,) = [k for k in options if k is not type(None)]
        return coerce(value, inner, where)
    if origin is tuple:
        inner = typing.get_args(kind)[0]
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {_describe(value)}")
        return tuple(coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true or false, got {_describe(value)}")
    if kind is int:
        value = _from_string(value, int, "an integer", where)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {_describe(value)}")
        return value
    if kind is float:
        value = _from_string(value, float, "a number", where)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: expected a number, got {_describe(value)}")
        if not math.isfinite(value):
            raise ValueError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {_describe(value)}")
        return value
    if kind is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {_describe(value)}")
        return value
    return value  # nested dataclasses are the caller's


def coerce_fields(cls: type, d: dict, prefix: str = "") -> dict:
    """``d`` with every key a field of dataclass ``cls`` and every value of its field's type;
    unknown keys are an error that lists the valid ones."""
    if not isinstance(d, dict):
        raise ValueError(f"{prefix or cls.__name__}: expected a mapping, got {_describe(d)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        what = f"{prefix.replace('_', ' ')} keys" if prefix else "config keys"
        raise ValueError(f"unknown {what} {unknown}; valid: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    return {k: coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in d.items()}
