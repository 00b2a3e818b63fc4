"""The same invoice twice in a batch, even when the files differ (re-scanned, saved again,
renamed): the same seller and invoice number; or, when there is no number, the same
seller, date and gross total.

The seller is known by its VAT ID or by its name (letters and digits, folded), so a copy
whose VAT ID was not read still meets the other by name. A batch's index holds the first
document of each key; the faces flag both documents and the summary names the pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Any

from llamadoc.evidence.checks import WIDE, _amount, _dates_in, _fold
from llamadoc.results import DocumentResult


def _alnum(value: Any) -> str:
    return "".join(c for c in _fold(str(value)) if c.isalnum()) if value not in (None, "") else ""


def invoice_keys(fields: dict[str, Any] | None) -> list[str]:
    """What makes two records the same invoice; empty when the record cannot say."""
    if not isinstance(fields, dict):
        return []
    given = fields.get("seller")
    seller: dict[str, Any] = given if isinstance(given, dict) else {}
    sellers = [f"vat={v}" for v in [_alnum(seller.get("vat_id"))] if v] + [
        f"name={n}" for n in [_alnum(seller.get("name"))] if n]
    number = _alnum(fields.get("invoice_number"))
    if number:
        return [f"{s}|no={number}" for s in sellers]
    dates = _dates_in(_fold(str(fields.get("issue_date") or "")))
    gross = _amount(fields.get("gross_total"))
    if len(dates) != 1 or gross is None:
        return []
    when = next(iter(dates)).isoformat()
    with localcontext(WIDE):
        total = gross.quantize(Decimal("0.01"))
    return [f"{s}|date={when}|gross={total}" for s in sellers]


@dataclass
class Duplicates:
    """A batch's index of invoices by key: each document meets the earlier ones it repeats."""

    first: dict[str, DocumentResult] = field(default_factory=dict)

    def add(self, doc: DocumentResult) -> list[DocumentResult]:
        """The earlier documents of the batch that are the same invoice as ``doc`` (each once)."""
        if doc.task != "extract":
            return []
        earlier: list[DocumentResult] = []
        for key in invoice_keys(doc.fields):
            seen = self.first.setdefault(key, doc)
            if seen is not doc and seen.source != doc.source and all(seen is not e for e in earlier):
                earlier.append(seen)
        return earlier


def mark(doc: DocumentResult, other: str) -> None:
    """Flag ``doc`` as the same invoice as the document ``other`` (new lists: a document read
    twice under two names shares the first one's)."""
    if other in doc.duplicates:
        return
    doc.duplicates = [*doc.duplicates, other]
    doc.review = [*doc.review, f"the same invoice as {other}"]
    doc.needs_review = True
