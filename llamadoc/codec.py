"""The result document as JSON data, both ways: to_dict for output files and the store,
from_dict for reading the store back.

from_dict accepts only what this version writes: every field present with its type,
nothing more. An entry written by another version, cut short, or edited by hand is
refused (ForeignResult), and the store treats that as a miss, never as a crash.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from enum import Enum
from functools import cache
from typing import Any, Union

from llamadoc.results import TRANSIENT, DocumentResult

DERIVED = frozenset({"pages_read"})  # written for readers, recomputed on reading


def _kept(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields a result document holds: all but the stages' hand-overs (TRANSIENT)."""
    return [f for f in dataclasses.fields(cls) if not f.metadata.get(TRANSIENT)]


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in _kept(type(value))}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class ForeignResult(Exception):
    """A result document this version does not read: another version's, cut short, or edited.
    Its own class, not ValueError: a bug that raises ValueError must not pass for a cache miss."""


def to_dict(doc: DocumentResult) -> dict[str, Any]:
    """The versioned result document; the key order is the one users read."""
    body = _plain(doc)
    body["pages_read"] = doc.pages_read
    order = ["schema_version", "source", "sha256", "task", "status", "errors", "warnings", "page_count", "pages_read"]
    return {k: body[k] for k in order} | {k: v for k, v in body.items() if k not in order}


def from_dict(body: Any) -> DocumentResult:
    """The inverse of to_dict; a ForeignResult names the first thing that does not fit."""
    try:
        doc = _decode(DocumentResult, body, "result")
    except RecursionError:
        raise ForeignResult("result: nested too deeply") from None
    assert isinstance(doc, DocumentResult)
    return doc


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for option in args:
            try:
                return _decode(option, value, where)
            except ForeignResult:
                continue
        raise ForeignResult(f"{where}: {value!r:.40} is not {tp}")
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool or tp is str:
        if isinstance(value, tp):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:  # not one of the enum's values: refused below
            pass
    elif origin is list:
        if isinstance(value, list):
            return [_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return {k: _decode(args[1], v, f"{where}.{k}") for k, v in value.items()}
    elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _record(tp, value, where)
    raise ForeignResult(f"{where}: {value!r:.40} is not {getattr(tp, '__name__', tp)}")


def _record(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise ForeignResult(f"{where}: not an object")
    names = {f.name for f in _kept(cls) if f.init}
    given = set(value) - DERIVED
    if given != names:
        extra, missing = sorted(given - names), sorted(names - given)
        raise ForeignResult(f"{where}: fields differ from this version's (extra {extra}, missing {missing})")
    hints = _hints(cls)
    return cls(**{name: _decode(hints[name], value[name], f"{where}.{name}") for name in names})
