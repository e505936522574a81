"""Build typed, frozen dataclasses from parsed YAML, rejecting unknown keys and wrong types."""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from edge.errors import ConfigError

T = TypeVar("T")


def build(cls: type[T], raw: Any, source: str, path: str = "") -> T:
    """Return `cls(**raw)` after checking every key and value against the field types."""
    if not isinstance(raw, dict):
        raise ConfigError(source, path or "<top level>", f"expected a mapping, got {_kind(raw)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        key_str = str(key)
        field_path = _join(path, key_str)
        if key_str not in fields:
            raise ConfigError(source, field_path, f"unknown key; expected one of {', '.join(fields)}")
        values[key_str] = _convert(hints[key_str], value, source, field_path)
    for name, field in fields.items():
        no_default = (field.default is dataclasses.MISSING
                      and field.default_factory is dataclasses.MISSING)
        if name not in values and no_default:
            raise ConfigError(source, _join(path, name), "required key is missing")
    return cls(**values)


def _convert(hint: Any, value: Any, source: str, path: str) -> Any:
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(option, value, source, path)
            except ConfigError as exc:
                errors.append(exc.expected)
        raise ConfigError(source, path, " or ".join(errors))
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            shown = ", ".join(str(c) for c in choices)
            raise ConfigError(source, path, f"expected one of {shown}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(source, path, f"expected a list, got {_kind(value)}")
        item_hint = get_args(hint)[0] if get_args(hint) else Any
        items = [_convert(item_hint, v, source, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(source, path, f"expected a mapping, got {_kind(value)}")
        key_hint, value_hint = get_args(hint)
        return {
            _convert(key_hint, k, source, path): _convert(value_hint, v, source, _join(path, str(k)))
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(hint):
        return build(hint, value, source, path)  # type: ignore[arg-type]
    return _scalar(hint, value, source, path)


def _scalar(hint: Any, value: Any, source: str, path: str) -> Any:
    # bool is an int in Python; a YAML `yes` must not pass as a count.
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(source, path, f"expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(source, path, f"expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(source, path, f"expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(source, path, f"expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {hint!r} at {path}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    names: dict[type, str] = {dict: "a mapping", list: "a list", str: "a string"}
    return names.get(type(value), repr(value))

