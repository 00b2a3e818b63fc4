"""Checks of single values that need no model: VAT IDs by their check digits (python-stdnum),
IBAN and BIC (schwifty), dates to ISO 8601 with the printed form kept, currencies to ISO
4217, amounts read by how their locale prints them.

Each takes one value (and, when known, how it is printed on the page), so a person who
corrects a value can re-run them at once: ``check_value`` for one, ``check_fields`` for a
whole record. A check that does not apply to a value is not returned; one that applies
but cannot decide says ``unknown`` and why.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from llamadoc.evidence.checks import (
    _CURRENCY_MARKS,
    _amount,
    _as_numbers,
    _dates_in,
    _fold,
    _kind,
    _leaves,
    _path,
    _subschema,
)
from llamadoc.results import Check

Key = str | int

_IBAN_SHAPE = re.compile(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}")
_MONEY = ("amount", "total", "price", "tax", "net", "gross", "sum", "fee", "charge", "discount")


def check_value(keys: tuple[Key, ...] | str, value: Any, printed: str | None = None,
                schema: dict[str, Any] | None = None) -> list[Check]:
    """The model-free checks that apply to one value. ``keys``: its place in the record (a path
    such as ``seller.vat_id`` or the keys themselves), which says what kind of value it is;
    ``printed``: the text it was matched to on the page; ``schema``: its own JSON Schema."""
    keys = _keys(keys) if isinstance(keys, str) else keys
    if value is None or isinstance(value, bool | dict | list):
        return []
    name = _name(keys[-1]) if keys and isinstance(keys[-1], str) else ""
    found: list[Check] = []
    for applies, check in _CHECKS:
        if applies(name, value):
            found.append(check(_path(keys), value, printed))
    kind = _kind(keys, value, schema or {})
    dated = "date" in name.split("_") or (schema or {}).get("format") == "date"
    if kind == "date" or (dated and isinstance(value, str) and value.strip()):
        found.append(_date(_path(keys), value, printed))
    elif kind == "currency" or (name == "currency" and isinstance(value, str) and value.strip()):
        found.append(_currency(_path(keys), value))
    elif kind in ("number", "text") and any(word in name for word in _MONEY) and not (
            isinstance(value, str) and not any(c.isdigit() for c in value)):
        found.append(_money(_path(keys), value, printed))
    return found


def check_fields(fields: dict[str, Any], schema: dict[str, Any] | None = None,
                 printed: dict[str, str] | None = None) -> dict[str, list[Check]]:
    """``check_value`` for every leaf of a record, by path; ``printed``: each path's page text."""
    out = {}
    for keys, value in _leaves(fields):
        path = _path(keys)
        checks = check_value(keys, value, (printed or {}).get(path), _subschema(schema, keys))
        if checks:
            out[path] = checks
    return out


def _keys(path: str) -> tuple[Key, ...]:
    """'line_items[2].amount' -> ('line_items', 2, 'amount')."""
    keys: list[Key] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        keys.append(int(index) if index else name)
    return tuple(keys)


def _name(key: str) -> str:
    """A key as lower-case words joined by "_", whatever its spelling: sellerVatId and
    Seller-VAT-ID are seller_vat_id (a rule asks for whole words: cubic_volume holds no BIC)."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)
    return "_".join(w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w)


def _compact(value: Any) -> str:
    return re.sub(r"[\s.\-/]", "", str(value)).upper()


# -- VAT IDs ---------------------------------------------------------------------------------

_VAT_WORDS = frozenset({"vat", "vatid", "vatno", "vatnr", "vatnumber", "ustid", "ustidnr", "tva", "btw"})
# A key with one of these words is the tax (vat_amount, vat_rate), not the VAT ID.
_NOT_AN_ID = frozenset({"amount", "total", "rate", "percent", "percentage", "sum", "base", "price", "category",
                        "exempt", "exemption", "net", "gross", "value", "included"})


def _is_vat(name: str, value: Any) -> bool:
    words = set(name.split("_"))
    return isinstance(value, str) and bool(words & _VAT_WORDS or name.startswith("ust_id")) and not (
        words & _NOT_AN_ID)


def _vat(path: str, value: Any, printed: str | None) -> Check:
    from stdnum import get_cc_module  # imported here: only VAT IDs need it
    from stdnum.eu import vat as eu_vat
    from stdnum.exceptions import ValidationError

    name = f"vat_id:{path}"
    number = _compact(value)
    country = number[:2].lower()
    data: dict[str, Any] = {"value": value}
    if not number[:2].isalpha():
        return Check(name, "unknown", f"{value!r} has no country prefix, so its check digits cannot be known",
                     data)
    module = eu_vat if country in eu_vat.MEMBER_STATES or country == "el" else get_cc_module(country, "vat")
    if module is None:
        return Check(name, "unknown", f"no rule is known for VAT IDs of {number[:2]}", data)
    try:
        normal = module.validate(number)
    except ValidationError as err:
        return Check(name, "fail", f"{value!r} is not a valid {number[:2]} VAT ID: {_reason(err)}", data)
    return Check(name, "pass", f"{value!r} is a well-formed {number[:2]} VAT ID (check digits agree)",
                 {**data, "normalised": str(normal)})


def _reason(err: Exception) -> str:
    text = str(err).rstrip(".")
    return text[:1].lower() + text[1:]


# -- IBAN and BIC ----------------------------------------------------------------------------

def _is_iban(name: str, value: Any) -> bool:
    if not isinstance(value, str):
        return False
    return "iban" in name or (("account" in name or "bank" in name) and bool(_IBAN_SHAPE.fullmatch(
        _compact(value))))


def _iban(path: str, value: Any, printed: str | None) -> Check:
    from schwifty import IBAN  # imported here: only IBANs need it
    from schwifty.exceptions import SchwiftyException

    name = f"iban:{path}"
    try:
        iban = IBAN(_compact(value))  # as printed: DE89 3704 ... or DE89-3704-...
    except SchwiftyException as err:
        return Check(name, "fail", f"{value!r} is not a valid IBAN: {_reason(err)}", {"value": value})
    return Check(name, "pass", f"{value!r} is a valid IBAN (check digits and {iban.country_code} length agree)",
                 {"value": value, "normalised": iban.compact, "bic": str(iban.bic) if iban.bic else None})


def _is_bic(name: str, value: Any) -> bool:
    return isinstance(value, str) and bool(set(name.split("_")) & {"bic", "swift", "bicswift", "swiftbic"})


def _bic(path: str, value: Any, printed: str | None) -> Check:
    from schwifty import BIC
    from schwifty.exceptions import SchwiftyException

    name = f"bic:{path}"
    try:
        bic = BIC(str(value))
    except SchwiftyException as err:
        return Check(name, "fail", f"{value!r} is not a valid BIC: {_reason(err)}", {"value": value})
    return Check(name, "pass", f"{value!r} is a well-formed BIC of {bic.country_code}",
                 {"value": value, "normalised": bic.compact})


_CHECKS: tuple[tuple[Callable[[str, Any], bool], Callable[[str, Any, str | None], Check]], ...] = (
    (_is_vat, _vat), (_is_iban, _iban), (_is_bic, _bic))


# -- dates, currencies, amounts --------------------------------------------------------------

def _date(path: str, value: Any, printed: str | None) -> Check:
    """ISO 8601 from however the date was written; the printed form kept beside it."""
    name = f"date:{path}"
    data: dict[str, Any] = {"value": value, "printed": printed}
    readings = sorted(_dates_in(_fold(str(value))))
    if printed:  # the page settles what 03/08/2014 means when it prints 3 Aug 2014 too
        agreed = sorted(set(readings) & _dates_in(_fold(printed)))
        readings = agreed or readings
    if not readings:
        return Check(name, "fail", f"{value!r} is not a date", data)
    if len(readings) > 1:
        shown = " or ".join(d.isoformat() for d in readings)
        return Check(name, "unknown", f"{value!r} may be {shown}", {**data, "readings": [d.isoformat()
                                                                                         for d in readings]})
    iso = readings[0].isoformat()
    where = f", printed {printed!r}" if printed else ""
    return Check(name, "pass", f"{iso}{where}", {**data, "iso": iso})


def _currency(path: str, value: Any) -> Check:
    """An ISO 4217 code, from the code or from a sign only one currency uses."""
    import pycountry  # imported here: its tables load in about 0.1 s

    name = f"currency:{path}"
    text = str(value).strip()
    found = pycountry.currencies.get(alpha_3=text.upper()) if re.fullmatch(r"[A-Za-z]{3}", text) else None
    if found is not None:
        return Check(name, "pass", f"{found.alpha_3}: {found.name}", {"value": value, "iso": found.alpha_3})
    codes = sorted(code for code, marks in _CURRENCY_MARKS.items() if _fold(text) in marks)
    if len(codes) == 1:
        return Check(name, "pass", f"{text} is {codes[0]}", {"value": value, "iso": codes[0]})
    if codes:
        return Check(name, "unknown", f"{text} may be {' or '.join(codes)}", {"value": value, "readings": codes})
    return Check(name, "fail", f"{value!r} is not an ISO 4217 currency code", {"value": value})


def _money(path: str, value: Any, printed: str | None) -> Check:
    """An amount read as its locale prints it; one the page prints must agree with it."""
    name = f"amount:{path}"
    data: dict[str, Any] = {"value": value, "printed": printed}
    readings = _as_numbers(value)
    if printed:
        shown = set().union(*(_as_numbers(word) for word in printed.split()), _as_numbers(printed))
        agreed = {r for r in readings if r in shown}  # as the value writes it: 1234, not 1234.00
        if readings and not agreed and shown:
            return Check(name, "fail", f"{value!r} is not what the page prints ({printed!r})", data)
        readings = agreed or readings
    if not readings:
        return Check(name, "fail", f"{value!r} is not an amount", data)
    if len(readings) > 1:
        shown_readings = " or ".join(str(r) for r in sorted(readings))
        return Check(name, "unknown", f"{value!r} may be {shown_readings}", {**data, "readings": sorted(
            str(r) for r in readings)})
    signed = _amount(value)
    amount = signed if signed is not None and abs(signed) in readings else next(iter(readings))
    return Check(name, "pass", f"{_plain(amount)}" + (f", printed {printed!r}" if printed else ""),
                 {**data, "amount": _plain(amount)})


def _plain(number: Decimal) -> str:
    return f"{number:f}"
