"""Results -> JSON, JSONL, Markdown and plain text: pure functions; what each task shows is its own."""

from __future__ import annotations

import json
from pathlib import Path

from llamadoc.codec import to_dict
from llamadoc.results import DocumentResult, Status
from llamadoc.tasks import main_text, markdown

FORMATS = ("text", "json", "jsonl", "md")
EXTENSIONS = {"text": ".txt", "json": ".json", "jsonl": ".jsonl", "md": ".md"}


def to_json(doc: DocumentResult) -> str:
    return json.dumps(to_dict(doc), ensure_ascii=False, indent=2) + "\n"


def to_jsonl(doc: DocumentResult) -> str:
    return json.dumps(to_dict(doc), ensure_ascii=False, separators=(",", ":")) + "\n"


def to_text(doc: DocumentResult) -> str:
    if doc.status in (Status.FAILED, Status.SKIPPED) and not doc.pages:
        return ""
    text = main_text(doc)
    return text + "\n" if text else ""


def to_markdown(doc: DocumentResult) -> str:
    if not to_text(doc):  # not read, withheld, no record: the failure is in the summary and the JSON formats
        return ""
    return f"# {Path(doc.source).name}\n\n{markdown(doc)}\n"


def render(doc: DocumentResult, fmt: str) -> str:
    return {"text": to_text, "json": to_json, "jsonl": to_jsonl, "md": to_markdown}[fmt](doc)


def for_stdout(doc: DocumentResult, fmt: str, several: bool, per_page: bool = False) -> str:
    """What a document prints on stdout: nothing for one that could not be read (in text and
    Markdown), each page's own answer first with ``per_page``, a header per document in text."""
    text = render(doc, fmt)
    if fmt in ("json", "jsonl") or not text:
        return text
    if per_page:
        text = "".join(f"[page {p.index}] {p.answer}\n" for p in doc.pages if p.answer) + text
    if several and fmt == "text":
        text = f"==> {doc.source} <==\n{text}\n"
    return text
