"""The model-free checks a finished extraction gets: text-layer grounding, invoice
arithmetic, and agreement with an embedded e-invoice; and whether an e-invoice can
stand in for the model altogether (--embedded prefer)."""

from __future__ import annotations

from typing import Any

from llamadoc import checks
from llamadoc.einvoice import EInvoice
from llamadoc.results import Check, DocumentResult
from llamadoc.tasks import Extract, schema_error

EMBEDDED_MODES = ("prefer", "compare", "ignore")
INVOICE_TOTALS = frozenset({"net_total", "tax_total", "gross_total"})


def invoice_shaped(schema: dict[str, Any]) -> bool:
    """The schema speaks examples/invoice.yaml's field names, so invoice checks apply."""
    return INVOICE_TOTALS <= set(schema.get("properties", {}))


def embedded_fields(task: Extract, invoice: EInvoice) -> tuple[dict[str, Any] | None, str]:
    """The e-invoice's record when it fits the user's schema, else None and why not."""
    if not invoice_shaped(task.schema):
        return None, "the schema does not use the invoice field names"
    fields = invoice.to_fields()
    problem = schema_error(fields, task.schema)
    return (None, f"it does not fit the schema: {problem}") if problem else (fields, "")


def extraction_checks(doc: DocumentResult, task: Extract, invoice: EInvoice | None, compare: bool) -> list[Check]:
    """Checks of doc.fields, whoever produced them."""
    if doc.fields is None:
        return []
    found: list[Check] = []
    if doc.embedded is None:  # values read by a model: are they on the page?
        texts = {p.index: p.text_layer for p in doc.pages}
        found += checks.ground(doc.fields, texts, doc.field_pages, task.schema)
        if invoice is not None and compare and invoice_shaped(task.schema):
            found += checks.compare(doc.fields, invoice.to_fields())
    if invoice_shaped(task.schema):
        found += checks.arithmetic(doc.fields)
    return found
