"""Typed validation of parsed files with msgspec, failing with one line naming the file and field.

The schema is the dataclass itself: field types carry the bounds (`Annotated[int, Meta(ge=..,
le=..)]`), and `convert` checks a parsed JSON/YAML document against it with msgspec (strict: no
"4" -> 4 coercion, bools are not ints). msgspec reports where a value failed as a JSON path but
elides dictionary keys (``$.norm[...].std[0]``); `convert` puts the real keys back by walking the
document along the schema's type hints, so the error reads ``norm.accel.std[0]``.

Why msgspec: the validation library the board install can afford — one dependency-free 230 KB
wheel (aarch64 wheels on PyPI), ~0.7 MB installed and ~20 ms to import, against ~10 MB, four
packages and ~90 ms for pydantic v2 (measured on x86-64; boards are slower).

Board side: standard library and msgspec only. `devices` and `edge` may import it.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Annotated, Any, Literal, TypeVar, Union

import msgspec

T = TypeVar("T")

# Bound on any stored real number: far outside physical sensor scales, and small enough that
# statistics stay finite and normal in float32 (max 3.4e38, smallest normal 1.2e-38, IEEE 754).
FLOAT_LIMIT = 1e30
FLOAT_TINY = 1e-30
FiniteFloat = Annotated[float, msgspec.Meta(ge=-FLOAT_LIMIT, le=FLOAT_LIMIT)]
PositiveFloat = Annotated[float, msgspec.Meta(ge=FLOAT_TINY, le=FLOAT_LIMIT)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0.0, le=FLOAT_LIMIT)]
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
# Sizes: 2**31 - 1 is the largest dimension every onnxruntime build accepts (int32 indexing).
Size = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]

# Every character str.splitlines() breaks at, escaped so a file name or a hostile dictionary key
# cannot turn one error into several lines.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
_PATH = re.compile(r"^(?P<what>.*?)(?: - at (?P<key>`key` in )?`\$(?P<path>[^`]*)`)?$", re.DOTALL)
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]*)`$")


class FieldError(ValueError):
    """A value in a file is not what was expected: ``<source>: <field>: <expected>``, one line.

    The common base of the board-side loaders' errors (manifest, npz), so a command line can
    turn them all into its user error in one place.
    """

    def __init__(self, source: str, field: str, expected: str) -> None:
        self.source = str(source).translate(_LINE_BREAKS)
        self.field = str(field).translate(_LINE_BREAKS)
        self.expected = " ".join(str(expected).split())  # library messages may span lines
        super().__init__(f"{self.source}: {self.field}: {self.expected}")


def convert(raw: Any, schema: Any, source: str, *, error: type[FieldError] = FieldError) -> Any:
    """Check `raw` (parsed JSON/YAML: dicts, lists, str, int, float, bool, None) against `schema`.

    Parameters
    ----------
    raw : Any
        The parsed document or a part of it.
    schema : type
        A dataclass, TypedDict, or a container type of them, with msgspec `Meta` bounds.
    source : str
        The file name used in errors.
    error : type of FieldError
        The error class to raise (a subclass names the kind of file).

    Returns
    -------
    Any
        An instance of `schema` (dataclasses built, nested containers checked).

    Raises
    ------
    FieldError (or `error`)
        The first value msgspec rejects, with its field path and what was expected.
    """
    try:
        return msgspec.convert(raw, schema, strict=True)
    except msgspec.ValidationError as exc:
        field, expected = explain(exc, raw, schema)
        raise error(source, field, expected) from None


def explain(exc: msgspec.ValidationError, raw: Any, schema: Any) -> tuple[str, str]:
    """Describe a msgspec error as (field path with real dictionary keys, what was expected)."""
    match = _PATH.match(str(exc))
    what = match["what"] if match else str(exc)
    path = (match["path"] if match else None) or ""
    value: Any = None
    try:
        field, value, leaf = _walk(raw, schema, path)
        if match and match["key"]:  # a dictionary key failed, not a value: name that key
            key_type, value_type = typing.get_args(leaf)
            key = _first_invalid(value, key_type, value_type)
            field, leaf = f"{field} key {key!r}" if field else f"key {key!r}", _unwrap(key_type)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RecursionError):
        field, value, leaf = path.lstrip(".").replace("[...]", "[?]"), None, None
    missing = _MISSING.match(what)
    if missing:
        return _join(field, missing["name"]), "missing; this field is required"
    expected = what.replace("`", "")
    expected = expected[:1].lower() + expected[1:]
    if leaf is not None and typing.get_origin(leaf) is Literal:
        allowed = ", ".join(repr(a) for a in typing.get_args(leaf))
        got = expected.removeprefix("invalid enum value ")
        expected = f"expected one of {allowed}, got {got}"
    elif ", got " not in expected and isinstance(value, (int, float, str)):
        expected = f"{expected}, got {value!r:.40}"  # bounds and patterns: show the value
    return field or "top level", expected


def _walk(raw: Any, schema: Any, path: str) -> tuple[str, Any, Any]:
    """Follow msgspec's `path` through `raw` and `schema`.

    Returns the readable path, the value and the schema type at its end.
    """
    field, value, hint = "", raw, _unwrap(schema)
    for attr, index in _SEGMENT.findall(path):
        if attr:
            field, value, hint = _join(field, attr), value[attr], _unwrap(_hints(hint)[attr])
        elif index == "...":
            key_type, value_type = typing.get_args(hint)
            key = _first_invalid(value, key_type, value_type)
            field, value, hint = _join(field, str(key)), value[key], _unwrap(value_type)
        else:
            field, value, hint = f"{field}[{index}]", value[int(index)], _unwrap(
                typing.get_args(hint)[0])
    return field, value, hint


def _first_invalid(mapping: dict[Any, Any], key_type: Any, value_type: Any) -> Any:
    # msgspec checks items in order and reports the first failure: find the same one.
    for key, item in mapping.items():
        for obj, kind in ((key, key_type), (item, value_type)):
            try:
                msgspec.convert(obj, kind, strict=True)
            except msgspec.ValidationError:
                return key
    raise KeyError("no invalid item")


def _hints(cls: Any) -> dict[str, Any]:
    if not (dataclasses.is_dataclass(cls) or typing.is_typeddict(cls)):
        raise TypeError(f"{cls!r} has no fields")
    return typing.get_type_hints(cls, include_extras=True)


def _unwrap(hint: Any) -> Any:
    """Strip `Annotated[...]`, and take the one non-None arm of an optional type."""
    while True:
        origin = typing.get_origin(hint)
        if origin is Annotated:
            hint = typing.get_args(hint)[0]
        elif origin in (Union, types.UnionType):
            arms = [a for a in typing.get_args(hint) if a is not type(None)]
            if len(arms) != 1:
                return hint
            hint = arms[0]
        else:
            return hint


def _join(field: str, name: str) -> str:
    return f"{field}.{name}" if field else name
