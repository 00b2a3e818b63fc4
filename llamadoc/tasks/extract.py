"""extract: JSON fields under a schema, decoding constrained by it and validated after.

An invoice that carries its own data (a Factur-X/ZUGFeRD/XRechnung XML attached to the
PDF, or such an XML given on its own) is read exactly, with no model, when the schema speaks the invoice field names;
model answers are checked against the page's text layer, the invoice arithmetic and
the embedded data. Every leaf value gets its evidence (where the page prints it), a
confidence, and the checks that need no model; a document whose values leave doubt
says it needs review, and why.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamadoc.errors import DocumentError, UsageError
from llamadoc.evidence import checks
from llamadoc.evidence.checks import _kind, _leaves, _path, _subschema
from llamadoc.evidence.confidence import combined, value_probabilities
from llamadoc.evidence.locate import Locator, Place
from llamadoc.evidence.validate import check_value
from llamadoc.inputs import einvoice
from llamadoc.inputs.einvoice import EInvoice
from llamadoc.results import Check, DocumentResult, Evidence, PageWords, Value
from llamadoc.tasks.base import FollowUp, PageReply, Plan
from llamadoc.tasks.describe import strip_fence
from llamadoc.tasks.schema import check_schema, load_schema, schema_error

if TYPE_CHECKING:
    from llamadoc.inputs.raster import Document

EMBEDDED_MODES = ("prefer", "compare", "ignore")
INVOICE_TOTALS = frozenset({"net_total", "tax_total", "gross_total"})
REVIEW_BELOW = 0.8  # a value less sure than this needs a person's look


@dataclass(frozen=True)
class Embedded:
    """An e-invoice found in a document's attachments, and the words of the PDF's pages,
    where its values may be printed."""

    name: str
    invoice: EInvoice
    printed: dict[int, PageWords] = field(default_factory=dict)


@dataclass
class Extract:
    schema: dict[str, Any]
    schema_path: str = "<dict>"
    # An embedded e-invoice is read instead of the pages (prefer), checked against (compare), or not.
    embedded: str = "prefer"
    review_below: float = REVIEW_BELOW  # values less confident than this put the document up for review
    name: str = field(default="extract", init=False)

    def __post_init__(self) -> None:
        if self.embedded not in EMBEDDED_MODES:
            raise UsageError(f"--embedded {self.embedded!r} is not one of {', '.join(EMBEDDED_MODES)}")
        if isinstance(self.review_below, bool) or not 0 <= self.review_below <= 1:
            raise UsageError(f"--review-below {self.review_below} is not between 0 and 1")
        where = "the schema" if self.schema_path == "<dict>" else f"schema file {self.schema_path}"
        check_schema(self.schema, where)

    @classmethod
    def from_file(cls, path: str | Path, embedded: str = "prefer", review_below: float = REVIEW_BELOW) -> Extract:
        """Extract under the JSON Schema in a .json or YAML file."""
        return cls(schema=load_schema(path), schema_path=str(path), embedded=embedded, review_below=review_below)

    def options(self) -> dict[str, Any]:
        canonical = json.dumps(self.schema, sort_keys=True, separators=(",", ":"))
        return {"schema": self.schema_path, "schema_sha256": hashlib.sha256(canonical.encode()).hexdigest(),
                "embedded": self.embedded, "review_below": self.review_below}

    @property
    def invoice_shaped(self) -> bool:
        """The schema speaks examples/invoice.yaml's field names, so invoice checks apply."""
        return INVOICE_TOTALS <= set(self.schema.get("properties", {}))

    def plan(self, document: Document, pages: list[int]) -> Plan:
        """Look for an e-invoice: the document itself (an XML file), or in its attachments."""
        if self.embedded == "ignore":
            return Plan(words=True)
        try:
            found = document.e_invoice()
        except DocumentError as err:
            return Plan(notes=[f"the embedded e-invoice cannot be used ({err}); the pages were read instead"],
                        words=True)
        if found is None:
            return Plan(words=True)
        name = found.name
        embedded = Embedded(name, found.invoice)
        plan = Plan(context=embedded, words=True)
        if self.embedded == "prefer":
            why_not = self._unfit(embedded.invoice)
            plan.answered = why_not is None
            if why_not:
                plan.notes.append(f"the embedded e-invoice {name} was not used: {why_not}")
        if plan.answered and document.kind == "pdf":  # not an XML of its own
            # No page goes to the model, so the XML's values are looked for in the text layer here.
            for index in pages:
                words = document.words(index)
                if words is not None:
                    embedded.printed[index] = words
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
        sources: dict[str, tuple[int, str]] = {}
        if records:
            doc.fields, doc.field_pages, sources = merge_records(records)
            doc.checks.append(_schema_check(schema_error(doc.fields, self.schema)))
        if plan.answered and embedded is not None:
            doc.fields, doc.embedded = embedded.invoice.to_fields(), embedded.name
            doc.values = self._xml_values(doc.fields, embedded)
        elif doc.fields is not None:
            doc.values = self._model_values(doc, sources)
        doc.checks.extend(self._checks(doc, embedded))
        doc.review = self.review(doc)
        doc.needs_review = bool(doc.review)

    def _checks(self, doc: DocumentResult, embedded: Embedded | None) -> list[Check]:
        """Model-free checks of the whole record, whoever produced it (each value's own are on it)."""
        if doc.fields is None:
            return []
        found: list[Check] = []
        if doc.embedded is None and embedded is not None and self.embedded != "ignore" and self.invoice_shaped:
            found += checks.compare(doc.fields, embedded.invoice.to_fields())
        if self.invoice_shaped:
            found += checks.arithmetic(doc.fields)
        return found

    def _model_values(self, doc: DocumentResult, sources: dict[str, tuple[int, str]]) -> list[Value]:
        """Each leaf the model gave: where the page prints it, how sure the model was, its checks."""
        assert doc.fields is not None
        words = {p.index: p.words for p in doc.pages if p.words is not None}
        locator = Locator(words)
        chances = {p.index: value_probabilities(p.logprobs) for p in doc.pages if p.logprobs}
        anchors: dict[tuple[str | int, ...], Place] = {}  # a list item's description: its numbers are near it
        values = []
        for keys, value in _ordered_leaves(doc.fields):
            path = _path(keys)
            page, page_path = sources.get(path, (doc.field_pages.get(str(keys[0])), path))
            schema = _subschema(self.schema, keys)
            kind = _kind(keys, value, schema)
            evidence, place = locator.find(value, kind, keys, origin=page, near=anchors.get(keys[:-1]))
            if place is not None and kind == "text" and keys[:-1] not in anchors and len(keys) > 1:
                anchors[keys[:-1]] = place
            model_p = chances.get(page, {}).get(page_path) if page is not None else None
            checks_ = [_grounding(path, value, evidence)] if kind is not None and value not in (None, "") else []
            checks_ += check_value(keys, value, evidence.text or None, schema)
            values.append(Value(path, value, evidence, combined(model_p, evidence, page in words), model_p, checks_))
        return _in_order(values, doc.fields)

    def _xml_values(self, fields: dict[str, Any], embedded: Embedded) -> list[Value]:
        """Each leaf of an e-invoice's record: its XML path, where the PDF prints it, its checks."""
        paths = einvoice.field_paths(embedded.invoice)
        locator = Locator(embedded.printed)
        values = []
        for keys, value in _leaves(fields):
            path = _path(keys)
            kind = _kind(keys, value, _subschema(self.schema, keys))
            printed, _ = locator.find(value, kind, keys) if embedded.printed else (Evidence("none"), None)
            evidence = Evidence("xml", xml_path=paths.get(path), why_not=None if value is not None else "no value")
            if printed.source != "none":
                evidence.page, evidence.boxes, evidence.page_size = printed.page, printed.boxes, printed.page_size
                evidence.text, evidence.occurrences = printed.text, printed.occurrences
            values.append(Value(path, value, evidence, 1.0, None,
                                check_value(keys, value, printed.text or None, _subschema(self.schema, keys))))
        return values

    def review(self, doc: DocumentResult) -> list[str]:
        """Why a person should look at this document; empty when nothing leaves doubt."""
        if doc.fields is None:
            return ["no fields were extracted"]
        reasons = []
        for v in doc.values:
            if v.evidence.source == "none" and v.evidence.why_not and v.evidence.why_not.startswith(
                    ("not found", "no page")):
                reasons.append(f"{v.path}: no evidence ({v.evidence.why_not})")  # its confidence is low too
            elif v.confidence is not None and v.confidence < self.review_below:
                reasons.append(f"{v.path}: confidence {v.confidence:g} is under {self.review_below:g}")
            reasons += [f"{v.path}: {c.name.split(':')[0]} check failed: {c.detail}" for c in v.checks
                        if c.status == "fail" and not c.name.startswith("grounding")]
        reasons += [f"{c.name} check failed: {c.detail}" for c in doc.checks if c.status == "fail"]
        return reasons

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


def _grounding(path: str, value: Any, evidence: Evidence) -> Check:
    """The value's evidence as a check: found on the page, not found where it could be, or
    nothing to look in (what --fail-on ungrounded counts)."""
    name, shown = f"grounding:{path}", f"{value!r}"
    if evidence.source in ("text", "ocr"):
        where = "its text layer" if evidence.source == "text" else "its OCR words"
        return Check(name, "pass", f"{shown} is on page {evidence.page} ({where})",
                     {"value": value, "page": evidence.page, "state": "grounded"})
    why = evidence.why_not or ""
    if why.startswith("not found"):
        return Check(name, "fail", f"{shown} is {why}", {"value": value, "state": "ungrounded"})
    return Check(name, "unknown", f"{shown} cannot be looked for: {why}", {"value": value, "state": "unknown"})


def _ordered_leaves(fields: dict[str, Any]) -> list[tuple[tuple[str | int, ...], Any]]:
    """The record's leaves, a list item's text first: its place anchors where its numbers are sought."""
    leaves = list(_leaves(fields))
    return sorted(leaves, key=lambda kv: (kv[0][:-1], not isinstance(kv[1], str))) if any(
        isinstance(k, int) for keys, _ in leaves for k in keys) else leaves


def _in_order(values: list[Value], fields: dict[str, Any]) -> list[Value]:
    order = {_path(keys): n for n, (keys, _) in enumerate(_leaves(fields))}
    return sorted(values, key=lambda v: order[v.path])


def merge_fields(pages: Sequence[tuple[int, dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, int]]:
    """One record from page records: a field takes the first page that has it (totals are
    often on the last page, ids on the first); lists from every page are joined (see
    merge_records for how a table that runs over pages is joined)."""
    merged, origin, _ = merge_records(pages)
    return merged, origin


# A row that only carries a table's running total from one page to the next, or repeats its header.
_CARRIED = re.compile(r"(?<!\w)(carried|brought|carry)\s+(forward|over)|(?<!\w)(c/f|b/f)(?!\w)|\u00fcbertrag|"
                      r"zwischensumme|sous[- ]total|\u00e0\s+reporter|subtotal|sub-total", re.IGNORECASE)


def merge_records(pages: Sequence[tuple[int, dict[str, Any]]]
                  ) -> tuple[dict[str, Any], dict[str, int], dict[str, tuple[int, str]]]:
    """merge_fields, with where each leaf came from: path in the merged record -> (page,
    path in that page's record), so each value keeps its page's token probabilities.

    A list of rows (line items) continues over pages as one list, in page order, without a
    row that only carries a subtotal over or repeats the table's header, and without the
    last row of a page repeated at the top of the next."""
    merged: dict[str, Any] = {}
    origin: dict[str, int] = {}
    sources: dict[str, tuple[int, str]] = {}
    for index, fields in pages:
        for key, value in fields.items():
            if _empty(value):
                merged.setdefault(key, value)
                continue
            if isinstance(value, list) and isinstance(merged.get(key), list) and key in origin:
                rows = merged[key]
                for i, row in enumerate(value):
                    if _carried(row, rows) or (i == 0 and rows and _same_row(row, rows[-1])):
                        continue
                    _trace(sources, index, f"{key}[{i}]", f"{key}[{len(rows)}]", row)
                    rows.append(row)
            elif key not in origin:
                if isinstance(value, list):
                    kept = [row for row in value if not _carried(row, [])]
                    for i, row in enumerate(value):
                        if row in kept:
                            _trace(sources, index, f"{key}[{i}]", f"{key}[{kept.index(row)}]", row)
                    value = list(kept)
                else:
                    _trace(sources, index, key, key, value)
                merged[key] = value
                origin[key] = index
    return merged, origin, sources


def _trace(sources: dict[str, tuple[int, str]], page: int, there: str, here: str, value: Any) -> None:
    """Record where every leaf under ``value`` came from."""
    for keys, _ in _leaves(value):
        tail = _path(keys)
        join = "" if not tail or tail.startswith("[") else "."
        sources[here + join + tail] = (page, there + join + tail)


def _carried(row: Any, rows: list[Any]) -> bool:
    """A row that is not a line: a subtotal carried from the page before (its text says so, or
    it has no quantity and its amount is the sum of the rows so far), or the table's header."""
    if not isinstance(row, dict):
        return False
    texts = [v for v in row.values() if isinstance(v, str)]
    numbers = [k for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    if any(_CARRIED.search(t) for t in texts) and len(numbers) <= 1:
        return True
    if not numbers and texts and all(_fold_key(t) in _HEADER_WORDS or _fold_key(t) == _fold_key(k)
                                     for k, t in row.items() if isinstance(t, str)):
        return True  # the column titles read as a row
    amount = row.get("amount")
    if len(rows) > 1 and isinstance(amount, int | float) and not row.get("quantity") and not row.get("unit_price"):
        before = [a for r in rows if isinstance(r, dict) and isinstance(a := r.get("amount"), int | float)]
        if len(before) == len(rows) and abs(sum(before) - amount) < 0.005 and len(
                [t for t in texts if t.strip()]) <= 1 and not any(len(t) > 40 for t in texts):
            return True
    return False


_HEADER_WORDS = frozenset({"description", "item", "items", "qty", "quantity", "unit price", "price", "amount",
                           "total", "bezeichnung", "menge", "einzelpreis", "betrag", "gesamt", "designation",
                           "quantite", "prix unitaire", "montant", "pos", "position", "artikel", "omschrijving",
                           "aantal", "prijs", "bedrag"})


def _fold_key(text: str) -> str:
    return " ".join(checks._fold(text).replace(".", " ").replace("_", " ").split())


def _same_row(a: Any, b: Any) -> bool:
    """One row read on both pages: the last row of a page repeated at the top of the next."""
    return isinstance(a, dict) and isinstance(b, dict) and bool(a) and {
        k: _fold_key(v) if isinstance(v, str) else v for k, v in a.items()} == {
        k: _fold_key(v) if isinstance(v, str) else v for k, v in b.items()}


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}
