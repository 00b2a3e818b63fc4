"""Printed invoices the tests make on the spot, with the truth of where each value stands.

A PrintedInvoice lays an invoice out as a PDF with a text layer (one or two pages, the
line items running over the page break with a carried-over subtotal and the table's
header repeated), and keeps, for every value of the fields, the text it is printed as
and its page. From that PDF come the image-only PDF (pages rasterised) and a phone-like
photo (rotated, blurred, JPEG) that exercise OCR.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Item:
    description: str
    quantity: float
    unit_price: float
    amount: float


def de(amount: float) -> str:
    """1234.5 -> '1.234,50', as a German invoice prints it."""
    whole, cents = f"{amount:,.2f}".split(".")
    return whole.replace(",", ".") + "," + cents


@dataclass(frozen=True)
class PrintedInvoice:
    number: str = "RE-2026-0815"
    issue_date: str = "2026-12-05"
    issue_printed: str = "05.12.2026"
    due_date: str = "2027-01-05"
    due_printed: str = "5 Jan 2027"
    seller_lines: tuple[str, ...] = ("Muster Handels- und", "Vertriebsgesellschaft mbH")  # a name over two lines
    seller_address: str = "Hauptstrasse 5, 10115 Berlin"
    seller_vat: str = "DE136695976"
    seller_vat_printed: str = "DE 136 695 976"
    buyer: str = "Beispiel AG"
    buyer_vat: str = "ATU13585627"
    iban: str = "DE89370400440532013000"
    iban_printed: str = "DE89 3704 0044 0532 0130 00"
    bic: str = "COBADEFFXXX"
    items: tuple[Item, ...] = field(default_factory=lambda: (
        Item("Beratung Stunden", 10, 120.0, 1200.0),
        Item("Reisekosten Pauschale", 1, 234.5, 234.5),
        Item("Schulung Workshop", 2, 450.0, 900.0),
        Item("Lizenz Software", 3, 99.9, 299.7),
    ))
    tax_rate: float = 0.19
    two_pages: bool = False  # the table runs over a page break after its second row

    @property
    def seller(self) -> str:
        return " ".join(self.seller_lines)

    @property
    def net(self) -> float:
        return round(sum(i.amount for i in self.items), 2)

    @property
    def tax(self) -> float:
        return round(self.net * self.tax_rate, 2)

    @property
    def gross(self) -> float:
        return round(self.net + self.tax, 2)

    @property
    def fields(self) -> dict[str, Any]:
        """The record a perfect reader gives, in the shape of examples/invoice.yaml."""
        return {
            "invoice_number": self.number, "issue_date": self.issue_date, "due_date": self.due_date,
            "seller": {"name": self.seller, "address": self.seller_address, "vat_id": self.seller_vat},
            "buyer": {"name": self.buyer, "address": None, "vat_id": self.buyer_vat},
            "currency": "EUR",
            "line_items": [{"description": i.description, "quantity": i.quantity, "unit_price": i.unit_price,
                            "amount": i.amount} for i in self.items],
            "net_total": self.net, "tax_total": self.tax, "gross_total": self.gross,
            "iban": self.iban, "bic": self.bic,
        }

    def page_fields(self) -> list[dict[str, Any]]:
        """What a perfect reader answers for each page: the header on the first, the totals on
        the last, the rows of each page (the carried-over subtotal read as a row, as a model may)."""
        if not self.two_pages:
            return [self.fields]
        first, second = dict(self.fields), dict(self.fields)
        rows = self.fields["line_items"]
        carried = {"description": "Übertrag", "quantity": None, "unit_price": None,
                   "amount": round(sum(r["amount"] for r in rows[:2]), 2)}
        first["line_items"] = [*rows[:2], carried]
        for key in ("net_total", "tax_total", "gross_total", "iban", "bic"):
            first[key] = None
        second["line_items"] = [carried, *rows[2:]]
        for key in ("invoice_number", "issue_date", "due_date", "seller", "buyer"):
            second[key] = None
        return [first, second]

    @property
    def printed(self) -> dict[str, tuple[int, str]]:
        """path -> (page, the text the value is printed as), for every value on the page."""
        last = 2 if self.two_pages else 1
        out = {
            "invoice_number": (1, self.number), "issue_date": (1, self.issue_printed),
            "due_date": (1, self.due_printed), "seller.name": (1, self.seller),
            "seller.vat_id": (1, self.seller_vat_printed), "buyer.name": (1, self.buyer),
            "buyer.vat_id": (1, self.buyer_vat), "net_total": (last, de(self.net)),
            "tax_total": (last, de(self.tax)), "gross_total": (last, de(self.gross)),
            "iban": (last, self.iban_printed), "bic": (last, self.bic),
        }
        for n, item in enumerate(self.items):
            page = 2 if self.two_pages and n >= 2 else 1
            out[f"line_items[{n}].description"] = (page, item.description)
            out[f"line_items[{n}].amount"] = (page, de(item.amount))
            out[f"line_items[{n}].unit_price"] = (page, de(item.unit_price))
        return out

    def pdf(self, path: Path) -> Path:
        import pymupdf

        doc = pymupdf.open()
        page = doc.new_page(width=595, height=842)
        y = 70.0

        def put(x: float, text: str, size: float = 10, where: Any = None) -> None:
            (where or page).insert_text((x, y), text, fontsize=size, fontname="helv")

        put(60, self.seller_lines[0], 12)
        put(400, "RECHNUNG", 16)
        y += 15
        put(60, self.seller_lines[1], 12)
        y += 15
        put(60, self.seller_address)
        y += 15
        put(60, f"USt-IdNr.: {self.seller_vat_printed}")
        y += 30
        put(60, f"Rechnungsnummer: {self.number}")
        put(330, f"Kunde: {self.buyer}")
        y += 15
        put(60, f"Rechnungsdatum: {self.issue_printed}")
        put(330, f"USt-IdNr. Kunde: {self.buyer_vat}")
        y += 15
        put(60, f"Fallig am: {self.due_printed}")
        y += 35

        def header() -> None:
            nonlocal y
            for x, title in ((60, "Pos"), (90, "Beschreibung"), (300, "Menge"), (370, "Einzelpreis"), (470, "Betrag")):
                put(x, title)
            y += 18

        header()
        running = 0.0
        for n, item in enumerate(self.items, 1):
            if self.two_pages and n == 3:
                put(90, "Übertrag")
                put(470, de(running))
                page = doc.new_page(width=595, height=842)
                y = 70.0
                put(60, f"Rechnung {self.number} Seite 2")
                y += 30
                header()
                put(90, "Übertrag")
                put(470, de(running))
                y += 18
            put(60, str(n))
            put(90, item.description)
            put(300, f"{item.quantity:g}")
            put(370, de(item.unit_price))
            put(470, de(item.amount))
            running += item.amount
            y += 18
        y += 20
        put(370, "Netto")
        put(470, de(self.net))
        y += 15
        put(370, f"USt {self.tax_rate * 100:g}%")
        put(470, de(self.tax))
        y += 15
        put(370, "Gesamt EUR")
        put(470, de(self.gross))
        y += 40
        put(60, f"IBAN: {self.iban_printed}")
        put(330, f"BIC: {self.bic}")
        doc.save(str(path))
        doc.close()
        return path

    def answers(self) -> list[str]:
        """The JSON a perfect reader answers, page by page."""
        return [json.dumps(f, ensure_ascii=False) for f in self.page_fields()]


def image_only_pdf(source: Path, path: Path, dpi: int = 200) -> Path:
    """The same pages as pictures only: a scan, with no text layer."""
    import pymupdf

    with pymupdf.open(source) as doc, pymupdf.open() as out:
        for page in doc:
            pix = page.get_pixmap(dpi=dpi)
            new = out.new_page(width=page.rect.width, height=page.rect.height)
            new.insert_image(new.rect, pixmap=pix)
        out.save(str(path))
    return path


def phone_photo(source: Path, path: Path, dpi: int = 220, angle: float = 1.5, blur: float = 0.6,
                quality: int = 80) -> Path:
    """The first page as a phone photo of it: slightly turned, a little blurred, JPEG."""
    import pymupdf
    from PIL import Image, ImageFilter

    with pymupdf.open(source) as doc:
        pix = doc[0].get_pixmap(dpi=dpi)
        image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
    image = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(235, 232, 225))
    image = image.filter(ImageFilter.GaussianBlur(blur))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    path.write_bytes(buf.getvalue())
    return path


def resaved(source: Path, path: Path) -> Path:
    """The same invoice saved again: other bytes (metadata, object layout), the same pages."""
    import pymupdf

    with pymupdf.open(source) as doc:
        doc.set_metadata({"title": "Rechnung", "producer": "another program"})
        doc.save(str(path), garbage=4, deflate=True)
    assert path.read_bytes() != source.read_bytes()
    return path


def wrong_ids(invoice: PrintedInvoice) -> PrintedInvoice:
    """The same invoice with a VAT ID and an IBAN whose check digits are wrong."""
    return replace(invoice, seller_vat="DE136695975", seller_vat_printed="DE 136 695 975",
                   iban="DE89370400440532013001", iban_printed="DE89 3704 0044 0532 0130 01")
