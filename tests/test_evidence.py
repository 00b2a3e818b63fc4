"""Evidence for every value: where the page prints it (text layer and OCR), checked against
the truth of generated invoices whose layout is known."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llamadoc.evidence.checks import _kind, _leaves, _path
from llamadoc.evidence.locate import Locator
from llamadoc.inputs import ocr
from llamadoc.inputs.raster import RasterOptions, open_document
from llamadoc.inputs.sources import collect
from llamadoc.results import PageWords, Word
from tests.conftest import CORPUS
from tests.printed import PrintedInvoice, image_only_pdf, phone_photo

needs_ocr = pytest.mark.skipif(ocr.unavailable() is not None, reason=ocr.unavailable() or "")


def words_of(path: Path, read: bool = False) -> dict[int, PageWords]:
    """The word boxes llamadoc finds on each page: the text layer's, or OCR's with ``read``."""
    [source] = collect([str(path)])
    with open_document(source, RasterOptions()) as doc:
        found = {i: doc.read_words(i) if read else doc.words(i) for i in doc.selected()}
    return {i: w for i, w in found.items() if w is not None}


def find_all(invoice: PrintedInvoice, pages: dict[int, PageWords]) -> dict[str, Any]:
    locator = Locator(pages)
    return {_path(keys): locator.find(value, _kind(keys, value, {}), keys)[0] for keys, value in _leaves(invoice.fields)}


def truth_rects(pdf: Path, page: int, printed: str) -> list[Any]:
    """Where PyMuPDF itself finds the printed text (line by line for a value over lines)."""
    import pymupdf

    with pymupdf.open(pdf) as doc:
        return [r for part in printed.split("\n") for r in doc[page - 1].search_for(part)]


def contains(box: list[float], rect: Any, slack: float = 1.0) -> bool:
    return (box[0] - slack <= rect.x0 and box[1] - slack <= rect.y0 and box[2] + slack >= rect.x1
            and box[3] + slack >= rect.y1)


@pytest.mark.parametrize("two_pages", [False, True], ids=["one page", "two pages"])
def test_text_layer_evidence_boxes_contain_the_printed_values(tmp_path: Path, two_pages: bool) -> None:
    invoice = PrintedInvoice(two_pages=two_pages)
    pdf = invoice.pdf(tmp_path / "invoice.pdf")
    found = find_all(invoice, words_of(pdf))
    for path, (page, printed) in invoice.printed.items():
        evidence = found[path]
        assert (evidence.source, evidence.page) == ("text", page), path
        assert evidence.text.replace("\n", " ") == printed, path
        assert evidence.page_size == [595.0, 842.0]
        shown = printed if path != "seller.name" else "\n".join(invoice.seller_lines)
        rects = truth_rects(pdf, page, shown)
        assert rects, path
        # Each printed piece lies inside one of the value's boxes: the box contains the printed value.
        assert all(any(contains(box, rect) for box in evidence.boxes) for rect in rects[: len(evidence.boxes)]), path
    # The name printed over two lines, with a heading beside its first: two boxes, one per line.
    assert len(found["seller.name"].boxes) == 2 and "RECHNUNG" not in found["seller.name"].text


def test_a_line_items_numbers_are_found_on_its_own_row(tmp_path: Path) -> None:
    """Quantity 1 is printed all over an invoice; the one in the row of its description counts."""
    invoice = PrintedInvoice()
    pdf = invoice.pdf(tmp_path / "invoice.pdf")
    pages = words_of(pdf)
    locator = Locator(pages)
    description, place = locator.find("Reisekosten Pauschale", "text", ("line_items", 1, "description"))
    quantity, _ = locator.find(1.0, "number", ("line_items", 1, "quantity"), near=place)
    assert description.boxes and quantity.boxes
    row = description.boxes[0]
    assert abs(quantity.boxes[0][1] - row[1]) < 2 and quantity.occurrences > 1


@needs_ocr
@pytest.mark.parametrize("kind", ["image-only PDF", "phone photo"])
def test_ocr_evidence_on_pages_without_a_text_layer(tmp_path: Path, kind: str) -> None:
    invoice = PrintedInvoice()
    pdf = invoice.pdf(tmp_path / "invoice.pdf")
    scan = image_only_pdf(pdf, tmp_path / "scan.pdf") if kind == "image-only PDF" else phone_photo(
        pdf, tmp_path / "photo.jpg")
    assert not words_of(scan)  # no text layer: only OCR can say where values stand
    pages = words_of(scan, read=True)
    assert pages[1].source == "ocr"
    found = find_all(invoice, pages)
    located = {path for path in invoice.printed if found[path].page == 1}
    assert len(located) >= 0.9 * len(invoice.printed), sorted(set(invoice.printed) - located)
    assert all(found[p].source == "ocr" for p in located)
    if kind == "image-only PDF":  # the same page coordinates as the text layer: the boxes agree
        layer = find_all(invoice, words_of(pdf))
        for path in located:
            ocr_box, text_box = found[path].boxes[0], layer[path].boxes[0]
            centre = ((ocr_box[0] + ocr_box[2]) / 2, (ocr_box[1] + ocr_box[3]) / 2)
            assert text_box[0] - 3 <= centre[0] <= text_box[2] + 3 and text_box[1] - 3 <= centre[1] <= text_box[3] + 3
    else:  # boxes in the photo's pixels
        width, height = pages[1].width, pages[1].height
        assert found["gross_total"].page_size == [width, height]
        assert all(0 <= b[0] < b[2] <= width and 0 <= b[1] < b[3] <= height for p in located for b in found[p].boxes)


def line(y: float, *texts: str, line_no: int) -> list[Word]:
    x, out = 50.0, []
    for text in texts:
        out.append(Word(text, x, y, x + 6 * len(text), y + 10, line_no))
        x += 6 * len(text) + 5
    return out


def page_of(*lines: list[str]) -> dict[int, PageWords]:
    words = [w for n, texts in enumerate(lines) for w in line(100 + 14 * n, *texts, line_no=n)]
    return {1: PageWords(1, 595, 842, "text", tuple(words))}


@pytest.mark.parametrize(("value", "kind", "printed"), [
    (1234.5, "number", ["Total", "1.234,50"]),
    (1234.5, "number", ["Total", "1,234.50"]),
    (1234.5, "number", ["Total", "1", "234,50", "EUR"]),
    (1234.5, "number", ["Total", "EUR", "1.234,50"]),
    ("2026-12-05", "date", ["Datum:", "05.12.2026"]),
    ("2026-12-05", "date", ["Date", "5", "Dec", "2026"]),
    ("2026-12-05", "date", ["Date:", "December", "5,", "2026"]),
    ("DE89370400440532013000", "text", ["IBAN", "DE89", "3704", "0044", "0532", "0130", "00"]),
    ("EUR", "currency", ["Amount", "€12"]),
])
def test_values_are_matched_as_they_are_printed(value: Any, kind: str, printed: list[str]) -> None:
    evidence, _ = Locator(page_of(printed)).find(value, kind, ("x",))
    assert evidence.page == 1, evidence.why_not
    assert printed[-1].rstrip(",") in evidence.text or evidence.text in " ".join(printed)


def test_a_value_split_over_two_lines_and_hyphenated() -> None:
    pages = page_of(["Seller:", "Hoch-"], ["tief", "Bau", "GmbH"], ["IBAN", "DE89", "3704", "0044"],
                    ["0532", "0130", "00"])
    name, _ = Locator(pages).find("Hochtief Bau GmbH", "text", ("seller", "name"))
    assert name.text == "Hoch-\ntief Bau GmbH" and len(name.boxes) == 2
    iban, _ = Locator(pages).find("DE89 3704 0044 0532 0130 00", "text", ("iban",))
    assert len(iban.boxes) == 2


def test_no_evidence_says_why() -> None:
    pages = page_of(["Invoice", "A-1", "Total", "12,50"])
    locator = Locator(pages)
    assert locator.find(99.0, "number", ("gross_total",))[0].why_not == "not found on page 1"
    assert locator.find(None, "text", ("x",))[0].why_not == "no value"
    assert locator.find("x" * 200, "text", ("note",))[0].why_not.startswith("free text over")
    assert Locator({}).find("A-1", "text", ("x",))[0].why_not == "no page has word boxes (a scan needs OCR: see the document's warnings)"
    blind = Locator({1: PageWords(1, 100, 100, "ocr")}).find("A-1", "text", ("x",))[0]
    assert blind.why_not == "no page has a text layer or OCR words"
    # A number does not match inside a longer one, nor a name inside a longer word.
    assert locator.find(2.5, "number", ("x",))[0].page is None
    assert locator.find("Invo", "text", ("x",))[0].page is None


def test_the_labelled_place_wins_when_a_value_is_printed_twice() -> None:
    pages = page_of(["Subtotal", "100,00"], ["Shipping", "100,00"], ["Total", "100,00"])
    evidence, _ = Locator(pages).find(100.0, "number", ("gross_total",))
    assert evidence.occurrences == 3 and evidence.boxes[0][1] == 128  # the "Total" line


# -- the corpus: the share of an invoice's values with evidence (extra: skipped without it) --------

CORPUS_PDFS = sorted((CORPUS / "zugferd_corpus" / "ZUGFeRDv2_correct").glob("*.pdf"))
needs_corpus = pytest.mark.skipif(not CORPUS_PDFS, reason=f"the shared corpus is not at {CORPUS}")


def corpus_record(pdf: Path) -> dict[str, Any]:
    from llamadoc.inputs import einvoice

    return einvoice.parse(pdf.with_suffix(".xml").read_bytes()).to_fields()


def share_found(fields: dict[str, Any], pages: dict[int, PageWords]) -> tuple[int, int]:
    from llamadoc.evidence.checks import MAX_GROUNDED_TEXT

    locator = Locator(pages)
    wanted = [(k, v) for k, v in _leaves(fields) if _kind(k, v, {}) is not None
              and not (isinstance(v, str) and len(v) > MAX_GROUNDED_TEXT)]
    return sum(1 for k, v in wanted if locator.find(v, _kind(k, v, {}), k)[0].page is not None), len(wanted)


@needs_corpus
def test_most_values_of_the_corpus_e_invoices_have_text_layer_evidence() -> None:
    """The e-invoices' own XML is the truth; their PDFs print it (benchmarks/evidence_cost.py
    reports the share over the whole corpus)."""
    found = total = 0
    for pdf in CORPUS_PDFS:
        got, wanted = share_found(corpus_record(pdf), words_of(pdf))
        found, total = found + got, total + wanted
    assert total > 300 and found / total >= 0.9, (found, total)


@needs_corpus
@needs_ocr
def test_ocr_finds_on_a_scanned_corpus_page_what_its_text_layer_shows(tmp_path: Path) -> None:
    for pdf in CORPUS_PDFS[:2]:
        scan = image_only_pdf(pdf, tmp_path / f"{pdf.stem}.scan.pdf")
        first = {1: words_of(pdf)[1]}
        on_text, _ = share_found(corpus_record(pdf), first)
        on_ocr, _ = share_found(corpus_record(pdf), {1: words_of(scan, read=True)[1]})
        assert on_ocr >= 0.85 * on_text, (pdf.name, on_ocr, on_text)
