"""Readable pages for documents that have none of their own: an e-invoice XML, the body of
an e-mail. They become A4 PDF pages with a text layer, so the model reads them as it
reads any page, and the checks ground its answers in that text.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from html import escape

from llamadoc.inputs.einvoice import EInvoice, iso_date

_STYLE = ("body { font-family: sans-serif; font-size: 10pt; } h1 { font-size: 15pt; } h2 { font-size: 11pt; }"
          " td, th { padding: 1pt 5pt; text-align: left; vertical-align: top; }"
          " pre { font-size: 9pt; white-space: pre-wrap; }")  # a mail's long lines wrap, never run off the page
_MARGIN = 50  # points: about 18 mm


def render_html(body: str) -> bytes:
    """HTML (a fragment, no external resources) -> the bytes of a PDF with as many A4 pages as
    it takes; the same HTML always gives the same bytes (the result store keys on them)."""
    import pymupdf  # imported here: only these documents need it

    story = pymupdf.Story(html=f"<html><head><style>{_STYLE}</style></head><body>{body}</body></html>")
    out = io.BytesIO()
    writer = pymupdf.DocumentWriter(out)
    page = pymupdf.paper_rect("a4")
    more = True
    while more:
        device = writer.begin_page(page)
        more, _ = story.place(page + (_MARGIN, _MARGIN, -_MARGIN, -_MARGIN))
        story.draw(device)
        writer.end_page()
    writer.close()
    return out.getvalue()


def invoice_html(invoice: EInvoice, name: str) -> str:
    """The e-invoice as a printed invoice would show it: header, parties, lines and totals,
    each value exactly as its XML writes it (dates made readable)."""
    title = "Credit note" if invoice.xml_root == "CreditNote" or invoice.type_code == "381" else "Invoice"
    header = _rows([
        ("Invoice number", invoice.invoice_number), ("Type code", invoice.type_code),
        ("Issue date", _date(invoice.issue_date)), ("Due date", _date(invoice.due_date)),
        ("Currency", invoice.currency), ("Profile", invoice.profile),
    ])
    seller = _rows([("Name", invoice.seller_name), ("Address", invoice.seller_address),
                    ("VAT ID", invoice.seller_vat_id), ("Tax number", invoice.seller_tax_number)])
    buyer = _rows([("Name", invoice.buyer_name), ("Address", invoice.buyer_address),
                   ("VAT ID", invoice.buyer_vat_id)])
    lines = "".join(
        "<tr>" + "".join(f"<td>{escape(v or '')}</td>" for v in (
            line.line_id, line.description, " ".join(filter(None, (line.quantity, line.unit_code))),
            line.unit_price + (f" per {line.price_basis}" if line.price_basis else "") if line.unit_price else None,
            line.amount)) + "</tr>"
        for line in invoice.lines
    )
    totals = _rows([("Line total", invoice.line_total), ("Tax basis", invoice.tax_basis_total),
                    ("Tax", invoice.tax_total), ("Grand total", invoice.grand_total),
                    ("Due payable", invoice.due_payable)])
    return (
        f"<h1>{title} {escape(invoice.invoice_number or '')}</h1>"
        f"<p>Read from the e-invoice XML {escape(name)} ({escape(invoice.xml_root)}).</p>{header}"
        f"<h2>Seller</h2>{seller}<h2>Buyer</h2>{buyer}"
        "<h2>Lines</h2><table><tr><th>#</th><th>Description</th><th>Quantity</th><th>Unit price</th>"
        f"<th>Amount</th></tr>{lines}</table><h2>Totals</h2>{totals}"
    )


def mail_html(headers: Sequence[tuple[str, str]], text: str) -> str:
    """An e-mail's headers and its text, as a mail program shows them."""
    return f"{_rows(headers)}<hr/><pre>{escape(text)}</pre>"


def _rows(pairs: Iterable[tuple[str, str | None]]) -> str:
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in pairs if v)
    return f"<table>{cells}</table>" if cells else ""


def _date(value: str | None) -> str | None:
    return iso_date(value) or value
