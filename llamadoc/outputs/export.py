"""Export a finished batch: the result files of an -o folder as CSV, XLSX or JSONL tables (one
row per invoice, one per line item, each value with its page, confidence and review state),
or as e-invoices (UBL 2.1 or UN/CEFACT CII) for the invoices whose fields are complete.

CII is written by drafthorse, which checks it against the Factur-X EN 16931 profile's XML
Schema; an invoice that fails it is not written, and says why. UBL is written with the
standard library's ElementTree: no well-kept Python library writes UBL (python-ubl is an
alpha without a public repository), and none checks EN 16931's rules for it, so a UBL
file is checked by reading it back. Both carry one VAT breakdown at the invoice's overall
rate (the fields have no rate per line). An e-invoice whose fields came from its own XML
exports to XML that reads back to the same values.

The values come from documents nobody vouches for, and the tables are opened in
spreadsheets: a text cell that a spreadsheet would run as a formula (=, +, -, @ first, and
not a plain number) is written as text, behind a ' in CSV (OWASP's rule for CSV injection).
Each export replaces its files whole, and an e-invoice written by an earlier export that
this one leaves out is removed, so the folder never holds a file the batch no longer backs.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from llamadoc.codec import ForeignResult, from_dict
from llamadoc.errors import LlamadocError, OutputError, UsageError, WriteFailed
from llamadoc.evidence import checks
from llamadoc.evidence.validate import _currency
from llamadoc.files import write_atomic, write_together
from llamadoc.inputs import einvoice
from llamadoc.outputs.decisions import EXPORT_MARK, Decision, Decisions, Entry, entries, result_files, reviewed
from llamadoc.results import DocumentResult, Status, Value

FORMATS = ("csv", "xlsx", "jsonl", "ubl", "cii")
REQUIRED = ("invoice_number", "issue_date", "seller.name", "buyer.name", "currency", "net_total", "tax_total",
            "gross_total")


@dataclass
class Exported:
    """What an export wrote, and the documents it left out with the reason."""

    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "source: why"
    rows: int = 0
    reviewed: int = 0  # rows a person approved or rejected on the review page
    notes: list[str] = field(default_factory=list)  # worth knowing, nothing left out


# -- reading a finished batch -------------------------------------------------------------------

def load_results(folder: Path) -> tuple[list[DocumentResult], list[str]]:
    """The results of an -o folder (its .json and .jsonl files) and, for each file that is not
    one of this version's results, why it was left out."""
    found, problems = load_batch(folder)
    return [doc for _, doc in found], problems


def load_batch(folder: Path) -> tuple[list[tuple[Entry, DocumentResult]], list[str]]:
    """load_results, each result with where it lies in the folder (what a review decision names)."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder of results", hint="give the -o folder of a finished batch")
    found: list[tuple[Entry, DocumentResult]] = []
    problems: list[str] = []
    for path in result_files(folder):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            problems.append(f"{path}: cannot be read ({err})")
            continue
        for entry in entries(folder, path, text):
            doc, why = _result(entry.text)
            if doc is not None:
                found.append((entry, doc))
            else:
                problems.append(f"{path}: {why}")
    return found, problems


def _result(text: str) -> tuple[DocumentResult | None, str]:
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        return None, "not JSON"
    if not isinstance(body, dict) or "schema_version" not in body:
        return None, "not a llamadoc result"
    if body["schema_version"] != 3:
        return None, f"a result of schema version {body['schema_version']}; run the batch again to export it"
    body.pop("pages_read", None)
    try:
        return from_dict(body), ""
    except ForeignResult as err:
        return None, f"not a result of this version ({err})"


def invoices(docs: Iterable[DocumentResult]) -> Iterator[DocumentResult]:
    """The documents with fields, once each (a document read twice under two names counts once)."""
    for doc in docs:
        if doc.fields is not None and doc.status in (Status.OK, Status.PARTIAL) and doc.duplicate_of is None:
            yield doc


# -- tables -------------------------------------------------------------------------------------

def tables(docs: list[DocumentResult], decided: dict[str, Decision] | None = None
           ) -> tuple[list[list[Any]], list[list[Any]]]:
    """Two tables, each a header row then rows: one row per invoice, one per line item. Each
    value has three columns beside it: its page, its confidence, and what a reviewer is asked
    about it (empty when nothing). ``decided``: the review's decisions by source, whose
    approved values the documents already carry (decisions.reviewed); each row says whether
    a person reviewed it, who, when, and their note."""
    decided = decided or {}
    head_paths: list[str] = []
    item_keys: list[str] = []
    for doc in docs:
        for v in doc.values:
            item = _item(v.path)
            if item is None and v.path not in head_paths:
                head_paths.append(v.path)
            elif item is not None and item[1] not in item_keys:
                item_keys.append(item[1])
    header = ["source", "status", "needs_review", "review", "duplicates", "reviewed", "reviewed_by", "reviewed_at",
              "review_note"]
    header += [c for p in head_paths for c in (p, f"{p} page", f"{p} confidence", f"{p} review")]
    rows: list[list[Any]] = [header]
    line_header = ["source", "invoice_number", "line"] + [c for k in item_keys for c in (
        k, f"{k} page", f"{k} confidence", f"{k} review")]
    lines: list[list[Any]] = [line_header]
    for doc in docs:
        by_path = {v.path: v for v in doc.values}
        made = decided.get(doc.source)
        reasons = _reasons(doc, made)
        row: list[Any] = [doc.source, doc.status.value, doc.needs_review, "; ".join(doc.review),
                          "; ".join(doc.duplicates), *_decision_cells(made)]
        for p in head_paths:
            row += _cells(by_path.get(p), reasons.get(p))
        rows.append(row)
        items = doc.fields.get("line_items") if isinstance(doc.fields, dict) else None
        count = len(items) if isinstance(items, list) else 0  # "see attached" is no list of lines
        for n in range(count):
            line: list[Any] = [doc.source, (doc.fields or {}).get("invoice_number"), n + 1]
            for k in item_keys:
                path = f"line_items[{n}].{k}"
                line += _cells(by_path.get(path), reasons.get(path))
            lines.append(line)
    return rows, lines


def _item(path: str) -> tuple[int, str] | None:
    found = re.fullmatch(r"line_items\[(\d+)\]\.(.+)", path)
    return (int(found.group(1)), found.group(2)) if found else None


def _reasons(doc: DocumentResult, made: Decision | None = None) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    if made is not None and made.decision == "approved":
        for path, change in made.changed.items():
            out.setdefault(path, []).append(f"changed in review from {json.dumps(change.get('old'))}")
    for reason in doc.review:
        path, sep, why = reason.partition(": ")
        if sep:
            out.setdefault(path, []).append(why)
    return {p: "; ".join(w) for p, w in out.items()}


def _decision_cells(made: Decision | None) -> list[Any]:
    return [made.decision, made.by, made.at, made.note] if made is not None else ["", "", "", ""]


def _cells(value: Value | None, review: str | None) -> list[Any]:
    if value is None:
        return [None, None, None, None]
    shown = value.value if not isinstance(value.value, dict | list) else json.dumps(value.value)
    return [shown, value.evidence.page, value.confidence, review or ""]


def write_csv(docs: list[DocumentResult], dest: Path, decided: dict[str, Decision] | None = None) -> list[Path]:
    rows, lines = tables(docs, decided)
    files = {}
    for name, table in (("invoices.csv", rows), ("line_items.csv", lines)):
        text = io.StringIO(newline="")
        csv.writer(text).writerows([[_csv_cell(c) for c in row] for row in table])
        files[dest / name] = text.getvalue().encode("utf-8")
    write_together(files)
    return list(files)


_FORMULA = re.compile(r"[=+\-@\t\r]")
_NUMBER = re.compile(r"[+-]?\d[\d.,' ]*")


def _csv_cell(cell: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula, behind a ' (-7,90 stays a number)."""
    if isinstance(cell, str) and _FORMULA.match(cell) and not _NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def write_xlsx(docs: list[DocumentResult], dest: Path, decided: dict[str, Decision] | None = None) -> list[Path]:
    try:
        from openpyxl import Workbook  # imported here: only --to xlsx needs it
        from openpyxl.cell import WriteOnlyCell
        from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
    except ImportError:
        raise UsageError("--to xlsx needs openpyxl, which is not installed",
                         hint="pip install 'llamadoc[export]'") from None
    rows, lines = tables(docs, decided)
    book = Workbook(write_only=True)
    for title, table in (("invoices", rows), ("line items", lines)):
        sheet = book.create_sheet(title)
        for row in table:
            cells: list[Any] = []
            for value in row:
                if isinstance(value, str):
                    # XLSX cannot hold control characters; openpyxl makes "=..." a live formula
                    cell = WriteOnlyCell(sheet, value=ILLEGAL_CHARACTERS_RE.sub("\ufffd", value))
                    cell.data_type = "s"
                    cells.append(cell)
                else:
                    cells.append(value)
            sheet.append(cells)
    data = io.BytesIO()
    book.save(data)
    path = dest / "invoices.xlsx"
    write_atomic(path, data.getvalue())
    return [path]


def write_jsonl(docs: list[DocumentResult], dest: Path, decided: dict[str, Decision] | None = None) -> list[Path]:
    """One line per invoice: its fields, and each value's page, confidence and review state."""
    path = dest / "invoices.jsonl"
    lines = []
    for doc in docs:
        made = (decided or {}).get(doc.source)
        reasons = _reasons(doc, made)
        reviewed_ = None if made is None else {"decision": made.decision, "by": made.by, "at": made.at,
                                               "note": made.note, "changed": made.changed}
        line = {"source": doc.source, "status": doc.status.value, "needs_review": doc.needs_review,
                "review": doc.review, "duplicates": doc.duplicates, "reviewed": reviewed_, "fields": doc.fields,
                "values": {v.path: {"page": v.evidence.page, "confidence": v.confidence,
                                    "review": reasons.get(v.path, "")} for v in doc.values}}
        lines.append(json.dumps(line, ensure_ascii=False) + "\n")
    write_atomic(path, "".join(lines))
    return [path]


# -- e-invoices ---------------------------------------------------------------------------------

def incomplete(fields: dict[str, Any]) -> str | None:
    """Why a record cannot be an e-invoice (a field missing or not of its kind, or its amounts
    not adding up), or None."""
    missing = [p for p in REQUIRED if _get(fields, p) in (None, "")]
    if missing:
        return f"no {', '.join(missing)}"
    items = fields.get("line_items") or []
    if not isinstance(items, list) or not items or any(
            not isinstance(i, dict) or i.get("amount") is None or not i.get("description") for i in items):
        return "no line items with a description and an amount"
    if einvoice.iso_date(str(fields["issue_date"])) is None:
        return f"issue_date {fields['issue_date']!r} is not a date"
    if _iso_currency(fields["currency"]) is None:
        return f"currency {fields['currency']!r} is not one ISO 4217 currency"
    for path, value, kind in _typed(fields, items):
        if value is None:
            continue
        if kind == "amount" and _decimal(value) is None:
            return f"{path} {value!r} is not one clear amount"
        if kind != "amount" and (isinstance(value, bool) or not isinstance(value, str | int if kind == "id" else str)):
            return f"{path} is {_kind_of(value)}, not text"
        control = _NOT_XML.search(value) if isinstance(value, str) else None
        if control is not None:
            return f"{path} holds the control character U+{ord(control.group()):04X}, which XML cannot hold"
    failed = [c.detail for c in checks.arithmetic(fields) if c.status == "fail"]
    if failed:
        return failed[0]
    return None


# What XML 1.0 cannot carry (and so neither UBL nor CII can).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_PARTY = ("name", "address", "vat_id")


def _typed(fields: dict[str, Any], items: list[dict[str, Any]]) -> Iterator[tuple[str, Any, str]]:
    """The values an e-invoice is written from, each with its path and kind."""
    for key in ("net_total", "tax_total", "gross_total"):
        yield key, fields[key], "amount"
    yield "invoice_number", fields["invoice_number"], "id"  # 2026017 is as good as "2026017"
    for key in ("iban", "bic"):
        yield key, fields.get(key), "text"
    for role in ("seller", "buyer"):
        party = fields.get(role)
        if not isinstance(party, dict):
            continue  # its name is missing, which REQUIRED has said
        for key in _PARTY:
            yield f"{role}.{key}", party.get(key), "text"
    for n, item in enumerate(items):
        yield f"line_items[{n}].description", item["description"], "text"
        for key in ("amount", "unit_price", "quantity"):
            yield f"line_items[{n}].{key}", item.get(key), "amount"


def _kind_of(value: Any) -> str:
    names = {dict: "an object", list: "a list", bool: "true or false", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _get(fields: dict[str, Any], path: str) -> Any:
    node: Any = fields
    for key in path.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _decimal(value: Any) -> Decimal | None:
    """An amount or quantity as a decimal: a number as written (1234.5), or text as its locale
    prints it ("1.234,50"); None when it is no one finite number an invoice holds (10^15 or more
    is a model's runaway digits, which no e-invoice amount is)."""
    exact = _read_decimal(value)
    return exact if exact is None or not exact or exact.adjusted() < 15 else None


def _read_decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Decimal):  # a sum of amounts already read
        return value if value.is_finite() else None
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else None
    return checks._amount(value) if isinstance(value, str) else None


def _money(value: Any) -> Decimal:
    exact = _decimal(value)
    if exact is None:  # incomplete() has refused the record before this is asked
        raise OutputError(f"{value!r} is not one clear amount")
    return exact.quantize(Decimal("0.01"), ROUND_HALF_UP) if exact.as_tuple().exponent >= -2 else exact  # type: ignore[operator]


def _quantity(value: Any) -> Decimal:
    """A line's quantity as a plain decimal (10, not 1E+1): 1 when the record has none."""
    exact = _decimal(value) if value is not None else Decimal(1)
    if exact is None:
        raise OutputError(f"quantity {value!r} is not one clear number")
    return exact.quantize(Decimal(1)) if exact == exact.to_integral_value() else exact


def _iso_currency(value: Any) -> str | None:
    """The ISO 4217 code of a currency written as its code or a sign only it uses (€ is EUR)."""
    found = _currency("currency", value)
    return str(found.data["iso"]) if found.status == "pass" else None


def _rate(fields: dict[str, Any]) -> Decimal:
    net, tax = _money(fields["net_total"]), _money(fields["tax_total"])
    return (tax * 100 / net).quantize(Decimal("0.01"), ROUND_HALF_UP) if net else Decimal(0)


@dataclass(frozen=True)
class _Address:
    lines: tuple[str, ...]
    postcode: str | None
    city: str | None
    country: str


def _address(text: str, vat_id: str | None) -> _Address:
    """'Street 1, 10115 Berlin, DE' -> its parts as einvoice.py joins them back; the country
    from the address, else the VAT ID's prefix."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    country = parts.pop() if parts and re.fullmatch(r"[A-Z]{2}", parts[-1]) else None
    postcode = city = None
    if parts:
        found = re.fullmatch(r"(\S*\d\S*)\s+(.+)", parts[-1])
        if found:
            postcode, city = found.groups()
            parts.pop()
    prefix = (vat_id or "")[:2].upper()
    return _Address(tuple(parts[:3]), postcode, city, country or (prefix if prefix.isalpha() else "") or "DE")


def to_cii(fields: dict[str, Any]) -> bytes:
    """A Factur-X / ZUGFeRD EN 16931 CII invoice, checked against its XML Schema by drafthorse."""
    try:
        from drafthorse.models.accounting import ApplicableTradeTax
        from drafthorse.models.document import Document
        from drafthorse.models.party import TaxRegistration
        from drafthorse.models.payment import PaymentMeans, PaymentTerms
        from drafthorse.models.tradelines import LineItem
    except ImportError:
        raise UsageError("--to cii needs drafthorse, which is not installed",
                         hint="pip install 'llamadoc[export]'") from None
    doc = Document()
    doc.context.guideline_parameter.id = "urn:cen.eu:en16931:2017"
    doc.header.id = str(fields["invoice_number"])
    doc.header.type_code = "380"
    doc.header.issue_date_time = date.fromisoformat(einvoice.iso_date(str(fields["issue_date"])) or "")
    currency = _iso_currency(fields["currency"]) or ""
    for role, party in (("seller", doc.trade.agreement.seller), ("buyer", doc.trade.agreement.buyer)):
        given = fields.get(role) or {}
        party.name = given.get("name")
        if given.get("address"):  # a record without one keeps none: it reads back as it was
            where = _address(given["address"], given.get("vat_id"))
            for attr, line in zip(("line_one", "line_two", "line_three"), where.lines, strict=False):
                setattr(party.address, attr, line)
            if where.postcode:
                party.address.postcode = where.postcode
            if where.city:
                party.address.city_name = where.city
            party.address.country_id = where.country
        if given.get("vat_id"):
            party.tax_registrations.add(TaxRegistration(id=("VA", given["vat_id"])))
    settlement = doc.trade.settlement
    settlement.currency_code = currency
    if fields.get("iban"):
        means = PaymentMeans()
        means.type_code = "58"  # SEPA credit transfer
        means.payee_account.iban = fields["iban"]
        if fields.get("bic"):
            means.payee_institution.bic = fields["bic"]
        settlement.payment_means.add(means)
    due = einvoice.iso_date(str(fields.get("due_date") or ""))
    if due:
        terms = PaymentTerms()
        terms.due = date.fromisoformat(due)
        settlement.terms.add(terms)
    rate = _rate(fields)
    category = "S" if rate else "Z"
    for n, item in enumerate(fields["line_items"], 1):
        line = LineItem()
        line.document.line_id = str(n)
        line.product.name = item["description"]
        if item.get("unit_price") is not None:
            line.agreement.net.amount = _money(item["unit_price"])
        line.delivery.billed_quantity = (_quantity(item.get("quantity")), "C62")
        line.settlement.trade_tax.type_code = "VAT"
        line.settlement.trade_tax.category_code = category
        line.settlement.trade_tax.rate_applicable_percent = rate
        line.settlement.monetary_summation.total_amount = _money(item["amount"])
        doc.trade.items.add(line)
    tax = ApplicableTradeTax()
    tax.calculated_amount, tax.basis_amount = _money(fields["tax_total"]), _money(fields["net_total"])
    tax.type_code, tax.category_code, tax.rate_applicable_percent = "VAT", category, rate
    settlement.trade_tax.add(tax)
    total = settlement.monetary_summation
    total.line_total = sum((_money(i["amount"]) for i in fields["line_items"]), Decimal(0))
    total.tax_basis_total = _money(fields["net_total"])
    total.tax_total = (_money(fields["tax_total"]), currency)
    total.grand_total = _money(fields["gross_total"])
    total.due_amount = _money(fields["gross_total"])
    try:
        return bytes(doc.serialize(schema="FACTUR-X_EN16931"))
    except Exception as err:  # drafthorse raises lxml's and its own errors on what breaks the schema
        raise OutputError(f"the invoice breaks the EN 16931 CII schema: {' '.join(str(err).split())[:200]}") \
            from None


_UBL = "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"
_CAC = "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
_CBC = "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"


def to_ubl(fields: dict[str, Any]) -> bytes:
    """A UBL 2.1 Invoice with the EN 16931 customisation, its elements in the schema's order."""
    import xml.etree.ElementTree as ET

    ET.register_namespace("", _UBL)
    ET.register_namespace("cac", _CAC)
    ET.register_namespace("cbc", _CBC)
    root = ET.Element(f"{{{_UBL}}}Invoice")
    currency = _iso_currency(fields["currency"]) or ""

    def cbc(parent: ET.Element, tag: str, text: Any, **attrs: str) -> ET.Element:
        e = ET.SubElement(parent, f"{{{_CBC}}}{tag}", attrs)
        e.text = str(text)
        return e

    def cac(parent: ET.Element, tag: str) -> ET.Element:
        return ET.SubElement(parent, f"{{{_CAC}}}{tag}")

    def amount(parent: ET.Element, tag: str, value: Any) -> None:
        cbc(parent, tag, _money(value), currencyID=currency)

    cbc(root, "CustomizationID", "urn:cen.eu:en16931:2017")
    cbc(root, "ID", fields["invoice_number"])
    cbc(root, "IssueDate", einvoice.iso_date(str(fields["issue_date"])))
    due = einvoice.iso_date(str(fields.get("due_date") or ""))
    if due:
        cbc(root, "DueDate", due)
    cbc(root, "InvoiceTypeCode", "380")
    cbc(root, "DocumentCurrencyCode", currency)
    for role, tag in (("seller", "AccountingSupplierParty"), ("buyer", "AccountingCustomerParty")):
        given = fields.get(role) or {}
        party = cac(cac(root, tag), "Party")
        if given.get("address"):
            where = _address(given["address"], given.get("vat_id"))
            postal = cac(party, "PostalAddress")
            if where.lines:
                cbc(postal, "StreetName", where.lines[0])
            if len(where.lines) > 1:
                cbc(postal, "AdditionalStreetName", where.lines[1])
            if where.city:
                cbc(postal, "CityName", where.city)
            if where.postcode:
                cbc(postal, "PostalZone", where.postcode)
            if len(where.lines) > 2:
                cbc(cac(postal, "AddressLine"), "Line", where.lines[2])
            cbc(cac(postal, "Country"), "IdentificationCode", where.country)
        if given.get("vat_id"):
            scheme = cac(party, "PartyTaxScheme")
            cbc(scheme, "CompanyID", given["vat_id"])
            cbc(cac(scheme, "TaxScheme"), "ID", "VAT")
        cbc(cac(party, "PartyLegalEntity"), "RegistrationName", given.get("name"))
    if fields.get("iban"):
        means = cac(root, "PaymentMeans")
        cbc(means, "PaymentMeansCode", "58")
        account = cac(means, "PayeeFinancialAccount")
        cbc(account, "ID", fields["iban"])
        if fields.get("bic"):
            cbc(cac(account, "FinancialInstitutionBranch"), "ID", fields["bic"])
    rate = _rate(fields)
    category = "S" if rate else "Z"
    total_tax = cac(root, "TaxTotal")
    amount(total_tax, "TaxAmount", fields["tax_total"])
    sub = cac(total_tax, "TaxSubtotal")
    amount(sub, "TaxableAmount", fields["net_total"])
    amount(sub, "TaxAmount", fields["tax_total"])
    kind = cac(sub, "TaxCategory")
    cbc(kind, "ID", category)
    cbc(kind, "Percent", rate)
    cbc(cac(kind, "TaxScheme"), "ID", "VAT")
    legal = cac(root, "LegalMonetaryTotal")
    amount(legal, "LineExtensionAmount", sum((_money(i["amount"]) for i in fields["line_items"]), Decimal(0)))
    amount(legal, "TaxExclusiveAmount", fields["net_total"])
    amount(legal, "TaxInclusiveAmount", fields["gross_total"])
    amount(legal, "PayableAmount", fields["gross_total"])
    for n, item in enumerate(fields["line_items"], 1):
        line = cac(root, "InvoiceLine")
        cbc(line, "ID", n)
        cbc(line, "InvoicedQuantity", _quantity(item.get("quantity")), unitCode="C62")
        amount(line, "LineExtensionAmount", item["amount"])
        thing = cac(line, "Item")
        cbc(thing, "Name", item["description"])
        classified = cac(thing, "ClassifiedTaxCategory")
        cbc(classified, "ID", category)
        cbc(classified, "Percent", rate)
        cbc(cac(classified, "TaxScheme"), "ID", "VAT")
        if item.get("unit_price") is not None:
            amount(cac(line, "Price"), "PriceAmount", item["unit_price"])
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def write_einvoices(docs: list[DocumentResult], dest: Path, to: str,
                    decided: dict[str, Decision] | None = None) -> Exported:
    """One XML per invoice whose fields are complete and that no reviewer rejected; the others
    are named with the reason."""
    done = Exported()
    make = to_cii if to == "cii" else to_ubl
    taken: set[str] = set()
    for doc in docs:
        assert doc.fields is not None
        made = (decided or {}).get(doc.source)
        if made is not None and made.decision == "rejected":
            note = f" ({made.note})" if made.note else ""
            done.skipped.append(f"{doc.source}: not exported: {made.by} rejected it in review{note}")
            continue
        why = incomplete(doc.fields)
        xml = None
        if why is None:
            try:
                xml = make(doc.fields)
                problem = _reads_back(xml, doc.fields)
            except LlamadocError as err:  # the schema's verdict, or XML that does not read back
                problem = err.message
            except (ValueError, TypeError, ArithmeticError, AttributeError, KeyError) as err:
                # a shape incomplete() did not foresee: this invoice is left out, not the batch
                problem = f"cannot be written as {to.upper()} ({type(err).__name__}: {str(err)[:120]})"
            if problem:
                why, xml = problem, None
        if xml is None:
            done.skipped.append(f"{doc.source}: not exported: {why}")
            continue
        stem = re.sub(r"[^\w.-]+", "_", Path(doc.source).stem) or "invoice"
        name, n = f"{stem}.xml", 1
        while name in taken:
            n += 1
            name = f"{stem}-{n}.xml"
        taken.add(name)
        path = dest / name
        write_atomic(path, xml)
        done.written.append(path)
    _forget_earlier(dest, taken)
    return done


def _forget_earlier(dest: Path, written: set[str]) -> None:
    """Remove the e-invoices an earlier export wrote to ``dest`` that this one did not (their
    invoice was rejected or changed since), and record what this one wrote. Only files an
    export listed are removed: --dest may be a folder that holds other XML."""
    mark = dest / EXPORT_MARK
    try:
        earlier = set(json.loads(mark.read_text(encoding="utf-8")).get("written", []))
    except (OSError, ValueError, AttributeError):
        earlier = set()  # a marker of an older version (empty), or none
    for name in earlier - written:
        if isinstance(name, str) and "/" not in name and name.endswith(".xml"):
            (dest / name).unlink(missing_ok=True)
    write_atomic(mark, json.dumps({"written": sorted(written)}))


def _reads_back(xml: bytes, fields: dict[str, Any]) -> str | None:
    """The XML read by llamadoc's own e-invoice reader gives the record's values back, or why not."""
    back = einvoice.parse(xml, "export").to_fields()
    for key in ("invoice_number", "issue_date", "currency", "net_total", "tax_total", "gross_total", "iban"):
        if key in fields and fields[key] is not None and back.get(key) != _same(key, fields[key]):
            return f"{key} does not read back ({back.get(key)!r} for {fields[key]!r})"
    return None


def _same(key: str, value: Any) -> Any:
    if key in ("net_total", "tax_total", "gross_total"):
        return float(_money(value))
    if key == "issue_date":
        return einvoice.iso_date(str(value))
    if key == "invoice_number":
        return str(value)
    return _iso_currency(value) if key == "currency" else value


def export(folder: Path, to: str, dest: Path | None = None) -> Exported:
    """Export the results of ``folder`` (an -o folder) to ``dest`` (default ``folder/export``),
    with the values a reviewer approved where the review page has a decision."""
    if to not in FORMATS:
        raise UsageError(f"--to {to!r} is not one of {', '.join(FORMATS)}")
    batch, problems = load_batch(folder)
    if not batch and not problems:
        raise UsageError(f"{folder} holds no llamadoc results", hint="give the -o folder of a finished batch")
    dest = dest or folder / "export"
    for mine in (dest, dest / to) if to in ("ubl", "cii") else (dest,):
        _not_results(mine)
    if to in ("ubl", "cii"):
        dest = dest / to
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for marked in {dest, dest.parent} if to in ("ubl", "cii") else {dest}:
            (marked / EXPORT_MARK).touch()  # so that a later export (or the review page) does not read it
    except OSError as err:
        raise OutputError(f"cannot create {dest}: {err.strerror or err}") from None
    try:
        docs, decided, notes = _with_decisions(folder, batch, problems)
        found = list(invoices(docs))
        if to in ("ubl", "cii"):
            done = write_einvoices(found, dest, to, decided)
        else:
            write = {"csv": write_csv, "xlsx": write_xlsx, "jsonl": write_jsonl}[to]
            done = Exported(written=write(found, dest, decided))
    except OSError as err:
        where = err.filename or dest
        raise WriteFailed(Path(where), f"{err.strerror or err}; free some space or move what is in the way, "
                          "then export again") from None
    done.rows = len(found)
    done.reviewed = sum(1 for doc in found if doc.source in decided)
    done.skipped = problems + done.skipped
    done.notes = notes
    return done


def _not_results(dest: Path) -> None:
    """Refuse to export into a folder that holds the batch's own results (an input folder
    named "export" mirrored into OUT): the export would hide them from later exports and
    the review page, or write over one of them."""
    if not dest.is_dir() or (dest / EXPORT_MARK).exists():
        return
    held = next(result_files(dest), None)
    if held is not None:
        raise UsageError(f"{dest} holds results of the batch ({held.name}), so the export cannot go there",
                         hint="give --dest a folder of its own")


def _with_decisions(folder: Path, batch: list[tuple[Entry, DocumentResult]], problems: list[str]
                    ) -> tuple[list[DocumentResult], dict[str, Decision], list[str]]:
    """The documents with the approved values of their decisions; the decisions by source; and
    notes on decisions made on an earlier result, which are not taken. A damaged decision file
    is a problem (the document is exported as the model read it)."""
    made, damaged = Decisions(folder).all()
    docs: list[DocumentResult] = []
    decided: dict[str, Decision] = {}
    notes: list[str] = []
    for entry, doc in batch:
        if entry.id in damaged:
            problems.append(f"{doc.source}: its review decision was not used: {damaged[entry.id]}")
        decision = made.get(entry.id)
        if decision is not None and decision.stale(entry.digest):
            notes.append(f"{doc.source}: the review decision ({decision.decision} by {decision.by}) was made on an "
                         "earlier result of the batch, so the model's values are exported; review it again")
            decision = None
        if decision is not None:
            doc = reviewed(doc, decision)
            decided[doc.source] = decision
        docs.append(doc)
    return docs, decided, notes
