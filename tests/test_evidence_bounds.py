"""Evidence within bounds, whatever a document or a model gives it: numbers no amount is, a
page of thousands of matches or tens of thousands of words, a page drawn for OCR at any size.
Each ends in a value without evidence (and why), never a batch that stops."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from llamadoc.engines.base import GenerationRequest
from llamadoc.evidence.checks import _as_numbers, compare
from llamadoc.evidence.duplicates import invoice_keys
from llamadoc.evidence.locate import MAX_PAGE_WORDS, Locator, _minimal
from llamadoc.inputs import ocr
from llamadoc.inputs.raster import RasterOptions, open_document
from llamadoc.inputs.sources import collect
from llamadoc.results import PageWords, Status, Word
from tests.printed import PrintedInvoice
from tests.test_review import SureEngine, batch


def grid(n: int, text: str = "1") -> PageWords:
    """A page of ``n`` words, 100 to a line."""
    return PageWords(1, 600.0, 1000.0, "text", tuple(
        Word(text, (i % 100) * 6.0, (i // 100) * 12.0, (i % 100) * 6.0 + 5, (i // 100) * 12.0 + 10, i // 100)
        for i in range(n)))


def test_numbers_past_what_decimal_rounds_are_read_or_left_out_never_raised() -> None:
    assert _as_numbers(1e40) == set() and _as_numbers(1e-30) == set() and _as_numbers(float("inf")) == set()
    assert _as_numbers("1.234,56") == {_as_numbers(1234.56).pop()}
    assert _as_numbers(10**30) == {Decimal(10**30)}  # a long reference held as an integer: still looked for
    # Rounded to the cent past Decimal's 28 digits, without raising:
    assert invoice_keys({"seller": {"name": "A"}, "invoice_number": None, "issue_date": "2026-01-05",
                         "gross_total": 1e30}) == ["name=a|date=2026-01-05|gross=1000000000000000000000000000000.00"]
    assert _as_numbers("123456789012345678901234567.891") == {Decimal("123456789012345678901234567.891")}
    assert [c.status for c in compare({"total": 1e30}, {"total": 12.5})] == ["fail"]
    assert [c.status for c in compare({"total": 10**30}, {"total": 10**30})] == ["pass"]  # 31 digits


def test_a_batch_goes_on_past_a_record_of_runaway_numbers(tmp_path: Path) -> None:
    runaway = PrintedInvoice(number="RE-2026-0990")
    fine = PrintedInvoice(number="RE-2026-0991")
    answers = [json.dumps(runaway.fields | {"invoice_number": None, "gross_total": 1e30, "net_total": 1e-30}),
               fine.answers()[0]]

    def answer(req: GenerationRequest, n: int) -> str:
        return answers[n - 1]

    paths = [runaway.pdf(tmp_path / "a.pdf"), fine.pdf(tmp_path / "b.pdf")]
    report, out = batch(tmp_path, SureEngine(answer), paths)
    assert report.exit_code in (0, 1)
    assert sorted(p.name for p in out.glob("*.json")) == ["a.json", "b.json"]
    assert json.loads((out / "b.json").read_text())["status"] == Status.OK.value


def test_a_page_of_thousands_of_matches_keeps_one_per_place() -> None:
    spans = [(i, i + 1) for i in range(8000)] + [(i, i + 2) for i in range(7999)]
    assert _minimal(spans) == [(i, i + 1) for i in range(8000)]  # no two-word span holds no one-word match
    assert _minimal([(3, 4), (0, 2), (2, 5), (5, 7)]) == [(0, 2), (3, 4), (5, 7)]
    evidence, place = Locator({1: grid(8000)}).find(1, "number", ("total",))
    assert evidence.occurrences == 8000 and place is not None


def test_a_page_of_more_words_than_evidence_reads_says_so() -> None:
    crowded = Locator({1: grid(MAX_PAGE_WORDS + 1, "x")})
    evidence, place = crowded.find("RE-1", "text", ("invoice_number",))
    assert place is None and evidence.why_not is not None
    assert evidence.why_not.startswith("no page") and f"over {MAX_PAGE_WORDS:,} words" in evidence.why_not
    both = Locator({1: grid(10, "y"), 2: grid(MAX_PAGE_WORDS + 1, "x")})
    why = both.find("RE-1", "text", ("invoice_number",))[0].why_not or ""
    assert why.startswith("not found on page 1") and "page 2 holds over" in why


def test_a_huge_scanned_page_is_drawn_for_ocr_within_its_pixels(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import pymupdf

    pdf = tmp_path / "poster.pdf"
    with pymupdf.open() as doc:  # 200 x 200 inches, one small picture over all of it: a scan of a poster
        page = doc.new_page(width=14400, height=14400)
        page.insert_image(page.rect, pixmap=pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, 64, 64), False))
        doc.save(str(pdf))
    seen: list[tuple[int, int]] = []

    def read(image: Any, index: int, width: float, height: float) -> PageWords:
        seen.append(image.size)
        return PageWords(index, width, height, "ocr")

    monkeypatch.setattr(ocr, "read", read)
    [source] = collect([str(pdf)])
    with open_document(source, RasterOptions()) as doc:
        doc.read_words(1)
    [(w, h)] = seen
    assert w * h <= ocr.MAX_PIXELS * 1.01


def test_without_ocr_the_batch_says_once_why_scans_have_no_evidence(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from llamadoc.reader import Events
    from tests.printed import image_only_pdf

    monkeypatch.setattr(ocr, "unavailable", lambda: "Tesseract is not installed (apt-get install tesseract-ocr)")
    invoices = [PrintedInvoice(number=f"RE-2026-095{n}") for n in range(2)]
    scans = [image_only_pdf(inv.pdf(tmp_path / f"p{n}.pdf"), tmp_path / f"scan{n}.pdf")
             for n, inv in enumerate(invoices)]

    def answer(req: GenerationRequest, n: int) -> str:
        return invoices[n - 1].answers()[0]

    said: list[str] = []
    _, out = batch(tmp_path, SureEngine(answer), scans, events=Events(notify=said.append))
    assert [m for m in said if "no word boxes" in m] == [
        "no word boxes for pages without a text layer: Tesseract is not installed (apt-get install tesseract-ocr); "
        "their values get no evidence"]
    body = json.loads((out / "scan0.json").read_text())
    assert {v["evidence"]["why_not"] for v in body["values"]} - {"no value"} == {
        "no page has word boxes (a scan needs OCR: see the document's warnings)"}
