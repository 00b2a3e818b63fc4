"""The checks that need no model, one value at a time (as a review page re-runs them on an
edited value), and the confidence that comes from the model's token probabilities."""

from __future__ import annotations

import json
import math

import pytest

from llamadoc.evidence.confidence import combined, value_probabilities, value_spans
from llamadoc.evidence.validate import check_fields, check_value
from llamadoc.results import Evidence


def statuses(path: str, value: object, printed: str | None = None) -> dict[str, tuple[str, str]]:
    return {c.name.split(":")[0]: (c.status, c.detail) for c in check_value(path, value, printed)}


@pytest.mark.parametrize(("value", "status"), [
    ("DE136695976", "pass"), ("DE 136 695 976", "pass"), ("DE136695975", "fail"), ("ATU13585627", "pass"),
    ("FR40303265045", "pass"), ("CHE-116.281.710 MWST", "pass"), ("GB980780684", "pass"),
    ("136695976", "unknown"), ("QQ123", "unknown"), ("DE1366", "fail"),
])
def test_vat_ids_by_their_check_digits(value: str, status: str) -> None:
    got = statuses("seller.vat_id", value)["vat_id"]
    assert got[0] == status, got


def test_iban_and_bic() -> None:
    assert statuses("iban", "DE89 3704 0044 0532 0130 00")["iban"][0] == "pass"
    failed = statuses("iban", "DE89 3704 0044 0532 0130 01")["iban"]
    assert failed[0] == "fail" and "checksum" in failed[1].lower()
    assert statuses("payment.bank_account", "DE89370400440532013000")["iban"][0] == "pass"
    assert "iban" not in statuses("payment.bank_account", "12345678")  # not shaped like one: not checked
    assert statuses("bic", "COBADEFFXXX")["bic"][0] == "pass"
    assert statuses("bic", "COBAZZFFXXX")["bic"][0] == "fail"


def test_rules_ask_for_whole_words_in_any_spelling() -> None:
    # a note that starts "Pl", a reference that starts "DE", a volume with "bic" inside it: none is an ID
    assert statuses("private_note", "Please pay within 14 days") == {}
    assert statuses("reservation_number", "DE-2026-0815") == {}
    assert statuses("cubic_volume", "12") == {}
    assert "vat_id" not in statuses("vat_amount", "19,00")  # the tax, not the ID
    assert statuses("sellerVatId", "DE136695975")["vat_id"][0] == "fail"
    assert statuses("Seller-VAT-ID", "DE136695976")["vat_id"][0] == "pass"
    assert statuses("swift_code", "COBADEFFXXX")["bic"][0] == "pass"
    assert statuses("issueDate", "5 Dec 2026")["date"][0] == "pass"


def test_an_iban_written_with_dashes_is_the_same_iban() -> None:
    assert statuses("iban", "DE89-3704-0044-0532-0130-00")["iban"][0] == "pass"


def test_dates_become_iso_with_the_printed_form_kept() -> None:
    status, detail = statuses("issue_date", "2026-12-05", "05.12.2026")["date"]
    assert (status, detail) == ("pass", "2026-12-05, printed '05.12.2026'")
    [check] = [c for c in check_value("issue_date", "03/08/2014") if c.name.startswith("date")]
    assert check.status == "unknown" and check.data["readings"] == ["2014-03-08", "2014-08-03"]
    [check] = [c for c in check_value("issue_date", "03/08/2014", "3 Aug 2014") if c.name.startswith("date")]
    assert check.status == "pass" and check.data["iso"] == "2014-08-03"  # the page settles it
    assert statuses("issue_date", "2026-02-30")["date"][0] == "fail"


def test_currencies_to_iso_4217() -> None:
    assert statuses("currency", "EUR")["currency"] == ("pass", "EUR: Euro")
    assert statuses("currency", "€")["currency"] == ("pass", "€ is EUR")
    assert statuses("currency", "$")["currency"][0] == "unknown"  # dollars of several countries
    assert statuses("currency", "XYZ")["currency"][0] == "fail"


def test_amounts_by_locale() -> None:
    assert statuses("gross_total", "1.234,50")["amount"] == ("pass", "1234.50")
    assert statuses("gross_total", 1234.5, "1.234,50")["amount"] == ("pass", "1234.5, printed '1.234,50'")
    assert statuses("gross_total", 1234.5, "1.243,50")["amount"][0] == "fail"
    assert statuses("gross_total", "1,234")["amount"][0] == "unknown"  # 1234, or 1.234
    assert statuses("gross_total", "1,234", "1,234.00")["amount"] == ("pass", "1234, printed '1,234.00'")
    assert "amount" not in statuses("line_items[0].quantity", 3)  # a count, not money


def test_check_fields_covers_a_whole_record_without_a_model() -> None:
    fields = {"seller": {"vat_id": "DE136695975"}, "iban": "DE89370400440532013000", "issue_date": "2026-12-05",
              "currency": "EUR", "line_items": [{"amount": 10.0}], "note": "thanks"}
    found = check_fields(fields)
    assert sorted(found) == ["currency", "iban", "issue_date", "line_items[0].amount", "seller.vat_id"]
    assert [c.status for c in found["seller.vat_id"]] == ["fail"]


def test_value_spans_follow_json_paths() -> None:
    text = '```json\n{"a": "x\\"y", "b": [1, {"c": null}], "d": {"e": -2.5e3, "f": true}}\n```'
    spans = value_spans(text)
    assert {k: text[s:e] for k, (s, e) in spans.items()} == {
        "a": 'x\\"y', "b[0]": "1", "b[1].c": "null", "d.e": "-2.5e3", "d.f": "true"}
    assert value_spans("no json") == {} and value_spans('{"a": ') == {}


def test_a_values_probability_is_its_least_sure_token() -> None:
    pieces = [(b'{"', 0.9), (b'total', 0.99), (b'":', 0.99), (b' 12', 0.6), (b'.5', 0.3), (b', "', 0.9),
              (b'name', 0.99), (b'": "', 0.99), (b'M\xc3', 0.8), (b'\xbcller', 0.5), (b'"}', 0.95)]
    logprobs = [(p, math.log(q)) for p, q in pieces]
    got = value_probabilities(logprobs)
    assert json.loads(b"".join(p for p, _ in pieces)) == {"total": 12.5, "name": "Müller"}
    assert got == {"total": 0.3, "name": 0.5}
    assert value_probabilities([]) == {}


def test_confidence_moves_with_the_evidence() -> None:
    found = Evidence("text", page=1, boxes=[[0, 0, 1, 1]])
    missing = Evidence("none", why_not="not found on page 1")
    assert combined(0.6, found, True) == 0.8  # half its doubt gone
    assert combined(0.6, missing, True) == 0.3  # half its probability gone
    assert combined(0.6, Evidence("none", why_not="no page has a text layer or OCR words"), False) == 0.6
    assert combined(None, found, True) == 0.75  # no token probabilities: a coin, then the page
    assert combined(None, Evidence("xml", xml_path="/Invoice/ID"), False) == 1.0
