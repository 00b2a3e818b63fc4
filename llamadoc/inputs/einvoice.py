"""E-invoices: Factur-X, ZUGFeRD 1.0/2.x and XRechnung XML (CII or UBL 2.1 Invoice/CreditNote),
from a PDF's attachments or as a file of their own, read into exact fields so an invoice
that carries its own data needs no model.

The XML comes from strangers, so it is parsed safely: no DTD (hence no entity expansion
and no external entity), no network, at most MAX_BYTES and MAX_DEPTH elements deep.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from llamadoc.errors import DocumentError

MAX_BYTES = 64 << 20  # an e-invoice with its attached documents (BG-24, base64) stays well below this
MAX_DEPTH = 100

# The attachment names the standards prescribe (ZUGFeRD 1.0 spells it ZUGFeRD-invoice.xml).
KNOWN_NAMES = ("factur-x.xml", "zugferd-invoice.xml", "xrechnung.xml")

_UBL = {
    "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2": "Invoice",
    "urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2": "CreditNote",
}

# CII's element names changed between ZUGFeRD 1.0 (CrossIndustryDocument) and the D16B
# syntax of ZUGFeRD 2.x / Factur-X / XRechnung (CrossIndustryInvoice); the structure did not.
_CII_NAMES = {
    "CrossIndustryInvoice": {
        "context": "ExchangedDocumentContext",
        "document": "ExchangedDocument",
        "transaction": "SupplyChainTradeTransaction",
        "agreement": "ApplicableHeaderTradeAgreement",
        "settlement": "ApplicableHeaderTradeSettlement",
        "summation": "SpecifiedTradeSettlementHeaderMonetarySummation",
        "line_agreement": "SpecifiedLineTradeAgreement",
        "line_delivery": "SpecifiedLineTradeDelivery",
        "line_settlement": "SpecifiedLineTradeSettlement",
        "line_summation": "SpecifiedTradeSettlementLineMonetarySummation",
    },
    "CrossIndustryDocument": {
        "context": "SpecifiedExchangedDocumentContext",
        "document": "HeaderExchangedDocument",
        "transaction": "SpecifiedSupplyChainTradeTransaction",
        "agreement": "ApplicableSupplyChainTradeAgreement",
        "settlement": "ApplicableSupplyChainTradeSettlement",
        "summation": "SpecifiedTradeSettlementMonetarySummation",
        "line_agreement": "SpecifiedSupplyChainTradeAgreement",
        "line_delivery": "SpecifiedSupplyChainTradeDelivery",
        "line_settlement": "SpecifiedSupplyChainTradeSettlement",
        "line_summation": "SpecifiedTradeSettlementMonetarySummation",
    },
}
_CII_PAYMENT = "SpecifiedTradeSettlementPaymentMeans"


@dataclass(frozen=True)
class Line:
    """One invoice line, values exactly as written in the XML."""

    line_id: str | None
    description: str | None
    quantity: str | None
    unit_code: str | None
    unit_price: str | None  # the net price for ``price_basis`` units (1 when absent)
    price_basis: str | None
    amount: str | None  # the line's net amount


@dataclass(frozen=True)
class EInvoice:
    """An e-invoice's header, parties, totals and lines, as the exact strings of its XML.

    Dates are as written: YYYYMMDD (CII format 102) or YYYY-MM-DD (UBL); ``to_fields``
    converts them and the amounts for the invoice schema.
    """

    xml_root: str
    profile: str | None
    invoice_number: str | None
    type_code: str | None
    issue_date: str | None
    due_date: str | None
    seller_name: str | None
    seller_vat_id: str | None
    seller_tax_number: str | None
    seller_address: str | None
    buyer_name: str | None
    buyer_vat_id: str | None
    buyer_address: str | None
    currency: str | None
    line_total: str | None
    tax_basis_total: str | None
    tax_total: str | None
    grand_total: str | None
    due_payable: str | None
    lines: tuple[Line, ...] = ()
    name: str = ""  # the attachment it came from
    iban: str | None = None  # the payee's account (BT-84), when paid by credit transfer
    bic: str | None = None  # its bank (BT-86)

    @property
    def line_count(self) -> int:
        return len(self.lines)

    def to_fields(self) -> dict[str, Any]:
        """The record in the shape of examples/invoice.yaml.

        ``iban`` and ``bic`` are there only when the invoice names an account (the
        schema does not require them). Amounts become floats, not Decimal or strings: the record must validate against a
        schema that says ``number`` and be comparable with a model's JSON, and a float's
        shortest repr gives back the XML's decimal exactly for any amount of up to 15
        significant digits (trailing zeros aside). The exact strings stay on the EInvoice.
        """
        return {
            "invoice_number": self.invoice_number,
            "issue_date": iso_date(self.issue_date),
            "due_date": iso_date(self.due_date),
            "seller": _party(self.seller_name, self.seller_address, self.seller_vat_id or self.seller_tax_number),
            "buyer": _party(self.buyer_name, self.buyer_address, self.buyer_vat_id),
            "currency": self.currency,
            "line_items": [
                {
                    "description": line.description,
                    "quantity": _number(line.quantity),
                    "unit_price": _number(_unit_price(line)),
                    "amount": _number(line.amount),
                }
                for line in self.lines
                # ZUGFeRD 1.0 allows lines that only carry a note: nothing was invoiced on them.
                if (line.description, line.quantity, line.unit_price, line.amount) != (None, None, None, None)
            ],
            # "Total before tax" is the tax basis: line total less document allowances plus charges.
            "net_total": _number(self.tax_basis_total or self.line_total),
            "tax_total": _number(self.tax_total),
            "gross_total": _number(self.grand_total),
        } | {key: value for key, value in (("iban", self.iban), ("bic", self.bic)) if value}


@dataclass(frozen=True)
class Found:
    """A document's e-invoice: the file's name, its XML, and what it says (parsed once)."""

    name: str
    xml: bytes
    invoice: EInvoice


def find(embedded: dict[str, bytes]) -> tuple[str, bytes] | None:
    """The attachment that holds the e-invoice, by its standard name first, then by sniffing
    the root element of any other XML attachment; None when there is none."""
    by_name = {name.lower(): name for name in embedded}
    for known in KNOWN_NAMES:
        if known in by_name:
            name = by_name[known]
            return name, embedded[name]
    for name, data in embedded.items():
        if name.lower().endswith(".xml") and root_kind(data) is not None:
            return name, data
    return None


def parse(xml: bytes, name: str = "") -> EInvoice:
    """Read an e-invoice. Raises DocumentError (one line) when the XML is not well-formed,
    declares a DTD, or is not a CII or UBL invoice."""
    label = name or "the e-invoice XML"
    root = _tree(xml, label)
    kind = _kind(root.tag)
    if kind is None:
        raise DocumentError(f"{label} is not a CII or UBL invoice (its root element is {_local(root.tag)})")
    for element in root.iter():  # paths below name elements by local name: versions differ in namespace
        if isinstance(element.tag, str):
            element.tag = _local(element.tag)
    if kind in _CII_NAMES:
        return _parse_cii(root, _CII_NAMES[kind], name)
    return _parse_ubl(root, kind, name)


def iso_date(value: str | None) -> str | None:
    """YYYY-MM-DD from CII's YYYYMMDD or UBL's YYYY-MM-DD; None for anything else (for
    example CII's month-only format 610), which the schema's date fields cannot hold."""
    if value is None:
        return None
    match = re.fullmatch(r"(\d{4})-?(\d{2})-?(\d{2})", value.strip())
    try:
        return date(*map(int, match.groups())).isoformat() if match else None
    except ValueError:  # 20131345: a date no calendar has
        return None


class _TooDeep(Exception):
    pass


class _Root(Exception):
    """Raised by _FirstElement with the root element's tag: parsing stops there."""


class _Bounded(ET.TreeBuilder):
    """A tree at most MAX_DEPTH elements deep: an invoice is about ten, and a deeper one is
    a way to exhaust the stack of whatever walks the tree."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0

    def start(self, tag: str, attrs: dict[str, str]) -> ET.Element:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _TooDeep
        return super().start(tag, attrs)

    def end(self, tag: str) -> ET.Element:
        self.depth -= 1
        return super().end(tag)


class _FirstElement(ET.TreeBuilder):
    def start(self, tag: str, attrs: dict[str, str]) -> ET.Element:
        raise _Root(tag)


def _parser(target: ET.TreeBuilder) -> ET.XMLParser:
    """defusedxml's parser: it refuses any DTD (an e-invoice never has one), so no entity is
    ever expanded (billion laughs) and no external one fetched, whatever the expat build."""
    from defusedxml.ElementTree import DefusedXMLParser  # imported here: only XML needs it

    return DefusedXMLParser(target=target, forbid_dtd=True)


def _tree(xml: bytes, label: str) -> ET.Element:
    from defusedxml import DefusedXmlException

    if len(xml) > MAX_BYTES:
        raise DocumentError(f"{label} holds {len(xml):,} bytes of XML, more than the {MAX_BYTES:,} an e-invoice "
                            "may have; refused")
    parser = _parser(_Bounded())
    try:
        parser.feed(xml)
        return parser.close()
    except DefusedXmlException:
        raise DocumentError(f"{label} declares a DTD, which an e-invoice never does; refused") from None
    except _TooDeep:
        raise DocumentError(f"{label} nests elements more than {MAX_DEPTH} deep, which an e-invoice never "
                            "does; refused") from None
    except ET.ParseError as err:
        raise DocumentError(f"{label} is not well-formed XML ({err})") from None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _kind(tag: str) -> str | None:
    namespace, _, local = tag[1:].partition("}") if tag.startswith("{") else ("", "", tag)
    if local in _CII_NAMES:
        return local
    return _UBL.get(namespace) if _UBL.get(namespace) == local else None


def root_kind(data: bytes) -> str | None:
    """The kind of invoice an XML holds ('CrossIndustryInvoice', 'Invoice', ...), from its
    first element only; None for any other XML, or anything that is not XML."""
    from defusedxml import DefusedXmlException

    parser = _parser(_FirstElement())
    try:
        parser.feed(data[:65536])  # the root element comes long before this
    except _Root as root:
        return _kind(str(root.args[0]))
    except (ET.ParseError, DefusedXmlException):
        pass
    return None


def _text(element: ET.Element | None, path: str = ".") -> str | None:
    found = element.find(path) if element is not None else None
    if found is None or found.text is None or not found.text.strip():
        return None
    return found.text.strip()


def _amount_in(element: ET.Element | None, tag: str, currency: str | None) -> str | None:
    """An amount that may be given twice, in the invoice and in the tax currency
    (ZUGFeRD EXTENDED, BT-110/BT-111): the invoice currency's, else the first."""
    if element is None:
        return None
    found = element.findall(tag)
    for amount in found:
        if amount.get("currencyID") == currency:
            return _text(amount)
    return _text(found[0]) if found else None


def _parse_cii(root: ET.Element, names: dict[str, str], name: str) -> EInvoice:
    document = root.find(names["document"])
    transaction = root.find(names["transaction"])
    agreement = transaction.find(names["agreement"]) if transaction is not None else None
    settlement = transaction.find(names["settlement"]) if transaction is not None else None
    summation = settlement.find(names["summation"]) if settlement is not None else None
    seller = agreement.find("SellerTradeParty") if agreement is not None else None
    buyer = agreement.find("BuyerTradeParty") if agreement is not None else None
    currency = _text(settlement, "InvoiceCurrencyCode")
    lines = transaction.findall("IncludedSupplyChainTradeLineItem") if transaction is not None else []
    return EInvoice(
        xml_root=root.tag,
        profile=_text(root, f"{names['context']}/GuidelineSpecifiedDocumentContextParameter/ID"),
        invoice_number=_text(document, "ID"),
        type_code=_text(document, "TypeCode"),
        issue_date=_text(document, "IssueDateTime/DateTimeString"),
        due_date=_text(settlement, "SpecifiedTradePaymentTerms/DueDateDateTime/DateTimeString"),
        seller_name=_text(seller, "Name"),
        seller_vat_id=_text(seller, "SpecifiedTaxRegistration/ID[@schemeID='VA']"),
        seller_tax_number=_text(seller, "SpecifiedTaxRegistration/ID[@schemeID='FC']"),
        seller_address=_cii_address(seller),
        buyer_name=_text(buyer, "Name"),
        buyer_vat_id=_text(buyer, "SpecifiedTaxRegistration/ID[@schemeID='VA']"),
        buyer_address=_cii_address(buyer),
        currency=currency,
        line_total=_text(summation, "LineTotalAmount"),
        tax_basis_total=_text(summation, "TaxBasisTotalAmount"),
        tax_total=_amount_in(summation, "TaxTotalAmount", currency),
        grand_total=_text(summation, "GrandTotalAmount"),
        due_payable=_text(summation, "DuePayableAmount"),
        lines=tuple(_cii_line(line, names) for line in lines),
        name=name,
        iban=_compact(_text(settlement, f"{_CII_PAYMENT}/PayeePartyCreditorFinancialAccount/IBANID")),
        bic=_text(settlement, f"{_CII_PAYMENT}/PayeeSpecifiedCreditorFinancialInstitution/BICID"),
    )


def _cii_line(item: ET.Element, names: dict[str, str]) -> Line:
    price = item.find(f"{names['line_agreement']}/NetPriceProductTradePrice")
    quantity = item.find(f"{names['line_delivery']}/BilledQuantity")
    return Line(
        line_id=_text(item, "AssociatedDocumentLineDocument/LineID"),
        description=_text(item, "SpecifiedTradeProduct/Name"),
        quantity=_text(quantity),
        unit_code=quantity.get("unitCode") if quantity is not None else None,
        unit_price=_text(price, "ChargeAmount"),
        price_basis=_text(price, "BasisQuantity"),
        amount=_text(item, f"{names['line_settlement']}/{names['line_summation']}/LineTotalAmount"),
    )


def _cii_address(party: ET.Element | None) -> str | None:
    address = party.find("PostalTradeAddress") if party is not None else None
    city = " ".join(filter(None, (_text(address, "PostcodeCode"), _text(address, "CityName"))))
    parts = [_text(address, tag) for tag in ("LineOne", "LineTwo", "LineThree")]
    return _join([*parts, city, _text(address, "CountryID")])


def _parse_ubl(root: ET.Element, kind: str, name: str) -> EInvoice:
    seller = root.find("AccountingSupplierParty/Party")
    buyer = root.find("AccountingCustomerParty/Party")
    total = root.find("LegalMonetaryTotal")
    currency = _text(root, "DocumentCurrencyCode")
    line_tag, quantity_tag = ("InvoiceLine", "InvoicedQuantity") if kind == "Invoice" else (
        "CreditNoteLine", "CreditedQuantity")
    tax_totals = root.findall("TaxTotal")
    tax_amounts = [t.find("TaxAmount") for t in tax_totals]
    tax_total = next((_text(a) for a in tax_amounts if a is not None and a.get("currencyID") == currency), None)
    return EInvoice(
        xml_root=kind,
        profile=_text(root, "CustomizationID"),
        invoice_number=_text(root, "ID"),
        type_code=_text(root, f"{kind}TypeCode"),
        issue_date=_text(root, "IssueDate"),
        due_date=_text(root, "DueDate") or _text(root, "PaymentMeans/PaymentDueDate"),
        seller_name=_ubl_name(seller),
        seller_vat_id=_ubl_tax_id(seller, vat=True),
        seller_tax_number=_ubl_tax_id(seller, vat=False),
        seller_address=_ubl_address(seller),
        buyer_name=_ubl_name(buyer),
        buyer_vat_id=_ubl_tax_id(buyer, vat=True),
        buyer_address=_ubl_address(buyer),
        currency=currency,
        line_total=_text(total, "LineExtensionAmount"),
        tax_basis_total=_text(total, "TaxExclusiveAmount"),
        tax_total=tax_total or (_text(tax_amounts[0]) if tax_amounts else None),
        grand_total=_text(total, "TaxInclusiveAmount"),
        due_payable=_text(total, "PayableAmount"),
        lines=tuple(_ubl_line(line, quantity_tag) for line in root.findall(line_tag)),
        name=name,
        iban=_compact(_text(root, "PaymentMeans/PayeeFinancialAccount/ID")),
        bic=_text(root, "PaymentMeans/PayeeFinancialAccount/FinancialInstitutionBranch/ID"),
    )


def _ubl_line(item: ET.Element, quantity_tag: str) -> Line:
    quantity = item.find(quantity_tag)
    return Line(
        line_id=_text(item, "ID"),
        description=_text(item, "Item/Name"),
        quantity=_text(quantity),
        unit_code=quantity.get("unitCode") if quantity is not None else None,
        unit_price=_text(item, "Price/PriceAmount"),
        price_basis=_text(item, "Price/BaseQuantity"),
        amount=_text(item, "LineExtensionAmount"),
    )


def _ubl_name(party: ET.Element | None) -> str | None:
    return _text(party, "PartyLegalEntity/RegistrationName") or _text(party, "PartyName/Name")


def _ubl_tax_id(party: ET.Element | None, vat: bool) -> str | None:
    """PartyTaxScheme/CompanyID: the VAT id when its scheme is VAT, else a tax number (BT-32)."""
    for scheme in party.findall("PartyTaxScheme") if party is not None else []:
        if (_text(scheme, "TaxScheme/ID") == "VAT") == vat:
            return _text(scheme, "CompanyID")
    return None


def _ubl_address(party: ET.Element | None) -> str | None:
    address = party.find("PostalAddress") if party is not None else None
    city = " ".join(filter(None, (_text(address, "PostalZone"), _text(address, "CityName"))))
    parts = [_text(address, tag) for tag in ("StreetName", "AdditionalStreetName", "AddressLine/Line")]
    return _join([*parts, city, _text(address, "Country/IdentificationCode")])


def _compact(iban: str | None) -> str | None:
    """An IBAN without the spaces some senders group it with."""
    return iban.replace(" ", "") if iban else None


def _join(parts: list[str | None]) -> str | None:
    kept = [p for p in parts if p]
    return ", ".join(kept) or None


def _party(name: str | None, address: str | None, vat_id: str | None) -> dict[str, str | None] | None:
    if name is None and address is None and vat_id is None:
        return None
    return {"name": name, "address": address, "vat_id": vat_id}


def _unit_price(line: Line) -> str | None:
    """The price of one unit: CII and UBL may price per basis quantity (e.g. per 100)."""
    price, basis = _decimal(line.unit_price), _decimal(line.price_basis)
    if price is None:
        return None
    if basis is None or basis in (0, 1):
        return line.unit_price
    return str(price / basis)


def _decimal(value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(value)
    except InvalidOperation:
        return None


def _number(value: str | None) -> float | None:
    exact = _decimal(value)
    return float(exact) if exact is not None and exact.is_finite() else None


def field_paths(invoice: EInvoice) -> dict[str, str]:
    """Where each value of ``invoice.to_fields()`` stands in the XML, by the same paths as the
    record's leaves (``seller.vat_id``, ``line_items[2].amount``): XPath with local names,
    lines counted from 1 as XPath does. A value read from one of two places names both."""
    if invoice.xml_root in _CII_NAMES:
        return _cii_paths(invoice, _CII_NAMES[invoice.xml_root])
    return _ubl_paths(invoice)


def _kept_lines(invoice: EInvoice) -> list[int]:
    """The 1-based positions of the lines to_fields keeps (not the note-only ones)."""
    return [n for n, line in enumerate(invoice.lines, 1)
            if (line.description, line.quantity, line.unit_price, line.amount) != (None, None, None, None)]


def _cii_paths(invoice: EInvoice, names: dict[str, str]) -> dict[str, str]:
    root = f"/{invoice.xml_root}"
    doc = f"{root}/{names['document']}"
    trade = f"{root}/{names['transaction']}"
    agreement, settlement = f"{trade}/{names['agreement']}", f"{trade}/{names['settlement']}"
    summation = f"{settlement}/{names['summation']}"
    paths = {
        "invoice_number": f"{doc}/ID",
        "issue_date": f"{doc}/IssueDateTime/DateTimeString",
        "due_date": f"{settlement}/SpecifiedTradePaymentTerms/DueDateDateTime/DateTimeString",
        "currency": f"{settlement}/InvoiceCurrencyCode",
        "net_total": f"{summation}/{'TaxBasisTotalAmount' if invoice.tax_basis_total else 'LineTotalAmount'}",
        "tax_total": f"{summation}/TaxTotalAmount",
        "gross_total": f"{summation}/GrandTotalAmount",
        "iban": f"{settlement}/{_CII_PAYMENT}/PayeePartyCreditorFinancialAccount/IBANID",
        "bic": f"{settlement}/{_CII_PAYMENT}/PayeeSpecifiedCreditorFinancialInstitution/BICID",
    }
    for role, party, vat in (("seller", "SellerTradeParty", invoice.seller_vat_id),
                             ("buyer", "BuyerTradeParty", invoice.buyer_vat_id)):
        scheme = "VA" if vat or role == "buyer" else "FC"
        paths |= {f"{role}.name": f"{agreement}/{party}/Name",
                  f"{role}.address": f"{agreement}/{party}/PostalTradeAddress",
                  f"{role}.vat_id": f"{agreement}/{party}/SpecifiedTaxRegistration/ID[@schemeID='{scheme}']"}
    for i, n in enumerate(_kept_lines(invoice)):
        line = f"{trade}/IncludedSupplyChainTradeLineItem[{n}]"
        paths |= {
            f"line_items[{i}].description": f"{line}/SpecifiedTradeProduct/Name",
            f"line_items[{i}].quantity": f"{line}/{names['line_delivery']}/BilledQuantity",
            f"line_items[{i}].unit_price": f"{line}/{names['line_agreement']}/NetPriceProductTradePrice/ChargeAmount",
            f"line_items[{i}].amount":
                f"{line}/{names['line_settlement']}/{names['line_summation']}/LineTotalAmount",
        }
    return paths


def _ubl_paths(invoice: EInvoice) -> dict[str, str]:
    kind = invoice.xml_root
    root = f"/{kind}"
    total = f"{root}/LegalMonetaryTotal"
    paths = {
        "invoice_number": f"{root}/ID",
        "issue_date": f"{root}/IssueDate",
        "due_date": f"{root}/DueDate | {root}/PaymentMeans/PaymentDueDate",
        "currency": f"{root}/DocumentCurrencyCode",
        "net_total": f"{total}/{'TaxExclusiveAmount' if invoice.tax_basis_total else 'LineExtensionAmount'}",
        "tax_total": f"{root}/TaxTotal/TaxAmount",
        "gross_total": f"{total}/TaxInclusiveAmount",
        "iban": f"{root}/PaymentMeans/PayeeFinancialAccount/ID",
        "bic": f"{root}/PaymentMeans/PayeeFinancialAccount/FinancialInstitutionBranch/ID",
    }
    for role, party in (("seller", "AccountingSupplierParty"), ("buyer", "AccountingCustomerParty")):
        base = f"{root}/{party}/Party"
        paths |= {f"{role}.name": f"{base}/PartyLegalEntity/RegistrationName | {base}/PartyName/Name",
                  f"{role}.address": f"{base}/PostalAddress",
                  f"{role}.vat_id": f"{base}/PartyTaxScheme/CompanyID"}
    line_tag, quantity_tag = ("InvoiceLine", "InvoicedQuantity") if kind == "Invoice" else (
        "CreditNoteLine", "CreditedQuantity")
    for i, n in enumerate(_kept_lines(invoice)):
        line = f"{root}/{line_tag}[{n}]"
        paths |= {f"line_items[{i}].description": f"{line}/Item/Name",
                  f"line_items[{i}].quantity": f"{line}/{quantity_tag}",
                  f"line_items[{i}].unit_price": f"{line}/Price/PriceAmount",
                  f"line_items[{i}].amount": f"{line}/LineExtensionAmount"}
    return paths
