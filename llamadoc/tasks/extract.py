"""extract: JSON fields under a schema, decoding constrained by it and validated after.

An invoice that carries its own data (a Factur-X/ZUGFeRD/XRechnung XML attached to the
PDF, or such an XML given on its own) is read exactly, with no model, when the schema speaks the invoice field names;
model answers are checked against the page's text layer, the invoice arithmetic and
the embedded data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamadoc.errors import DocumentError, UsageError
from llamadoc.evidence import checks
from llamadoc.inputs.einvoice import EInvoice
from llamadoc.results import Check, DocumentResult
from llamadoc.tasks.base import FollowUp, PageReply, Plan
from llamadoc.tasks.describe import strip_fence
from llamadoc.tasks.schema import check_schema, load_schema, schema_error

if TYPE_CHECKING:
    from llamadoc.inputs.raster import Document

EMBEDDED_MODES = ("prefer", "compare", "ignore")
INVOICE_TOTALS = frozenset({"net_total", "tax_total", "gross_total"})


@dataclass(frozen=True)
class Embedded:
    """An e-invoice found in a document's attachments."""

    name: str
    invoice: EInvoice


@dataclass
class Extract:
    schema: dict[str, Any]
    schema_path: str = "<dict>"
    # An embedded e-invoice is read instead of the pages (prefer), checked against (compare), or not.
    embedded: str = "prefer"
    name: str = field(default="extract", init=False)

    def __post_init__(self) -> None:
        if self.embedded not in EMBEDDED_MODES:
            raise UsageError(f"--embedded {self.embedded!r} is not one of {', '.join(EMBEDDED_MODES)}")
        where = "the schema" if self.schema_path == "<dict>" else f"schema file {self.schema_path}"
        check_schema(self.schema, where)

    @classmethod
    def from_file(cls, path: str | Path, embedded: str = "prefer") -> Extract:
        """Extract under the JSON Schema in a .json or YAML file."""
        return cls(schema=load_schema(path), schema_path=str(path), embedded=embedded)

    def options(self) -> dict[str, Any]:
        canonical = json.dumps(self.schema, sort_keys=True, separators=(",", ":"))
        return {"schema": self.schema_path, "schema_sha256": hashlib.sha256(canonical.encode()).hexdigest(),
                "embedded": self.embedded}

    @property
    def invoice_shaped(self) -> bool:
        """The schema speaks examples/invoice.yaml's field names, so invoice checks apply."""
        return INVOICE_TOTALS <= set(self.schema.get("properties", {}))

    def plan(self, document: Document, pages: list[int]) -> Plan:
        """Look for an e-invoice: the document itself (an XML file), or in its attachments."""
        if self.embedded == "ignore":
            return Plan()
        try:
            found = document.e_invoice()
        except DocumentError as err:
            return Plan(notes=[f"the embedded e-invoice cannot be used ({err}); the pages were read instead"])
        if found is None:
            return Plan()
        name = found.name
        embedded = Embedded(name, found.invoice)
        plan = Plan(context=embedded)
        if self.embedded == "prefer":
            why_not = self._unfit(embedded.invoice)
            plan.answered = why_not is None
            if why_not:
                plan.notes.append(f"the embedded e-invoice {name} was not used: {why_not}")
        return plan

    def _unfit(self, invoice: EInvoice) -> str | None:
        """Why the e-invoice's record cannot stand for the model's answer, or None when it can."""
        if not self.invoice_shaped:
            return "the schema does not use the invoice field names"
        problem = schema_error(invoice.to_fields(), self.schema)
        return f"it does not fit the schema: {problem}" if problem else None

    def prompt(self, page_count: int, previous: PageReply | None = None) -> str:
        where = "this document page" if page_count > 1 else "this document"
        text = (
            f"Extract the fields described by the JSON Schema below from {where}. Use only "
            "values printed on it; copy identifiers, amounts and dates exactly as printed; "
            "use null for a field that is not there. Answer with one JSON object only.\n\n"
            f"JSON Schema:\n{json.dumps(self.schema, indent=1)}"
        )
        if previous is not None and previous.error:
            text += (
                "\n\nYour previous answer did not match the schema: "
                f"{previous.error}\nAnswer again with JSON that matches it."
            )
        return text

    def read(self, text: str) -> PageReply:
        body = strip_fence(text.strip(), "json")
        try:
            fields = json.loads(body)
        except (json.JSONDecodeError, RecursionError) as err:
            where = f" ({err.msg} at char {err.pos})" if isinstance(err, json.JSONDecodeError) else ""
            return _failed(f"the reply is not JSON{where}")
        if not isinstance(fields, dict):
            return _failed("the reply is JSON but not an object")
        problem = schema_error(fields, self.schema)
        return PageReply(fields=fields, error=problem, retry=problem is not None, checks=(_schema_check(problem),))

    def combine(self, doc: DocumentResult, replies: Mapping[int, PageReply], plan: Plan,
                follow_up: FollowUp) -> None:
        embedded: Embedded | None = plan.context
        records = [(i, r.fields) for i, r in sorted(replies.items()) if r.fields is not None]
        if records:
            doc.fields, doc.field_pages = merge_fields(records)
            doc.checks.append(_schema_check(schema_error(doc.fields, self.schema)))
        if plan.answered and embedded is not None:
            doc.fields, doc.embedded = embedded.invoice.to_fields(), embedded.name
        doc.checks.extend(self._checks(doc, embedded))

    def _checks(self, doc: DocumentResult, embedded: Embedded | None) -> list[Check]:
        """Model-free checks of the fields, whoever produced them."""
        if doc.fields is None:
            return []
        found: list[Check] = []
        if doc.embedded is None:  # values read by a model: are they on the page, and in the e-invoice?
            texts = {p.index: p.text_layer for p in doc.pages}
            found += checks.ground(doc.fields, texts, doc.field_pages, self.schema)
            if embedded is not None and self.embedded != "ignore" and self.invoice_shaped:
                found += checks.compare(doc.fields, embedded.invoice.to_fields())
        if self.invoice_shaped:
            found += checks.arithmetic(doc.fields)
        return found

    @staticmethod
    def main_text(doc: DocumentResult) -> str:
        return json.dumps(doc.fields, ensure_ascii=False, indent=2) if doc.fields is not None else ""

    @staticmethod
    def markdown(doc: DocumentResult) -> str:
        rows = [f"| {k} | {_cell(v)} | {doc.field_pages.get(k, '')} |" for k, v in (doc.fields or {}).items()]
        return "| field | value | page |\n|---|---|---|\n" + "\n".join(rows)


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text.replace("|", "\\|").replace("\n", " ")


def _failed(error: str) -> PageReply:
    return PageReply(error=error, retry=True, checks=(_schema_check(error),))


def _schema_check(error: str | None) -> Check:
    return Check(name="schema", status="fail" if error else "pass", detail=error or "")


def merge_fields(pages: Sequence[tuple[int, dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, int]]:
    """One record from page records: a field takes the first page that has it (totals are
    often on the last page, ids on the first); lists from every page are joined."""
    merged: dict[str, Any] = {}
    origin: dict[str, int] = {}
    for index, fields in pages:
        for key, value in fields.items():
            if _empty(value):
                merged.setdefault(key, value)
                continue
            if isinstance(value, list) and isinstance(merged.get(key), list) and key in origin:
                merged[key] = merged[key] + value
            elif key not in origin:
                merged[key] = value
                origin[key] = index
    return merged, origin


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}
