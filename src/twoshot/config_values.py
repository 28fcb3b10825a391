"""Reading config values: YAML scalars checked and coerced against a dataclass field's type."""

from __future__ import annotations

import types
import typing
from typing import Any

from twoshot.errors import UserError


def check_type(target: Any, name: str, value: Any, dotted: str, source: str = "override") -> Any:
    """``value`` coerced to the type of field ``name`` of dataclass instance ``target``;
    UserError naming ``source`` and the key ``dotted`` if it does not fit."""
    hints = typing.get_type_hints(type(target))
    expected = hints[name]
    coerced = _coerce(value, expected)
    if coerced is _INVALID:
        raise UserError(f"{source}: config key {dotted!r} expects {_type_name(expected)}, got {value!r}")
    return coerced


_INVALID = object()


def _coerce(value: Any, expected: Any) -> Any:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(expected):
            result = _coerce(value, option)
            if result is not _INVALID:
                return result
        return _INVALID
    if expected is type(None):
        return None if value is None else _INVALID
    if origin is list:
        if not isinstance(value, list):
            return _INVALID
        (item_type,) = typing.get_args(expected)
        items = [_coerce(v, item_type) for v in value]
        return _INVALID if any(i is _INVALID for i in items) else items
    if expected is bool:
        return value if isinstance(value, bool) else _INVALID
    if expected is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _INVALID
    if expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-4" (no dot) as a string; users mean a number.
            try:
                return float(value)
            except ValueError:
                return _INVALID
        return _INVALID
    if expected is str:
        return (
            value
            if isinstance(value, str)
            else (str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _INVALID)
        )
    return value


def _type_name(expected: Any) -> str:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(expected))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(expected)[0])}"
    if expected is type(None):
        return "null"
    return getattr(expected, "__name__", str(expected))
