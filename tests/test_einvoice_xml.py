"""A bare XML e-invoice (CII or UBL 2.1) as a document of its own: its fields exactly with no
model, the same as when a PDF carries it; a readable page for ask and describe; safe parsing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llamadoc.errors import DocumentError
from llamadoc.inputs import einvoice
from llamadoc.inputs.raster import Document, RasterOptions
from llamadoc.inputs.sources import Source
from llamadoc.results import Status
from tests.conftest import CORPUS, parse_json
from tests.documents import Invoice, cii_xml, make_einvoice_pdf, ubl_xml
from tests.fakes import ScriptedEngine
from tests.test_trust import INVOICE_SCHEMA, invoice_task, run

ZUGFERD_XML = sorted((CORPUS / "zugferd_corpus").glob("ZUGFeRDv2_correct/*.xml"))
UNICODE = Invoice(seller="Łódź Młyn Sp. z o.o.", buyer="Müller & Söhne <GmbH>", number="RE-ÄÖÜ/42")


def _xml(kind: str, inv: Invoice) -> bytes:
    return cii_xml(inv) if kind == "cii" else ubl_xml(inv, kind="CreditNote" if kind == "ubl-credit" else "Invoice")


@pytest.mark.parametrize("kind", ["cii", "ubl", "ubl-credit"])
def test_a_bare_xml_gives_the_fields_of_the_same_xml_embedded(tmp_path: Path, kind: str) -> None:
    xml = _xml(kind, UNICODE)
    bare = tmp_path / "xrechnung.xml"
    bare.write_bytes(xml)
    engine = ScriptedEngine(lambda req, n: "{}")
    alone = run(engine, invoice_task(), bare)
    carried = run(engine, invoice_task(), make_einvoice_pdf(tmp_path / "fx.pdf", UNICODE, xml=xml))
    assert engine.requests == []  # no model for either
    assert alone.fields == carried.fields == UNICODE.fields
    assert alone.embedded == "xrechnung.xml" and alone.status is Status.OK and alone.pages == []


@pytest.mark.skipif(not ZUGFERD_XML, reason=f"the ZUGFeRD corpus is not at {CORPUS}")
def test_the_corpus_xml_alone_equals_its_pdf() -> None:
    for xml in ZUGFERD_XML:
        pdf = xml.with_suffix(".pdf")
        with Document(Source(label=str(xml), path=xml), RasterOptions()) as alone, \
                Document(Source(label=str(pdf), path=pdf), RasterOptions()) as carrier:
            own, embedded = alone.e_invoice(), carrier.e_invoice()
            assert own is not None and embedded is not None and own.xml == embedded.xml
            assert own.invoice.to_fields() == embedded.invoice.to_fields()


def test_the_page_of_a_bare_xml_shows_the_invoice(tmp_path: Path) -> None:
    """ask and describe read the invoice rendered as a page, with its text layer."""
    with Document(Source(label="in/rechnung.xml", data=ubl_xml(UNICODE)), RasterOptions(dpi=50)) as doc:
        assert doc.kind == "xml" and doc.page_count == 1 and doc.embedded_files() == {}
        page = next(doc.pages())
    assert page.image.size == (414, 585)  # A4 at 50 DPI
    text = " ".join((page.text or "").split())  # a table cell may wrap a long name
    for value in (UNICODE.number, UNICODE.seller, UNICODE.buyer, UNICODE.seller_vat, UNICODE.gross, "2026-11-03",
                  "Flour, 25 kg sack", "rechnung.xml"):
        assert value in text
    assert page.image.getextrema() != ((255, 255), (255, 255), (255, 255))  # ink on it


def test_a_long_invoice_takes_several_pages() -> None:
    from tests.documents import InvoiceLine

    many = Invoice(lines=tuple(InvoiceLine(f"Item {i}", "1", "1.00", "1.00") for i in range(150)))
    with Document(Source(label="long.xml", data=cii_xml(many)), RasterOptions(dpi=30)) as doc:
        assert doc.page_count >= 3
        texts = [doc.page_info(i)[0] or "" for i in range(1, doc.page_count + 1)]
    assert "Item 0" in texts[0] and "Item 149" in texts[-1] and "Grand total" in texts[-1]


def test_extract_a_bare_xrechnung_through_the_cli(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    path = tmp_path / "xrechnung.xml"
    path.write_bytes(ubl_xml())
    result = run_cli("extract", str(path), "--schema", str(INVOICE_SCHEMA), *model_args, "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = parse_json(result.stdout)
    assert doc["fields"] == Invoice().fields and doc["embedded"] == "xrechnung.xml" and doc["pages"] == []


def test_ask_reads_the_rendered_invoice(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    path = tmp_path / "invoice.xml"
    path.write_bytes(cii_xml())
    result = run_cli("ask", str(path), "-q", "Who is the seller?", *model_args, "--max-tokens", "4",
                     "--format", "json", "--max-pixels", "40000")
    assert result.exit_code == 0, result.stderr
    [page] = parse_json(result.stdout)["pages"]
    assert "Moulin Rouge SARL" in page["text_layer"] and page["tokens"]["prompt"] > 0


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        (b"<?xml version='1.0'?><order xmlns='urn:example'><id>1</id></order>",
         "is not a CII or UBL invoice (its root element is order)"),
        (b"<?xml version='1.0'?><!DOCTYPE r SYSTEM 'http://attacker.example/x.dtd'><CrossIndustryInvoice/>", "DTD"),
        (b"<?xml version='1.0'?><!DOCTYPE r [<!ENTITY x SYSTEM 'file:///etc/passwd'>]><Invoice>&x;</Invoice>", "DTD"),
        (b"<CrossIndustryInvoice>" + b"<a>" * 200 + b"</a>" * 200 + b"</CrossIndustryInvoice>", "more than 100 deep"),
        (b"<CrossIndustryInvoice><unclosed></CrossIndustryInvoice>", "not well-formed"),
    ],
    ids=["not-an-invoice", "external-dtd", "external-entity", "deep", "malformed"],
)
def test_bad_xml_files_fail_with_one_line(tmp_path: Path, xml: bytes, message: str) -> None:
    with pytest.raises(DocumentError) as err:
        Document(Source(label="x.xml", data=xml), RasterOptions())
    assert message in str(err.value) and "x.xml" in str(err.value) and "\n" not in str(err.value)


def test_xml_size_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(einvoice, "MAX_BYTES", 1000)
    with pytest.raises(DocumentError, match="more than the 1,000 an e-invoice may have"):
        einvoice.parse(cii_xml(), "big.xml")


def test_root_kind_reads_only_the_first_element() -> None:
    assert einvoice.root_kind(cii_xml()) == "CrossIndustryInvoice"
    assert einvoice.root_kind(ubl_xml(kind="CreditNote")) == "CreditNote"
    assert einvoice.root_kind(b"<?xml version='1.0'?><!DOCTYPE a [<!ENTITY b 'c'>]><Invoice/>") is None
    assert einvoice.root_kind(b"<config/>") is None and einvoice.root_kind(b"%PDF-1.7") is None


def test_results_keep_the_exact_amounts(tmp_path: Path) -> None:
    bare = tmp_path / "x.xml"
    bare.write_bytes(cii_xml(Invoice(gross="162.60")))
    result = run(ScriptedEngine(lambda req, n: "{}"), invoice_task(), bare)
    assert json.dumps(result.fields["gross_total"]) == "162.6"
