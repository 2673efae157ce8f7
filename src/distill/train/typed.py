"""Build frozen dataclasses from a plain mapping (a resolved Hydra config), naming any bad key.

Hydra already refuses overrides of keys that do not exist; this layer refuses keys appended
with ``+key=...`` that nothing would read, missing values, and values of the wrong type, each
with the dotted key in the message.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem; the message starts with the dotted key."""


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _coerce(value: Any, kind: Any, key: str) -> Any:
    origin = get_origin(kind)
    if kind is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(kind)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{key}: a value is required, got null")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{key}: {_describe(value)} matches none of {kind}"
        )
    if value is None:
        raise ConfigError(f"{key}: a value is required, got null")
    if origin is Literal:
        allowed = get_args(kind)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        return build(kind, value, key)
    if origin is tuple:
        args = get_args(kind)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict:
        key_type, value_type = get_args(kind)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {_describe(value)}")
        return {_coerce(k, key_type, key): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_describe(value)}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_describe(value)}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {_describe(value)}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"{key}: no conversion for type {kind}")


def build(cls: type[T], data: Any, key: str) -> T:
    """``cls(**data)`` with every field converted to its annotated type; unknown keys are errors."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{key or 'config'}: expected a mapping, got {_describe(data)}")
    prefix = f"{key}." if key else ""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, field in fields.items():
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{prefix}{name}: missing required key")
            continue
        kwargs[name] = _coerce(data[name], hints[name], f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{key or 'config'}: {err}") from err


def require_positive(key: str, value: float) -> None:
    if not value > 0 or not math.isfinite(value):
        raise ConfigError(f"{key}: must be a positive number, got {value}")


def require_non_negative(key: str, value: float) -> None:
    if not value >= 0 or not math.isfinite(value):
        raise ConfigError(f"{key}: must be >= 0, got {value}")
