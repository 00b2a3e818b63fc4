"""Tasks: prompts, reading replies, schemas, merging page records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamadoc.errors import UsageError
from llamadoc.tasks import NOT_FOUND, Ask, Describe, Extract, load_schema, merge_fields, schema_error

EXAMPLE_SCHEMA = Path(__file__).resolve().parents[1] / "examples" / "invoice.yaml"


def test_ask_reads_not_found() -> None:
    task = Ask("What is the total?")
    assert task.read("99.50 EUR").found
    assert not task.read(NOT_FOUND).found
    assert not task.read(f"{NOT_FOUND}.").found
    assert NOT_FOUND in task.prompt(3) and NOT_FOUND not in task.prompt(1)
    with pytest.raises(UsageError):
        Ask("  ")


def test_relevance_needs_a_shared_word_on_an_all_text_page() -> None:
    task = Ask("What is the invoice total?")
    filler = "lorem ipsum dolor sit amet " * 10
    assert task.relevant(filler + " Invoice number 7", graphics=False)
    assert not task.relevant(filler, graphics=False)
    assert task.relevant(filler, graphics=True)  # a picture may hold the answer
    assert task.relevant(None, graphics=False)  # a scan: nothing to judge by
    assert task.relevant("short", graphics=False)


def test_describe_strips_code_fences() -> None:
    assert Describe().read("```markdown\n# Title\n```").answer == "# Title"


def test_invoice_schema_loads_and_validates() -> None:
    schema = load_schema(str(EXAMPLE_SCHEMA))
    record = {k: None for k in schema["required"]} | {"line_items": []}
    assert schema_error(record, schema) is None
    assert "gross_total" in (schema_error(record | {"gross_total": "lots"}, schema) or "")


def test_bad_schemas_are_usage_errors(tmp_path: Path) -> None:
    cases = {
        "missing.yaml": None,
        "broken.yaml": "a: [unclosed",
        "list.json": "[1, 2]",
        "invalid.json": json.dumps({"type": "object", "properties": {"a": {"type": "nonsense"}}}),
        "string.json": json.dumps({"type": "string"}),
    }
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(UsageError, match=f"schema file {path}"):
            Extract.from_file(path)


def test_extract_reads_json_and_reports_schema_errors() -> None:
    task = Extract(schema={"type": "object", "properties": {"n": {"type": "number"}}, "required": ["n"]})
    assert task.read('{"n": 3}').fields == {"n": 3} and task.read('{"n": 3}').error is None
    assert "not JSON" in (task.read("{oops").error or "")
    assert "required" in (task.read("{}").error or "")
    bad = task.read("{}")
    assert bad.retry and [(c.name, c.status) for c in bad.checks] == [("schema", "fail")]
    again = task.prompt(1, previous=bad)
    assert "previous answer did not match the schema: (root): 'n' is a required property" in again
    assert "previous answer" not in task.prompt(1)


def test_merge_takes_first_page_with_a_value_and_joins_lists() -> None:
    merged, pages = merge_fields([
        (1, {"invoice_number": "A-1", "gross_total": None, "line_items": [{"d": "x"}]}),
        (2, {"invoice_number": "A-9", "gross_total": 12.5, "line_items": [{"d": "y"}]}),
    ])
    assert merged == {"invoice_number": "A-1", "gross_total": 12.5, "line_items": [{"d": "x"}, {"d": "y"}]}
    assert pages == {"invoice_number": 1, "gross_total": 2, "line_items": 1}
