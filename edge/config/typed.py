"""Validate parsed YAML into the frozen dataclasses of `edge.config.schema` with pydantic v2.

One mechanism covers every field: pydantic checks the types (strict: no "4" -> 4, no `yes` as
a count, no 4.0 as an integer), the `Interval` / `Len` bounds the schema annotates, that every
float is finite (`allow_inf_nan=False`), and that no key is unknown (`extra="forbid"`). The
first failure becomes one `ConfigError` line naming the field: `<file>: <field path>: <expected>`.

Why pydantic here (and msgspec on the board): configs are loaded where the training stack is
installed, and pydantic is already used there (metrics rows, inventories); it validates the
stdlib dataclasses as they are, so the schema stays plain dataclasses with defaults.

The parsed document is first checked to be plain data (text keys; numbers, text, lists and
mappings only) within a budget of values, then handed to pydantic as JSON text: strict mode
accepts a mapping for a dataclass and a list for a tuple only from JSON input, and the budget
keeps a YAML alias bomb ("billion laughs") from expanding.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from typing import Annotated, Any, Literal, TypeVar, Union

from annotated_types import Interval, Len
from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from edge.errors import ConfigError

T = TypeVar("T")

# Strict types, finite floats, no unknown keys: set on the root dataclass, pydantic applies it
# to the nested stdlib dataclasses (they carry no config of their own).
CONFIG = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")
# A fleet config holds a few hundred values (a 1000-agent list about 5000); aliases count as
# often as they are referenced, so an alias bomb stops here instead of expanding.
MAX_VALUES = 100_000
MAX_DEPTH = 32
# Integers beyond this many digits are refused before conversion (Python refuses to print
# integers over 4300 digits; no field is bounded anywhere near 10^100).
MAX_INT_DIGITS = 100

_KINDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string", "list_type": "a list", "tuple_type": "a list",
    "dict_type": "a mapping", "dataclass_type": "a mapping", "model_type": "a mapping",
}
_BOUNDS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def build(cls: type[T], raw: Any, source: str, path: str = "") -> T:
    """Validate a parsed document (or a part of it) into the dataclass `cls`.

    Parameters
    ----------
    cls : type
        A stdlib dataclass of `edge.config.schema` (usually `FleetConfig`).
    raw : Any
        What `yaml.safe_load` returned for it.
    source : str
        The file name used in errors.
    path : str
        Where `raw` sits in the file (a prefix for error paths).

    Returns
    -------
    cls
        The validated, frozen instance.

    Raises
    ------
    ConfigError
        The first value that is not plain data or that pydantic rejects, with its field path
        and what was expected.
    """
    text = _to_json(raw, source, path)
    try:
        result: T = _adapter(cls).validate_json(text, strict=True)  # type: ignore[arg-type]
    except ValidationError as exc:
        field, expected = describe(exc.errors(include_url=False), cls)
        raise ConfigError(source, _join(path, field) or "<top level>", expected) from None
    return result


@functools.cache
def _adapter(cls: type[Any]) -> TypeAdapter[Any]:
    if not hasattr(cls, "__pydantic_config__"):
        setattr(cls, "__pydantic_config__", CONFIG)  # noqa: B010 (mypy: not a declared attribute)
    return TypeAdapter(cls)


def _to_json(raw: Any, source: str, path: str) -> str:
    """Check that `raw` is plain, bounded data, then dump it as JSON (NaN and inf as tokens)."""
    stack: list[tuple[Any, str, int]] = [(raw, path, 0)]
    seen = 0
    while stack:
        value, where, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES or depth > MAX_DEPTH:
            raise ConfigError(source, path or "<top level>",
                              f"expected a config of at most {MAX_VALUES} values nested at most "
                              f"{MAX_DEPTH} deep (YAML aliases count each time they are used)")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ConfigError(source, _join(where, _show_key(key)),
                                      f"expected a text key, got {_kind(key)}")
                stack.append((item, _join(where, _show_key(key)), depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= 10**MAX_INT_DIGITS:
                raise ConfigError(source, where or "<top level>",
                                  f"expected a number of at most {MAX_INT_DIGITS} digits")
        elif not (value is None or isinstance(value, (str, bool, float))):
            raise ConfigError(source, where or "<top level>",
                              f"expected a number, text, a list or a mapping, got {_kind(value)}")
    return json.dumps(raw, allow_nan=True)


def describe(errors: list[ErrorDetails], cls: Any) -> tuple[str, str]:
    """Describe pydantic's first error as (readable field path, what was expected).

    The error's location is followed through the schema's type hints, so dictionary keys and
    list indices read as in the file (``families.accel.latent``, ``model.split[1]``); a union
    (several arms, e.g. an integer or a fraction) reports what each arm expected.
    """
    first = errors[0]
    loc = first["loc"]
    field, hint, i = "", cls, 0
    meta: list[Any] = []
    while i < len(loc):
        hint, meta = _unwrap(hint, meta)
        if _is_union(hint):
            prefix = loc[:i]
            arms = [e for e in errors if e["loc"][:i] == prefix]
            # pydantic tags each arm's errors (loc[i]) in the order of the union's arms. When
            # the value got inside exactly one arm (a list into the tuple arm), report from
            # there: ``model.split[1]: expected a number > 0``.
            tags = list(dict.fromkeys(e["loc"][i] for e in arms if len(e["loc"]) > i))
            choices = [a for a in typing.get_args(hint) if a is not type(None)]
            deeper = {e["loc"][i] for e in arms if len(e["loc"]) > i + 1}
            if len(deeper) == 1 and len(tags) == len(choices):
                tag = deeper.pop()
                errors = [e for e in arms if len(e["loc"]) > i + 1 and e["loc"][i] == tag]
                errors = [{**e, "loc": e["loc"][:i] + e["loc"][i + 1:]} for e in errors]
                first = errors[0]
                loc = first["loc"]
                hint, meta = choices[tags.index(tag)], []
                continue
            expected = " or ".join(dict.fromkeys(_expected(e, None, [])[0] for e in arms))
            return field, f"{expected}, got {_value(first.get('input'))}"
        part = loc[i]
        if isinstance(part, int):
            field = f"{field}[{part}]"
            args = typing.get_args(hint)
            hint, meta = (args[0] if args else Any), []
        else:
            field = _join(field, _show_key(part))
            if dataclasses.is_dataclass(hint) or typing.is_typeddict(hint):
                fields = typing.get_type_hints(hint, include_extras=True)
                if part not in fields:
                    names = ([f.name for f in dataclasses.fields(hint) if f.init]
                             if dataclasses.is_dataclass(hint) else list(fields))
                    return field, f"unknown key; expected one of {', '.join(names)}"
                hint, meta = fields[part], []
            elif typing.get_origin(hint) is dict:
                hint, meta = typing.get_args(hint)[1], []
            else:
                hint, meta = Any, []
        i += 1
    hint, meta = _unwrap(hint, meta)
    if first["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        return field, "unknown key"
    expected, with_value = _expected(first, hint, meta)
    return field, f"{expected}, got {_value(first.get('input'))}" if with_value else expected


def _expected(error: ErrorDetails, hint: Any, meta: list[Any]) -> tuple[str, bool]:
    """Say what one error expected, and whether to show the value it got."""
    kind = error["type"]
    ctx = error.get("ctx", {})
    if kind == "missing":
        return "required key is missing", False
    if kind == "literal_error":
        choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else ()
        shown = ", ".join(str(c) for c in choices) or str(ctx.get("expected", ""))
        return f"expected one of {shown}", True
    if kind in _BOUNDS:
        return f"expected {_range(hint, meta, ctx)}", True
    if kind in ("too_short", "too_long"):
        lengths = [m for m in meta if isinstance(m, Len)]
        if lengths:
            low, high = lengths[0].min_length, lengths[0].max_length
            got = ctx.get("actual_length")
            return f"expected a list of {low} to {high} items, got {got}", False
        return "expected a list of another length", True
    if kind in _KINDS:
        return f"expected {_KINDS[kind]}", True
    text = error["msg"].removeprefix("Input should be ")
    return "expected " + text[:1].lower() + text[1:], True


def _range(hint: Any, meta: list[Any], ctx: dict[str, Any]) -> str:
    """Describe the whole interval of a field: 'an integer from 1 to 256', 'a number > 0'."""
    bounds: dict[str, Any] = {}
    for m in meta:
        if isinstance(m, Interval):
            bounds |= {k: v for k, v in (("gt", m.gt), ("ge", m.ge), ("lt", m.lt), ("le", m.le))
                       if v is not None}
    bounds = bounds or {k: v for k, v in ctx.items() if k in ("gt", "ge", "lt", "le")}
    what = "an integer" if hint is int else "a number"
    if "ge" in bounds and "le" in bounds:
        return f"{what} from {_number(bounds['ge'])} to {_number(bounds['le'])}"
    parts = [f"{op} {_number(bounds[k])}" for k, op in (("gt", ">"), ("ge", ">="), ("lt", "<"),
                                                       ("le", "<=")) if k in bounds]
    return f"{what} {' and '.join(parts)}"


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _unwrap(hint: Any, meta: list[Any]) -> tuple[Any, list[Any]]:
    """Strip `Annotated` (keeping its metadata) and the None arm of an optional type."""
    while True:
        origin = typing.get_origin(hint)
        if origin is Annotated:
            args = typing.get_args(hint)
            hint, meta = args[0], [*meta, *args[1:]]
        elif origin in (Union, types.UnionType):
            arms = [a for a in typing.get_args(hint) if a is not type(None)]
            if len(arms) != 1:
                return hint, meta
            hint = arms[0]
        else:
            return hint, meta


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def _value(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return _oneline(repr(value))[:60]


def _kind(value: Any) -> str:
    if isinstance(value, (int, float, str, type(None), dict, list)):
        return _value(value)
    return f"a {type(value).__name__}"


def _show_key(key: Any) -> str:
    text = str(key)
    return text if text.replace("_", "").replace("-", "").replace("+", "").isalnum() \
        else _oneline(repr(text))


def _oneline(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
