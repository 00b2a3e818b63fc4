"""The e-invoice reader against the ZUGFeRD corpus (every PDF, its XML taken from the PDF
itself) and against hand-made CII/UBL edge cases."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from llamadoc.errors import DocumentError
from llamadoc.inputs import einvoice
from llamadoc.inputs.raster import Document, RasterOptions
from llamadoc.inputs.sources import Source
from llamadoc.tasks import load_schema, schema_error

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus" / "zugferd_corpus"
PDFS = sorted(CORPUS.glob("**/*.pdf"))
WITH_TRUTH = [p for p in PDFS if p.with_suffix(".fields.json").exists()]
INVOICE_SCHEMA = load_schema(str(ROOT / "examples" / "invoice.yaml"))

# Every key a fields.json may hold, and the EInvoice attribute that must reproduce it.
FIELDS = (
    "xml_root", "profile", "invoice_number", "type_code", "issue_date", "due_date",
    "seller_name", "seller_vat_id", "seller_tax_number", "buyer_name", "currency",
    "line_total", "tax_basis_total", "tax_total", "grand_total", "due_payable", "line_count",
)

needs_corpus = pytest.mark.skipif(not PDFS, reason=f"the ZUGFeRD corpus is not at {CORPUS}")


def _embedded(pdf: Path) -> dict[str, bytes]:
    with Document(Source(label=pdf.name, path=pdf), RasterOptions()) as doc:
        return doc.embedded_files()


def _case_id(pdf: Path) -> str:
    return str(pdf.relative_to(CORPUS))


@needs_corpus
def test_every_corpus_pdf_is_covered() -> None:
    """A PDF added to the corpus without ground truth must be one known to carry no XML."""
    assert len(PDFS) == 57
    assert {p for p in PDFS if p not in WITH_TRUTH} == set(CORPUS.glob("unstructured/*.pdf"))


@needs_corpus
@pytest.mark.parametrize("pdf", WITH_TRUTH, ids=_case_id)
def test_reproduces_fields_json(pdf: Path) -> None:
    truth = json.loads(pdf.with_suffix(".fields.json").read_text(encoding="utf-8"))
    assert set(truth) <= {*FIELDS, "embedded_file", "parse_error"}, "fields.json grew a key this test ignores"

    found = einvoice.find(_embedded(pdf))
    assert found is not None
    name, xml = found
    assert xml == pdf.with_suffix(".xml").read_bytes()  # the attachment is the side file
    # fields.json lowercases ZUGFeRD 1.0's "ZUGFeRD-invoice.xml"; the PDFs spell it that way.
    assert name.lower() == truth["embedded_file"]

    if "parse_error" in truth:
        with pytest.raises(DocumentError) as err:
            einvoice.parse(xml, name)
        assert "\n" not in str(err.value) and name in str(err.value)
        return
    invoice = einvoice.parse(xml, name)
    got = {key: getattr(invoice, key) for key in FIELDS}
    assert got == {key: truth.get(key) for key in FIELDS}  # absent in fields.json: None here


@needs_corpus
@pytest.mark.parametrize("pdf", [p for p in WITH_TRUTH if "fail" not in p.parent.name], ids=_case_id)
def test_to_fields_is_a_valid_invoice_record(pdf: Path) -> None:
    name, xml = einvoice.find(_embedded(pdf)) or ("", b"")
    invoice = einvoice.parse(xml, name)
    fields = invoice.to_fields()
    assert schema_error(fields, INVOICE_SCHEMA) is None
    assert fields["issue_date"] == f"{invoice.issue_date[:4]}-{invoice.issue_date[4:6]}-{invoice.issue_date[6:]}"
    for key, exact in (("tax_total", invoice.tax_total), ("gross_total", invoice.grand_total)):
        assert Decimal(repr(fields[key])) == Decimal(exact)  # the float holds the XML's decimal exactly
    amounts = [Decimal(line.amount) for line in invoice.lines if line.amount is not None]
    assert [Decimal(repr(item["amount"])) for item in fields["line_items"] if item["amount"] is not None] == amounts


@needs_corpus
def test_a_pdf_without_an_e_invoice() -> None:
    for pdf in CORPUS.glob("unstructured/*.pdf"):
        assert einvoice.find(_embedded(pdf)) is None


# -- hand-made cases ---------------------------------------------------------------------

CII = b"""<?xml version="1.0" encoding="UTF-8"?>
<rsm:CrossIndustryInvoice xmlns:rsm="urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
 xmlns:ram="urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100"
 xmlns:udt="urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100">
 <rsm:ExchangedDocumentContext><ram:GuidelineSpecifiedDocumentContextParameter>
  <ram:ID>urn:cen.eu:en16931:2017#compliant#urn:xeinkauf.de:kosit:xrechnung_3.0</ram:ID>
 </ram:GuidelineSpecifiedDocumentContextParameter></rsm:ExchangedDocumentContext>
 <rsm:ExchangedDocument><ram:ID>X-1</ram:ID><ram:TypeCode>380</ram:TypeCode>
  <ram:IssueDateTime><udt:DateTimeString format="610">202403</udt:DateTimeString></ram:IssueDateTime>
 </rsm:ExchangedDocument>
 <rsm:SupplyChainTradeTransaction>
  <ram:IncludedSupplyChainTradeLineItem>
   <ram:SpecifiedTradeProduct><ram:Name>Screws</ram:Name></ram:SpecifiedTradeProduct>
   <ram:SpecifiedLineTradeAgreement><ram:NetPriceProductTradePrice>
    <ram:ChargeAmount>12.50</ram:ChargeAmount><ram:BasisQuantity unitCode="C62">100</ram:BasisQuantity>
   </ram:NetPriceProductTradePrice></ram:SpecifiedLineTradeAgreement>
   <ram:SpecifiedLineTradeDelivery><ram:BilledQuantity unitCode="C62">400</ram:BilledQuantity></ram:SpecifiedLineTradeDelivery>
   <ram:SpecifiedLineTradeSettlement><ram:SpecifiedTradeSettlementLineMonetarySummation>
    <ram:LineTotalAmount>50.00</ram:LineTotalAmount>
   </ram:SpecifiedTradeSettlementLineMonetarySummation></ram:SpecifiedLineTradeSettlement>
  </ram:IncludedSupplyChainTradeLineItem>
  <ram:ApplicableHeaderTradeSettlement>
   <ram:InvoiceCurrencyCode>EUR</ram:InvoiceCurrencyCode>
  </ram:ApplicableHeaderTradeSettlement>
 </rsm:SupplyChainTradeTransaction>
</rsm:CrossIndustryInvoice>"""

UBL = b"""<?xml version="1.0" encoding="UTF-8"?>
<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"
 xmlns:cac="urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
 xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2">
 <cbc:CustomizationID>urn:cen.eu:en16931:2017#compliant#urn:xeinkauf.de:kosit:xrechnung_3.0</cbc:CustomizationID>
 <cbc:ID>UBL-42</cbc:ID>
 <cbc:IssueDate>2024-03-01</cbc:IssueDate>
 <cbc:DueDate>2024-03-31</cbc:DueDate>
 <cbc:InvoiceTypeCode>380</cbc:InvoiceTypeCode>
 <cbc:DocumentCurrencyCode>EUR</cbc:DocumentCurrencyCode>
 <cac:AccountingSupplierParty><cac:Party>
  <cac:PostalAddress><cbc:StreetName>Hauptstr. 1</cbc:StreetName><cbc:CityName>Berlin</cbc:CityName>
   <cbc:PostalZone>10115</cbc:PostalZone><cac:Country><cbc:IdentificationCode>DE</cbc:IdentificationCode></cac:Country>
  </cac:PostalAddress>
  <cac:PartyTaxScheme><cbc:CompanyID>DE123456789</cbc:CompanyID><cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme></cac:PartyTaxScheme>
  <cac:PartyTaxScheme><cbc:CompanyID>12/345/67890</cbc:CompanyID><cac:TaxScheme><cbc:ID>FC</cbc:ID></cac:TaxScheme></cac:PartyTaxScheme>
  <cac:PartyLegalEntity><cbc:RegistrationName>Verkauf GmbH</cbc:RegistrationName></cac:PartyLegalEntity>
 </cac:Party></cac:AccountingSupplierParty>
 <cac:AccountingCustomerParty><cac:Party>
  <cac:PartyName><cbc:Name>Kauf AG</cbc:Name></cac:PartyName>
 </cac:Party></cac:AccountingCustomerParty>
 <cac:TaxTotal><cbc:TaxAmount currencyID="USD">20.90</cbc:TaxAmount></cac:TaxTotal>
 <cac:TaxTotal><cbc:TaxAmount currencyID="EUR">19.00</cbc:TaxAmount></cac:TaxTotal>
 <cac:LegalMonetaryTotal>
  <cbc:LineExtensionAmount currencyID="EUR">100.00</cbc:LineExtensionAmount>
  <cbc:TaxExclusiveAmount currencyID="EUR">100.00</cbc:TaxExclusiveAmount>
  <cbc:TaxInclusiveAmount currencyID="EUR">119.00</cbc:TaxInclusiveAmount>
  <cbc:PayableAmount currencyID="EUR">119.00</cbc:PayableAmount>
 </cac:LegalMonetaryTotal>
 <cac:InvoiceLine><cbc:ID>1</cbc:ID><cbc:InvoicedQuantity unitCode="H87">4</cbc:InvoicedQuantity>
  <cbc:LineExtensionAmount currencyID="EUR">100.00</cbc:LineExtensionAmount>
  <cac:Item><cbc:Name>Widget</cbc:Name></cac:Item><cac:Price><cbc:PriceAmount currencyID="EUR">25.00</cbc:PriceAmount></cac:Price>
 </cac:InvoiceLine>
</Invoice>"""


def test_ubl_invoice() -> None:
    invoice = einvoice.parse(UBL, "xrechnung.xml")
    assert (invoice.xml_root, invoice.invoice_number, invoice.issue_date, invoice.due_date) == (
        "Invoice", "UBL-42", "2024-03-01", "2024-03-31")
    assert (invoice.seller_name, invoice.seller_vat_id, invoice.seller_tax_number) == (
        "Verkauf GmbH", "DE123456789", "12/345/67890")
    assert invoice.seller_address == "Hauptstr. 1, 10115 Berlin, DE"
    assert invoice.buyer_name == "Kauf AG"
    assert invoice.tax_total == "19.00"  # the invoice currency's, not the first
    fields = invoice.to_fields()
    assert schema_error(fields, INVOICE_SCHEMA) is None
    assert fields["line_items"] == [{"description": "Widget", "quantity": 4.0, "unit_price": 25.0, "amount": 100.0}]
    assert (fields["net_total"], fields["tax_total"], fields["gross_total"]) == (100.0, 19.0, 119.0)


def test_ubl_credit_note() -> None:
    xml = (UBL.replace(b"Invoice-2", b"CreditNote-2").replace(b"<Invoice ", b"<CreditNote ")
           .replace(b"</Invoice>", b"</CreditNote>").replace(b"InvoiceTypeCode", b"CreditNoteTypeCode").replace(b">380<", b">381<")
           .replace(b"InvoiceLine>", b"CreditNoteLine>").replace(b"InvoicedQuantity", b"CreditedQuantity"))
    invoice = einvoice.parse(xml)
    assert (invoice.xml_root, invoice.type_code, invoice.line_count) == ("CreditNote", "381", 1)
    assert invoice.lines[0].quantity == "4"


def test_cii_sparse_invoice() -> None:
    """Missing parties and totals are None, a month-only date is not forced into a day,
    and a price per 100 units becomes a price per unit."""
    invoice = einvoice.parse(CII, "xrechnung.xml")
    assert invoice.profile.endswith("xrechnung_3.0")
    assert invoice.issue_date == "202403"
    assert invoice.seller_name is None and invoice.grand_total is None
    fields = invoice.to_fields()
    assert schema_error(fields, INVOICE_SCHEMA) is None
    assert fields["issue_date"] is None and fields["seller"] is None and fields["gross_total"] is None
    assert fields["line_items"] == [{"description": "Screws", "quantity": 400.0, "unit_price": 0.125, "amount": 50.0}]


@pytest.mark.parametrize(
    ("written", "iso"),
    [("20130305", "2013-03-05"), ("2024-03-01", "2024-03-01"), (" 20240229 ", "2024-02-29"),
     ("20230229", None), ("202403", None), ("2024-3-1", None), (None, None)],
)
def test_iso_date(written: str | None, iso: str | None) -> None:
    assert einvoice.iso_date(written) == iso


def test_find_by_name_then_by_root() -> None:
    other = b"<?xml version='1.0'?><logistics xmlns='urn:example'/>"
    assert einvoice.find({"ZUGFeRD-invoice.xml": CII, "extra.xml": other}) == ("ZUGFeRD-invoice.xml", CII)
    assert einvoice.find({"extra.xml": other, "rechnung_2024.xml": UBL}) == ("rechnung_2024.xml", UBL)
    assert einvoice.find({"extra.xml": other, "broken.xml": b"<a", "photo.png": b"\x89PNG"}) is None
    assert einvoice.find({}) is None


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        (b"", "not well-formed"),
        (b"<rsm:CrossIndustryInvoice xmlns:rsm='x'><unclosed></rsm:CrossIndustryInvoice>", "not well-formed"),
        (b"<?xml version='1.0'?><order xmlns='urn:example'><id>1</id></order>", "root element is order"),
        (b"<Invoice xmlns='urn:example'/>", "root element is Invoice"),  # not UBL's namespace
        (b"<?xml version='1.0'?><!DOCTYPE l [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;'>]>"
         b"<CrossIndustryInvoice>&b;</CrossIndustryInvoice>", "DTD"),
        (b"<?xml version='1.0'?><!DOCTYPE r SYSTEM 'file:///etc/passwd'><r/>", "DTD"),
    ],
    ids=["empty", "malformed", "not-an-invoice", "foreign-invoice", "entity-bomb", "external-dtd"],
)
def test_bad_xml_is_one_clear_error(xml: bytes, message: str) -> None:
    with pytest.raises(DocumentError) as err:
        einvoice.parse(xml, "factur-x.xml")
    text = str(err.value)
    assert message in text and "factur-x.xml" in text and "\n" not in text
