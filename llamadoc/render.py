"""Results -> JSON, JSONL, Markdown and plain text (pure functions), and atomic file writes."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from enum import Enum
from pathlib import Path
from typing import Any

from llamadoc.results import Check, DocumentResult, ModelInfo, PageResult, Status, Verdict

FORMATS = ("text", "json", "jsonl", "md")
EXTENSIONS = {"text": ".txt", "json": ".json", "jsonl": ".jsonl", "md": ".md"}


def to_dict(doc: DocumentResult) -> dict[str, Any]:
    """The versioned result document; the key order is the one users read."""

    def plain(value: Any) -> Any:
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    body = plain(dataclasses.asdict(doc))
    body["pages_read"] = doc.pages_read
    order = ["schema_version", "source", "sha256", "task", "status", "errors", "page_count", "pages_read"]
    return {k: body[k] for k in order} | {k: v for k, v in body.items() if k not in order}


def from_dict(body: dict[str, Any]) -> DocumentResult:
    """The inverse of to_dict, for results read back from the store."""

    def verdict(v: dict[str, Any] | None) -> Verdict | None:
        return Verdict(**v) if v is not None else None

    def page(p: dict[str, Any]) -> PageResult:
        return PageResult(**(p | {
            "status": Status(p["status"]),
            "guard_in": [Verdict(**v) for v in p["guard_in"]],
            "guard_out": verdict(p["guard_out"]),
            "checks": [Check(**c) for c in p["checks"]],
        }))

    fields = {f.name for f in dataclasses.fields(DocumentResult)}
    return DocumentResult(**({k: v for k, v in body.items() if k in fields} | {
        "status": Status(body["status"]),
        "pages": [page(p) for p in body["pages"]],
        "checks": [Check(**c) for c in body["checks"]],
        "guard_out": verdict(body["guard_out"]),
        "model": ModelInfo(**body["model"]) if body["model"] else None,
    }))


def to_json(doc: DocumentResult) -> str:
    return json.dumps(to_dict(doc), ensure_ascii=False, indent=2) + "\n"


def to_jsonl(doc: DocumentResult) -> str:
    return json.dumps(to_dict(doc), ensure_ascii=False, separators=(",", ":")) + "\n"


def answer_text(doc: DocumentResult) -> str:
    """The main output of a document as plain text: an answer, Markdown, or fields as JSON."""
    if doc.task == "extract":
        return json.dumps(doc.fields, ensure_ascii=False, indent=2) if doc.fields is not None else ""
    if doc.task == "describe":
        return describe_markdown(doc)
    return doc.answer or ""


def describe_markdown(doc: DocumentResult) -> str:
    parts = []
    for page in doc.pages:
        if page.status is Status.OK and page.answer is not None:
            body = page.answer
        else:
            body = f"*Page {page.index} {_unavailable(page.status)}.*"
        parts.append(f"<!-- page {page.index} -->\n\n{body.strip()}")
    return "\n\n---\n\n".join(parts)


def _unavailable(status: Status) -> str:
    return {
        Status.BLOCKED: "was withheld by the guard",
        Status.SKIPPED: "was skipped",
    }.get(status, "could not be read")


def to_text(doc: DocumentResult) -> str:
    if doc.status is Status.FAILED and not doc.pages:
        return ""
    text = answer_text(doc)
    if doc.task == "ask" and doc.cited_pages and doc.page_count > 1:
        text += f"\n(pages {', '.join(map(str, doc.cited_pages))})"
    return text + "\n" if text else ""


def to_markdown(doc: DocumentResult) -> str:
    title = f"# {Path(doc.source).name}\n\n"
    if doc.task == "describe":
        return title + describe_markdown(doc) + "\n"
    if doc.task == "extract":
        rows = [
            f"| {k} | {_cell(v)} | {doc.field_pages.get(k, '')} |" for k, v in (doc.fields or {}).items()
        ]
        table = "| field | value | page |\n|---|---|---|\n" + "\n".join(rows)
        return title + table + "\n"
    cites = f"\n\n*Pages: {', '.join(map(str, doc.cited_pages))}*" if doc.cited_pages else ""
    return title + (doc.answer or "") + cites + "\n"


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text.replace("|", "\\|").replace("\n", " ")


def render(doc: DocumentResult, fmt: str) -> str:
    return {"text": to_text, "json": to_json, "jsonl": to_jsonl, "md": to_markdown}[fmt](doc)


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename: a reader (or a crash)
    never sees half a file, and a finished file is only ever replaced whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
