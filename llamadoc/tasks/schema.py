"""JSON Schemas for extract: read from a file (JSON or YAML), checked once (when Extract takes one),
and used to validate replies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llamadoc.errors import UsageError


def check_schema(schema: Any, where: str) -> dict[str, Any]:
    """The schema itself, when it is a JSON Schema of an object; a UsageError saying why not."""
    import jsonschema  # imported here: only extract needs it

    if not isinstance(schema, dict):
        raise UsageError(f"{where} must hold a JSON Schema object")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as err:
        raise UsageError(f"{where} is not a valid JSON Schema: {err.message}") from None
    if schema.get("type", "object") != "object":
        raise UsageError(f"{where} must describe an object (type: object)")
    return schema


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
