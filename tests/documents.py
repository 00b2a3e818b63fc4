"""Documents the tests make on the spot: e-invoices (a CII or a UBL XML, and a Factur-X PDF that embeds one).

They cover what the shared corpus shows (tests that read ../shared/corpus are extra
evidence and skip without it), so a user's clone tests every behaviour too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape


@dataclass(frozen=True)
class InvoiceLine:
    description: str
    quantity: str
    unit_price: str
    amount: str


@dataclass(frozen=True)
class Invoice:
    """The values a generated e-invoice carries, as strings exactly as its XML writes them."""

    number: str = "FX-2026-0042"
    issue_date: str = "20261103"  # CII format 102: YYYYMMDD
    due_date: str = "20261203"
    seller: str = "Moulin Rouge SARL"
    seller_vat: str = "FR11999999998"
    seller_street: str = "12 rue des Meuniers"
    seller_city: tuple[str, str] = ("84340", "Malaucene")
    buyer: str = "Boutique Lumiere"
    buyer_vat: str = "FR19787878784"
    currency: str = "EUR"
    lines: tuple[InvoiceLine, ...] = field(default_factory=lambda: (
        InvoiceLine("Flour, 25 kg sack", "4", "30.00", "120.00"),
        InvoiceLine("Delivery", "1", "15.50", "15.50"),
    ))
    net: str = "135.50"
    tax: str = "27.10"
    gross: str = "162.60"

    @property
    def fields(self) -> dict[str, object]:
        """The record llamadoc reads from it, in the shape of examples/invoice.yaml."""
        def iso(d: str) -> str:
            return f"{d[:4]}-{d[4:6]}-{d[6:]}"

        return {
            "invoice_number": self.number,
            "issue_date": iso(self.issue_date),
            "due_date": iso(self.due_date),
            "seller": {"name": self.seller, "address": f"{self.seller_street}, {' '.join(self.seller_city)}, FR",
                       "vat_id": self.seller_vat},
            "buyer": {"name": self.buyer, "address": None, "vat_id": self.buyer_vat},
            "currency": self.currency,
            "line_items": [{"description": li.description, "quantity": float(li.quantity),
                            "unit_price": float(li.unit_price), "amount": float(li.amount)} for li in self.lines],
            "net_total": float(self.net),
            "tax_total": float(self.tax),
            "gross_total": float(self.gross),
        }

    @property
    def text(self) -> list[str]:
        """What the printed invoice shows (the PDF's text layer), one string per line."""
        return [
            f"INVOICE {self.number}", f"Date {self.issue_date[6:]}.{self.issue_date[4:6]}.{self.issue_date[:4]}",
            f"Seller: {self.seller}, {self.seller_street}", f"VAT {self.seller_vat}", f"Buyer: {self.buyer}",
            *(f"{li.description}  {li.quantity} x {li.unit_price} = {li.amount}" for li in self.lines),
            f"Net {self.net}  VAT {self.tax}  Total {self.gross} {self.currency}",
        ]


def cii_xml(inv: Invoice = Invoice(), profile: str = "urn:factur-x.eu:1p0:en16931") -> bytes:
    """A UN/CEFACT CII invoice (the syntax of ZUGFeRD 2.x, Factur-X and XRechnung-CII)."""
    def x(value: str) -> str:
        return escape(value)

    lines = "".join(f"""
    <ram:IncludedSupplyChainTradeLineItem>
      <ram:AssociatedDocumentLineDocument><ram:LineID>{i}</ram:LineID></ram:AssociatedDocumentLineDocument>
      <ram:SpecifiedTradeProduct><ram:Name>{x(li.description)}</ram:Name></ram:SpecifiedTradeProduct>
      <ram:SpecifiedLineTradeAgreement>
        <ram:NetPriceProductTradePrice><ram:ChargeAmount>{li.unit_price}</ram:ChargeAmount></ram:NetPriceProductTradePrice>
      </ram:SpecifiedLineTradeAgreement>
      <ram:SpecifiedLineTradeDelivery>
        <ram:BilledQuantity unitCode="C62">{li.quantity}</ram:BilledQuantity>
      </ram:SpecifiedLineTradeDelivery>
      <ram:SpecifiedLineTradeSettlement>
        <ram:SpecifiedTradeSettlementLineMonetarySummation><ram:LineTotalAmount>{li.amount}</ram:LineTotalAmount></ram:SpecifiedTradeSettlementLineMonetarySummation>
      </ram:SpecifiedLineTradeSettlement>
    </ram:IncludedSupplyChainTradeLineItem>""" for i, li in enumerate(inv.lines, 1))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<rsm:CrossIndustryInvoice xmlns:rsm="urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
    xmlns:ram="urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100"
    xmlns:udt="urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100">
  <rsm:ExchangedDocumentContext>
    <ram:GuidelineSpecifiedDocumentContextParameter><ram:ID>{profile}</ram:ID></ram:GuidelineSpecifiedDocumentContextParameter>
  </rsm:ExchangedDocumentContext>
  <rsm:ExchangedDocument>
    <ram:ID>{x(inv.number)}</ram:ID>
    <ram:TypeCode>380</ram:TypeCode>
    <ram:IssueDateTime><udt:DateTimeString format="102">{inv.issue_date}</udt:DateTimeString></ram:IssueDateTime>
  </rsm:ExchangedDocument>
  <rsm:SupplyChainTradeTransaction>{lines}
    <ram:ApplicableHeaderTradeAgreement>
      <ram:SellerTradeParty>
        <ram:Name>{x(inv.seller)}</ram:Name>
        <ram:PostalTradeAddress>
          <ram:PostcodeCode>{inv.seller_city[0]}</ram:PostcodeCode>
          <ram:LineOne>{x(inv.seller_street)}</ram:LineOne>
          <ram:CityName>{x(inv.seller_city[1])}</ram:CityName>
          <ram:CountryID>FR</ram:CountryID>
        </ram:PostalTradeAddress>
        <ram:SpecifiedTaxRegistration><ram:ID schemeID="VA">{inv.seller_vat}</ram:ID></ram:SpecifiedTaxRegistration>
      </ram:SellerTradeParty>
      <ram:BuyerTradeParty>
        <ram:Name>{x(inv.buyer)}</ram:Name>
        <ram:SpecifiedTaxRegistration><ram:ID schemeID="VA">{inv.buyer_vat}</ram:ID></ram:SpecifiedTaxRegistration>
      </ram:BuyerTradeParty>
    </ram:ApplicableHeaderTradeAgreement>
    <ram:ApplicableHeaderTradeDelivery/>
    <ram:ApplicableHeaderTradeSettlement>
      <ram:InvoiceCurrencyCode>{inv.currency}</ram:InvoiceCurrencyCode>
      <ram:SpecifiedTradePaymentTerms>
        <ram:DueDateDateTime><udt:DateTimeString format="102">{inv.due_date}</udt:DateTimeString></ram:DueDateDateTime>
      </ram:SpecifiedTradePaymentTerms>
      <ram:SpecifiedTradeSettlementHeaderMonetarySummation>
        <ram:LineTotalAmount>{inv.net}</ram:LineTotalAmount>
        <ram:TaxBasisTotalAmount>{inv.net}</ram:TaxBasisTotalAmount>
        <ram:TaxTotalAmount currencyID="{inv.currency}">{inv.tax}</ram:TaxTotalAmount>
        <ram:GrandTotalAmount>{inv.gross}</ram:GrandTotalAmount>
        <ram:DuePayableAmount>{inv.gross}</ram:DuePayableAmount>
      </ram:SpecifiedTradeSettlementHeaderMonetarySummation>
    </ram:ApplicableHeaderTradeSettlement>
  </rsm:SupplyChainTradeTransaction>
</rsm:CrossIndustryInvoice>
""".encode()


def ubl_xml(inv: Invoice = Invoice(), kind: str = "Invoice",
            customization: str = "urn:cen.eu:en16931:2017#compliant#urn:xeinkauf.de:kosit:xrechnung_3.0") -> bytes:
    """An OASIS UBL 2.1 Invoice or CreditNote (the syntax of XRechnung-UBL and Peppol BIS 3)
    with the same values as ``cii_xml(inv)``."""
    def x(value: str) -> str:
        return escape(value)

    def iso(d: str) -> str:
        return f"{d[:4]}-{d[4:6]}-{d[6:]}"

    line_tag, quantity_tag = ("InvoiceLine", "InvoicedQuantity") if kind == "Invoice" else (
        "CreditNoteLine", "CreditedQuantity")
    cur = inv.currency
    lines = "".join(f"""
  <cac:{line_tag}>
    <cbc:ID>{i}</cbc:ID>
    <cbc:{quantity_tag} unitCode="C62">{li.quantity}</cbc:{quantity_tag}>
    <cbc:LineExtensionAmount currencyID="{cur}">{li.amount}</cbc:LineExtensionAmount>
    <cac:Item><cbc:Name>{x(li.description)}</cbc:Name>
      <cac:ClassifiedTaxCategory><cbc:ID>S</cbc:ID><cbc:Percent>20</cbc:Percent><cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme></cac:ClassifiedTaxCategory>
    </cac:Item>
    <cac:Price><cbc:PriceAmount currencyID="{cur}">{li.unit_price}</cbc:PriceAmount></cac:Price>
  </cac:{line_tag}>""" for i, li in enumerate(inv.lines, 1))
    due = f"<cbc:DueDate>{iso(inv.due_date)}</cbc:DueDate>" if kind == "Invoice" else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<{kind} xmlns="urn:oasis:names:specification:ubl:schema:xsd:{kind}-2"
    xmlns:cac="urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
    xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2">
  <cbc:CustomizationID>{customization}</cbc:CustomizationID>
  <cbc:ProfileID>urn:fdc:peppol.eu:2017:poacc:billing:01:1.0</cbc:ProfileID>
  <cbc:ID>{x(inv.number)}</cbc:ID>
  <cbc:IssueDate>{iso(inv.issue_date)}</cbc:IssueDate>
  {due}
  <cbc:{kind}TypeCode>{"380" if kind == "Invoice" else "381"}</cbc:{kind}TypeCode>
  <cbc:DocumentCurrencyCode>{cur}</cbc:DocumentCurrencyCode>
  <cbc:BuyerReference>04011000-12345-03</cbc:BuyerReference>
  <cac:AccountingSupplierParty><cac:Party>
    <cac:PostalAddress>
      <cbc:StreetName>{x(inv.seller_street)}</cbc:StreetName>
      <cbc:CityName>{x(inv.seller_city[1])}</cbc:CityName>
      <cbc:PostalZone>{inv.seller_city[0]}</cbc:PostalZone>
      <cac:Country><cbc:IdentificationCode>FR</cbc:IdentificationCode></cac:Country>
    </cac:PostalAddress>
    <cac:PartyTaxScheme><cbc:CompanyID>{inv.seller_vat}</cbc:CompanyID><cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme></cac:PartyTaxScheme>
    <cac:PartyLegalEntity><cbc:RegistrationName>{x(inv.seller)}</cbc:RegistrationName></cac:PartyLegalEntity>
  </cac:Party></cac:AccountingSupplierParty>
  <cac:AccountingCustomerParty><cac:Party>
    <cac:PartyTaxScheme><cbc:CompanyID>{inv.buyer_vat}</cbc:CompanyID><cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme></cac:PartyTaxScheme>
    <cac:PartyLegalEntity><cbc:RegistrationName>{x(inv.buyer)}</cbc:RegistrationName></cac:PartyLegalEntity>
  </cac:Party></cac:AccountingCustomerParty>
  {"" if kind == "Invoice" else f"<cac:PaymentMeans><cbc:PaymentMeansCode>58</cbc:PaymentMeansCode><cbc:PaymentDueDate>{iso(inv.due_date)}</cbc:PaymentDueDate></cac:PaymentMeans>"}
  <cac:TaxTotal>
    <cbc:TaxAmount currencyID="{cur}">{inv.tax}</cbc:TaxAmount>
    <cac:TaxSubtotal>
      <cbc:TaxableAmount currencyID="{cur}">{inv.net}</cbc:TaxableAmount>
      <cbc:TaxAmount currencyID="{cur}">{inv.tax}</cbc:TaxAmount>
      <cac:TaxCategory><cbc:ID>S</cbc:ID><cbc:Percent>20</cbc:Percent><cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme></cac:TaxCategory>
    </cac:TaxSubtotal>
  </cac:TaxTotal>
  <cac:LegalMonetaryTotal>
    <cbc:LineExtensionAmount currencyID="{cur}">{inv.net}</cbc:LineExtensionAmount>
    <cbc:TaxExclusiveAmount currencyID="{cur}">{inv.net}</cbc:TaxExclusiveAmount>
    <cbc:TaxInclusiveAmount currencyID="{cur}">{inv.gross}</cbc:TaxInclusiveAmount>
    <cbc:PayableAmount currencyID="{cur}">{inv.gross}</cbc:PayableAmount>
  </cac:LegalMonetaryTotal>{lines}
</{kind}>
""".encode()


def make_einvoice_pdf(path: Path, inv: Invoice = Invoice(), xml: bytes | None = None,
                      name: str = "factur-x.xml") -> Path:
    """A printed invoice (with a text layer) that carries its XML as an attachment, as
    Factur-X and ZUGFeRD PDFs do."""
    import pymupdf

    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)
    for i, line in enumerate(inv.text):
        page.insert_text((60, 80 + 22 * i), line, fontsize=11)
    doc.embfile_add(name, xml if xml is not None else cii_xml(inv), filename=name)
    doc.save(str(path))
    doc.close()
    return path


def make_mail(attachments: list[tuple[str, bytes]], *, subject: str = "Invoices for October",
              text: str = "Please find our invoices attached.", html: str | None = None) -> bytes:
    """An e-mail as a mail program sends it: text (and HTML) alternatives, then the attachments."""
    import mimetypes
    from email.message import EmailMessage

    message = EmailMessage()
    message["From"] = "Moulin Rouge SARL <billing@moulin.example>"
    message["To"] = "accounts@lumiere.example"
    message["Subject"] = subject
    message["Date"] = "Tue, 03 Nov 2026 09:12:00 +0100"
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    for name, data in attachments:
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        maintype, subtype = kind.split("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return message.as_bytes()


def make_msg(path: Path, attachments: list[tuple[str, bytes]], *, subject: str = "Invoices for October",
             body: str = "Please find our invoices attached.") -> Path:
    """An Outlook .msg (an OLE2 file of MAPI properties, as [MS-OXMSG] lays it out), written with
    extract-msg's own OLE writer: the message's class, subject, body and sender, and its
    attachments by value with their long file names."""
    import struct

    from extract_msg import OleWriter

    def variable(tag: int, size: int) -> bytes:  # a string or binary property: its size, the data in a stream
        return struct.pack("<IIII", tag, 6, size, 0)

    def fixed(tag: int, value: int) -> bytes:
        return struct.pack("<IIQ", tag, 6, value)

    ole = OleWriter()
    props = b""
    texts = {0x001A001F: "IPM.Note", 0x0037001F: subject, 0x1000001F: body, 0x0C1A001F: "Moulin Rouge SARL"}
    for tag, text in texts.items():
        data = text.encode("utf-16-le")
        ole.addEntry(f"__substg1.0_{tag:08X}", data)
        props += variable(tag, len(data) + 2)
    header = struct.pack("<8sIIII8s", bytes(8), 0, len(attachments), 0, len(attachments), bytes(8))
    ole.addEntry("__properties_version1.0", header + props)
    ole.addEntry("__nameid_version1.0", storage=True)
    for stream in ("00020102", "00030102", "00040102"):  # the named-property map, empty
        ole.addEntry(f"__nameid_version1.0/__substg1.0_{stream}", b"")
    for i, (name, data) in enumerate(attachments):
        folder = f"__attach_version1.0_#{i:08X}"
        ole.addEntry(folder, storage=True)
        filename = name.encode("utf-16-le")
        ole.addEntry(f"{folder}/__substg1.0_37010102", data)
        ole.addEntry(f"{folder}/__substg1.0_3707001F", filename)
        attachment = (fixed(0x37050003, 1) + fixed(0x0E210003, i)  # attached by value; its number
                      + variable(0x37010102, len(data)) + variable(0x3707001F, len(filename) + 2))
        ole.addEntry(f"{folder}/__properties_version1.0", bytes(8) + attachment)
    ole.write(str(path))
    return path
