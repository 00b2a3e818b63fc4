"""Regenerate examples/chart.png and examples/invoice.pdf (made by this project, free to use).

    python examples/make_examples.py
"""

from __future__ import annotations

from pathlib import Path

import pymupdf
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SALES = {"North": 42, "South": 27, "East": 35, "West": 18}
LINES = [("Document scanning, per page", 1200, 0.05), ("Archive storage, GB-month", 50, 0.40),
         ("Support hours", 3, 85.00)]
VAT = 0.20


def chart(path: Path) -> None:
    img = Image.new("RGB", (640, 420), "white")
    draw = ImageDraw.Draw(img)
    draw.text((200, 15), "Units sold per region, Q3 2026", fill="black")
    draw.line((60, 360, 600, 360), fill="black")
    draw.line((60, 60, 60, 360), fill="black")
    for tick in range(0, 51, 10):
        y = 360 - tick * 6
        draw.text((30, y - 6), str(tick), fill="black")
        draw.line((56, y, 60, y), fill="black")
    for i, (region, value) in enumerate(SALES.items()):
        x = 100 + i * 125
        draw.rectangle((x, 360 - value * 6, x + 70, 360), fill=(52, 101, 164))
        draw.text((x + 18, 368), region, fill="black")
        draw.text((x + 26, 360 - value * 6 - 16), str(value), fill="black")
    img.save(path)


def invoice(path: Path) -> None:
    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)
    text = [
        (50, 60, "Northwind Scanning Ltd", 16), (50, 80, "12 Harbour Road, Bristol BS1 4QA, UK", 10),
        (50, 95, "VAT GB 123 4567 89", 10), (400, 60, "INVOICE", 18), (400, 85, "Invoice no: INV-2026-0815", 10),
        (400, 100, "Date: 14 September 2026", 10), (400, 115, "Due: 14 October 2026", 10),
        (50, 150, "Bill to: Contoso Accounting GmbH, Hauptstrasse 5, 10115 Berlin", 10),
        (50, 200, "Description", 11), (330, 200, "Qty", 11), (400, 200, "Unit price", 11), (490, 200, "Amount", 11),
    ]
    for x, y, words, size in text:
        page.insert_text((x, y), words, fontsize=size)
    y, net = 225, 0.0
    for desc, qty, price in LINES:
        amount = round(qty * price, 2)
        net += amount
        for x, words in ((50, desc), (330, f"{qty:,}"), (400, f"{price:.2f}"), (490, f"{amount:,.2f}")):
            page.insert_text((x, y), words, fontsize=10)
        y += 18
    tax = round(net * VAT, 2)
    for label, value in (("Net total", net), (f"VAT {VAT:.0%}", tax), ("Total due (GBP)", net + tax)):
        y += 18
        page.insert_text((380, y), label, fontsize=10)
        page.insert_text((490, y), f"{value:,.2f}", fontsize=10)
    page.draw_line((50, 205), (545, 205))
    doc.save(str(path), garbage=3, deflate=True)


if __name__ == "__main__":
    chart(HERE / "chart.png")
    invoice(HERE / "invoice.pdf")
