"""JSON Schemas for extract: read from a file (JSON or YAML), checked once (when Extract takes one),
and used to validate replies."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from llamadoc.errors import UsageError

# What a schema may cost, checked before anything walks it whole (jsonschema), writes it out (the
# prompt) or turns it into a grammar: YAML aliases make a 400-byte file a structure of millions of
# nodes, and a grammar spells every repetition out (minItems: 10000000 is ten million rules).
MAX_NODES = 10_000  # values, counted as often as aliases repeat them
MAX_DEPTH = 32
MAX_TEXT = 256 << 10  # characters of keys and strings, as written out
MAX_REPEAT = 1_000  # minItems, maxItems, minLength, ... and {n,m} in patterns: each
MAX_REPEAT_TOTAL = 10_000  # ... and all of them together
_COUNTS = frozenset({"minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties",
                     "minContains", "maxContains"})
_QUANTIFIER = re.compile(r"\{(\d+)(?:,(\d*))?\}")


def check_bounds(schema: Any, where: str) -> None:
    """A UsageError when a schema is too big or too deep to use, or asks for more repetitions than
    a grammar can spell out. Walks at most MAX_NODES values, however the YAML aliased them."""
    nodes = text = repeats = 0
    stack: list[tuple[Any, int, str]] = [(schema, 1, "")]
    while stack:
        node, depth, key = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise UsageError(f"{where} is too large (over {MAX_NODES:,} values, aliases counted as written out)",
                             hint="simplify the schema")
        if depth > MAX_DEPTH:
            raise UsageError(f"{where} nests deeper than {MAX_DEPTH} levels", hint="flatten the schema")
        if isinstance(node, dict):
            for k, v in node.items():
                text += len(str(k))
                stack.append((v, depth + 1, str(k)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1, "") for v in node)
        elif isinstance(node, str):
            text += len(node)
            if key == "pattern":
                counts = [int(n) for pair in _QUANTIFIER.findall(node) for n in pair if n]
                repeats += sum(counts)
                if any(n > MAX_REPEAT for n in counts):
                    raise UsageError(f"{where}: the pattern {node[:40]!r} repeats more than {MAX_REPEAT:,} times",
                                     hint="a grammar spells every repetition out; loosen the pattern")
        elif key in _COUNTS and isinstance(node, int | float) and not isinstance(node, bool):
            if not math.isfinite(node) or node > MAX_REPEAT:
                raise UsageError(f"{where}: {key} {node:,.0f} is over the limit of {MAX_REPEAT:,}",
                                 hint="a grammar spells every repetition out; leave it out or lower it")
            repeats += int(node)
        if text > MAX_TEXT:
            raise UsageError(f"{where} is too large (over {MAX_TEXT >> 10} KiB of text, aliases written out)",
                             hint="shorten the descriptions")
        if repeats > MAX_REPEAT_TOTAL:
            raise UsageError(f"{where} asks for over {MAX_REPEAT_TOTAL:,} repetitions in all (minItems, maxLength, "
                             "...)", hint="a grammar spells every repetition out; lower them")


def check_schema(schema: Any, where: str) -> dict[str, Any]:
    """The schema itself, when it is a JSON Schema of an object; a UsageError saying why not."""
    import jsonschema  # imported here: only extract needs it

    if not isinstance(schema, dict):
        raise UsageError(f"{where} must hold a JSON Schema object")
    check_bounds(schema, where)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as err:
        raise UsageError(f"{where} is not a valid JSON Schema: {err.message}") from None
    if schema.get("type", "object") != "object":
        raise UsageError(f"{where} must describe an object (type: object)")
    _check_names(schema, where)
    return schema


def _check_names(schema: dict[str, Any], where: str) -> None:
    """Each value is known by its path (seller.vat_id, line_items[2].amount) in the results, the
    review page and exports: a property named "a.b" or "x[0]" would share a path with another."""
    stack: list[Any] = [schema]
    while stack:  # check_bounds has capped the nodes
        node = stack.pop()
        if isinstance(node, dict):
            properties = node.get("properties")
            if isinstance(properties, dict):
                odd = next((name for name in properties if re.search(r"[.\[\]]", str(name))), None)
                if odd is not None:
                    raise UsageError(f"{where}: the property {str(odd)[:60]!r} holds '.', '[' or ']', which "
                                     "name a value's place in a record", hint="rename it (a_b instead of a.b)")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def load_schema(path: str | Path) -> Any:
    """What a .json or YAML schema file holds, as data: Extract checks that it is a JSON Schema
    (``Extract.from_file(path)`` does both, naming the file in its messages)."""
    import yaml

    p = Path(path)
    if p.is_dir():
        raise UsageError(f"schema {path} is a folder, not a file", hint="pass a .json, .yaml or .yml file")
    if not p.is_file():
        raise UsageError(f"schema file {path} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"schema file {path} cannot be read ({getattr(err, 'strerror', None) or err})") from None
    try:
        schema = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, RecursionError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"schema file {path} does not parse: {first}") from None
    return schema


def schema_error(instance: Any, schema: dict[str, Any]) -> str | None:
    """The first validation error as one line, or None when the instance is valid."""
    import jsonschema

    validator_cls = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_cls(schema).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    err = errors[0]
    where = "/".join(str(p) for p in err.absolute_path) or "(root)"
    return f"{where}: {err.message}"
