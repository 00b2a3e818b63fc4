"""Rendering results: JSON, JSONL, Markdown, text."""

from __future__ import annotations

import json

from llamadoc.outputs import render
from llamadoc.results import DocumentResult, PageResult, Status


def sample() -> DocumentResult:
    return DocumentResult(
        source="a/report.pdf", task="describe", sha256="0" * 64, page_count=2,
        pages=[PageResult(index=1, answer="# One"), PageResult(index=2, status=Status.FAILED, errors=["x"])],
        status=Status.PARTIAL,
    )


def test_json_document_is_versioned_and_plain() -> None:
    body = json.loads(render.to_json(sample()))
    assert list(body)[:4] == ["schema_version", "source", "sha256", "task"]
    assert body["status"] == "partial" and body["pages"][1]["status"] == "failed"
    assert body["pages_read"] == [1, 2]
    assert render.to_jsonl(sample()).count("\n") == 1


def test_describe_markdown_separates_pages_and_marks_gaps() -> None:
    text = render.to_text(sample())
    assert "<!-- page 1 -->\n\n# One" in text and "---" in text
    assert "*Page 2 could not be read.*" in text
