"""How sure the model was of each value, from its own token probabilities, and the
confidence that results once the page is heard too.

``model_p`` of a value is the probability the model gave the least likely of the tokens it
wrote the value with: its weakest step (the probabilities are the model's own, over the
whole vocabulary at temperature 1, before a grammar narrowed the choice). Unlike the
product of all of them, it does not fall with the value's length, so a long name the model
copied without doubt is not taken for a doubtful one.

``confidence`` moves ``model_p`` by the evidence: a value found where the page prints it
loses half its doubt, one the page does not show (where the page could have) loses half
its probability, and one from an e-invoice's XML is 1.0. These are rules, not a fit: no
real model's answers with known truth were at hand to calibrate them (see the README),
so read 0.8 as "the model was fairly sure and the page agrees", not as 80 % of such
values being right.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

from llamadoc.evidence.checks import _path
from llamadoc.results import Evidence

Key = str | int
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_WS = re.compile(r"[ \t\n\r]*")
NO_MODEL_P = 0.5  # the model's probability when the engine gave none: as unsure as a coin


def value_spans(text: str) -> dict[str, tuple[int, int]]:
    """The character span of every leaf value of the JSON object in ``text`` (the first one,
    after any fence), by path; empty when the text holds no JSON object."""
    start = text.find("{")
    if start < 0:
        return {}
    spans: dict[str, tuple[int, int]] = {}
    try:
        _value(text, start, (), spans)
    except (ValueError, IndexError, RecursionError):
        return {}
    return spans


def _value(text: str, i: int, keys: tuple[Key, ...], spans: dict[str, tuple[int, int]]) -> int:
    """Parse one JSON value at ``i``; returns the index after it."""
    i = _WS.match(text, i).end()  # type: ignore[union-attr]  # matches the empty string at least
    c = text[i]
    if c == "{":
        i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
        if text[i] == "}":
            return i + 1
        while True:
            key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
            i = _WS.match(text, i).end()  # type: ignore[union-attr]
            if text[i] != ":":
                raise ValueError("':' expected")
            i = _WS.match(text, _value(text, i + 1, (*keys, key), spans)).end()  # type: ignore[union-attr]
            if text[i] == "}":
                return i + 1
            if text[i] != ",":
                raise ValueError("',' expected")
            i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
    if c == "[":
        i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
        if text[i] == "]":
            return i + 1
        index = 0
        while True:
            i = _WS.match(text, _value(text, i, (*keys, index), spans)).end()  # type: ignore[union-attr]
            if text[i] == "]":
                return i + 1
            if text[i] != ",":
                raise ValueError("',' expected")
            i, index = i + 1, index + 1
    if c == '"':
        _, end = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
        spans[_path(keys)] = (i + 1, end - 1)  # the characters inside the quotes
        return int(end)
    for literal in ("true", "false", "null"):
        if text.startswith(literal, i):
            spans[_path(keys)] = (i, i + len(literal))
            return i + len(literal)
    number = _NUMBER.match(text, i)
    if number is None:
        raise ValueError(f"unexpected {c!r}")
    spans[_path(keys)] = number.span()
    return number.end()


def value_probabilities(logprobs: Sequence[tuple[bytes, float]]) -> dict[str, float]:
    """Each leaf value's ``model_p`` (the probability of its least likely token), by path, from a
    reply given as (token bytes, log probability) pairs; empty when the reply is not JSON."""
    if not logprobs:
        return {}
    raw = b"".join(piece for piece, _ in logprobs)
    text = raw.decode("utf-8", errors="replace")
    spans = value_spans(text)
    if not spans:
        return {}
    # Token k covers bytes [ends[k-1], ends[k]); a value's characters map to bytes through
    # the UTF-8 length of what precedes them.
    ends = []
    total = 0
    for piece, _ in logprobs:
        total += len(piece)
        ends.append(total)
    out = {}
    for path, (start, end) in spans.items():
        first, last = len(text[:start].encode()), len(text[:end].encode())
        if last == first:  # an empty string: the closing quote's token says how sure it was
            last = first + 1
        chosen = [lp for (piece, lp), stop in zip(logprobs, ends, strict=True)
                  if stop > first and stop - len(piece) < last]
        if chosen:
            out[path] = _short(math.exp(min(chosen)))
    return out


def combined(model_p: float | None, evidence: Evidence, page_has_words: bool) -> float:
    """The value's confidence: ``model_p`` moved by the evidence (see the module's docstring)."""
    if evidence.source == "xml":
        return 1.0
    p = NO_MODEL_P if model_p is None else model_p
    if evidence.source in ("text", "ocr"):
        return _short(1 - (1 - p) / 2)
    if page_has_words and evidence.why_not is not None and evidence.why_not.startswith("not found"):
        return _short(p / 2)
    return _short(p)


def _short(p: float) -> float:
    """Four significant digits: enough to compare with a threshold, and a tiny probability stays above 0."""
    return float(f"{p:.4g}")
