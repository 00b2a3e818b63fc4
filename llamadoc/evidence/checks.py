"""Model-free checks of extracted fields: grounding in the pages' text layer, invoice
arithmetic, and agreement with an e-invoice embedded in the document."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from datetime import date
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext
from typing import Any

from llamadoc.results import Check, PageWords, Word

# Longer strings are free text (notes, long descriptions) that a model rightly rewraps or
# abridges; checking them against the page would only produce noise.
MAX_GROUNDED_TEXT = 120

Key = str | int

# -- normalisation ----------------------------------------------------------------------------

_TYPOGRAPHY = str.maketrans({
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-"),
    **dict.fromkeys("\u2018\u2019\u201a\u2032", "'"),
    **dict.fromkeys("\u201c\u201d\u201e", '"'),
})


def _fold(text: str) -> str:
    """Drop what never tells two values apart: case, accents, typographic dashes and quotes,
    and runs of whitespace (line breaks included)."""
    return " ".join(_fold_line(text).split())


def _fold_line(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.translate(_TYPOGRAPHY))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


# -- numbers ------------------------------------------------------------------------------------

# A run of digits with the separators numbers are printed with; spaces only within a line.
_NUMBER_RUN = re.compile(r"(?<!\w)\d(?:[\d.,' ]*\d)?(?!\w)")
_GROUP = re.compile(r"\d{3}(?:[.,]\d+)?")  # what follows a thousands space: 234 or 234,56


# The numbers a field or a page may mean: up to 35 digits before the point (a long reference
# number held as an integer) and 20 after it (a float's repr). Past them a number is a model's
# runaway digits (1e30 is one token) and is not looked for. What is kept is rounded in WIDE, whose
# 60 digits hold any of them to the cent (Decimal's default 28 do not: 1e30 raised mid-batch).
_MOST_DIGITS_BEFORE, _MOST_PLACES = 35, 20
WIDE = Context(prec=60)


def _plausible(numbers: set[Decimal]) -> set[Decimal]:
    return {n for n in numbers if n.is_finite() and (not n or n.adjusted() < _MOST_DIGITS_BEFORE)
            and -n.as_tuple().exponent <= _MOST_PLACES}  # type: ignore[operator]


def _readings(token: str) -> set[Decimal]:
    """Every value a number without spaces can mean: 1,234.56 / 1.234,56 / 1'234.56 /
    4,24 / 1,234 (1234 or 1.234) / 3.441.812; nothing for what no locale writes (21.05.14),
    nor for what no amount is (_plausible)."""
    return _plausible(_all_readings(token))


def _all_readings(token: str) -> set[Decimal]:
    marks = [c for c in token if not c.isdigit()]
    if not marks:
        return {Decimal(token)}
    integer, fraction = token, None
    if marks[-1] in ".," and marks.count(marks[-1]) == 1:  # a lone last mark may be decimal
        cut = token.rfind(marks[-1])
        integer, fraction = token[:cut], token[cut + 1 :]
    groups = re.split(r"[.,']", integer)
    mixed = len({c for c in integer if not c.isdigit()}) > 1
    if mixed or (len(groups) > 1 and not (1 <= len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:]))):
        return set()
    digits = "".join(groups)
    if fraction is None:
        return {Decimal(digits)}
    readings = {Decimal(f"{digits}.{fraction}")}
    if len(groups) == 1 and len(fraction) == 3 and len(digits) <= 3:
        readings.add(Decimal(digits + fraction))  # 1,234: a thousands separator, or a decimal mark
    return readings


def _numbers_in(line: str) -> set[Decimal]:
    """The absolute values of every number on a line, in every reading it allows."""
    values: set[Decimal] = set()
    for run in _NUMBER_RUN.findall(line):
        pieces = [piece.strip(".,'") for piece in run.split()]  # "3 , 2014" is two numbers
        for piece in filter(None, pieces):
            values |= _readings(piece)
        # Spaces group thousands too (1 234,56), but also separate columns: read both.
        for i, head in enumerate(pieces):
            if not (head.isdigit() and len(head) <= 3):
                continue
            for j in range(i + 1, min(len(pieces), i + 6)):  # 999 999 999 999 999,99 at most
                if not _GROUP.fullmatch(pieces[j]):
                    break
                values |= _readings(head + "".join(pieces[i + 1 : j + 1]))
                if not pieces[j].isdigit() or len(pieces[j]) != 3:
                    break
    return {abs(v) for v in values}


def _as_numbers(value: Any) -> set[Decimal]:
    """The values a field may mean: one for a JSON number, the readings of a numeric string."""
    if isinstance(value, bool):
        return set()
    if isinstance(value, (int, float, Decimal)):
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        return _plausible({abs(number)})
    if isinstance(value, str):
        folded = _fold(value)
        runs = _NUMBER_RUN.findall(folded)
        # One number, with at most a currency or a sign around it: "€ 1.234,56", "-7,90".
        if len(runs) == 1 and re.fullmatch(r"\D{0,4}" + re.escape(runs[0]) + r"\D{0,4}", folded):
            return _readings(runs[0].replace(" ", ""))
    return set()


def _amount(value: Any) -> Decimal | None:
    """A signed amount, or None when the value is not one unambiguous number."""
    readings = _as_numbers(value)
    if len(readings) != 1:
        return None
    number = readings.pop()
    negative = isinstance(value, (int, float, Decimal)) and value < 0
    if isinstance(value, str):  # -7,90 / (7,90) / 7,90- as accounts print a credit
        folded = _fold(value)
        negative = folded.startswith(("-", "(")) or folded.endswith("-")
    return -number if negative else number


# -- dates --------------------------------------------------------------------------------------

_MONTH_NAMES = (
    "january jan januar janvier janv januari janner",
    "february feb februar fevrier fevr fev februari",
    "march mar marz maerz mars maart mrt",
    "april apr avril avr",
    "may mai mei",
    "june jun juni juin",
    "july jul juli juillet juil",
    "august aug aout augustus",
    "september sep sept septembre",
    "october oct oktober octobre okt",
    "november nov novembre",
    "december dec dezember decembre dez",
)
_MONTHS = {name: number for number, names in enumerate(_MONTH_NAMES, 1) for name in names.split()}
_MONTH = "|".join(sorted(_MONTHS, key=len, reverse=True))
_NUMERIC_DATE = re.compile(r"(?<![\d.,])(\d{1,4})([./-])(\d{1,2})\2(\d{4}|\d{2})(?![\d]|[.,]\d)")
_COMPACT_DATE = re.compile(r"(?<![\d.,])(\d{4})(\d{2})(\d{2})(?![\d]|[.,]\d)")
_DAY_MONTH_YEAR = re.compile(
    rf"(?<!\d)(\d{{1,2}})(?:st|nd|rd|th|er)?\.?[\s-]*(?:de\s+)?\b({_MONTH})\b\.?[\s,-]*(\d{{4}})(?!\d)")
_MONTH_DAY_YEAR = re.compile(rf"\b({_MONTH})\b\.?\s*(\d{{1,2}})(?:st|nd|rd|th)?(?!\d)\s*,?\s*(\d{{4}})(?!\d)")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _date(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _dates_in(line: str) -> set[date]:
    """Every date a (folded) line may show; 03/08/2014 gives both readings."""
    found: set[date | None] = set()
    for a, _, b, c in _NUMERIC_DATE.findall(line):
        if len(a) == 4:
            found.add(_date(int(a), int(b), int(c)))
        elif len(a) <= 2:
            year = int(c) if len(c) == 4 else 2000 + int(c) if int(c) < 70 else 1900 + int(c)
            found |= {_date(year, int(b), int(a)), _date(year, int(a), int(b))}
    for y, m, d in _COMPACT_DATE.findall(line):
        found.add(_date(int(y), int(m), int(d)))
    for d, month, y in _DAY_MONTH_YEAR.findall(line):
        found.add(_date(int(y), _MONTHS[month], int(d)))
    for month, d, y in _MONTH_DAY_YEAR.findall(line):
        found.add(_date(int(y), _MONTHS[month], int(d)))
    return {d for d in found if d is not None}


# -- currencies ---------------------------------------------------------------------------------

# How invoices print a currency besides its ISO code.
_CURRENCY_MARKS = {
    "EUR": ("\u20ac", "euro", "euros"),
    "USD": ("$", "us dollars", "dollars"),
    "GBP": ("\u00a3", "pounds"),
    "INR": ("\u20b9", "rs", "rupees"),
    "JPY": ("\u00a5", "yen"),
    "CNY": ("\u00a5", "yuan", "rmb"),
    "CHF": ("sfr",),
    "PLN": ("z\u0142",),
    "CAD": ("$",),
    "AUD": ("$",),
    "NZD": ("$",),
    "SEK": ("kr",),
    "NOK": ("kr",),
    "DKK": ("kr",),
}


# -- the shape of the record --------------------------------------------------------------------

def _leaves(value: Any, keys: tuple[Key, ...] = ()) -> Iterator[tuple[tuple[Key, ...], Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*keys, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*keys, index))
    else:
        yield keys, value


def _path(keys: tuple[Key, ...]) -> str:
    text = ""
    for key in keys:
        text += f"[{key}]" if isinstance(key, int) else f".{key}" if text else key
    return text


def _subschema(schema: dict[str, Any] | None, keys: tuple[Key, ...]) -> dict[str, Any]:
    """The JSON Schema that describes the value at ``keys`` (local $refs followed), or {}."""
    node = _resolve(schema, schema)
    for key in keys:
        if node is None:
            return {}
        child = node.get("items") if isinstance(key, int) else node.get("properties", {}).get(key)
        node = _resolve(schema, child)
    return node or {}


def _resolve(root: dict[str, Any] | None, node: Any) -> dict[str, Any] | None:
    for _ in range(16):  # a cycle of $refs ends here rather than looping
        if not isinstance(node, dict) or "$ref" not in node:
            break
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return None
        node = root
        for part in ref[2:].split("/"):
            node = node.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _kind(keys: tuple[Key, ...], value: Any, schema: dict[str, Any]) -> str | None:
    """What a leaf is, for matching: number, date, currency or text; None: nothing to check."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float, Decimal)):
        return "number" if _as_numbers(value) else None  # NaN and infinity are never printed
    if not isinstance(value, str) or not value.strip():
        return None
    name = str(keys[-1]).lower() if keys else ""
    hints = f"{schema.get('description', '')} {schema.get('format', '')}"
    if (name == "currency" or "ISO 4217" in hints) and re.fullmatch(r"[A-Za-z]{3}", value.strip()):
        return "currency"
    dated = schema.get("format") == "date" or "YYYY-MM-DD" in hints or "date" in name.split("_")
    if (dated or _ISO_DATE.fullmatch(value.strip())) and _dates_in(_fold(value)):
        return "date"
    types = schema.get("type", [])
    if {"number", "integer"} & set(types if isinstance(types, list) else [types]) and _as_numbers(value):
        return "number"
    return "text"


# -- grounding ----------------------------------------------------------------------------------

def ground(
    fields: dict[str, Any],
    page_texts: dict[int, str | None],
    field_pages: dict[str, int] | None = None,
    schema: dict[str, Any] | None = None,
) -> list[Check]:
    """One check per value that should be printed on the page (ids, amounts, dates, names):
    ``pass`` when the text shows it, ``fail`` when it does not, ``unknown`` when the page it
    may come from has no text. The field's own page is searched first (``field_pages``, from
    merge_fields), then the others; ``schema`` tells dates, currencies and numbers written as
    strings apart from other text. The matching is evidence/locate.py's, over the text's
    words without their boxes: for text a caller has without a PDF's word boxes.
    """
    from llamadoc.evidence.locate import Locator  # it builds on this module's normalisation

    pages = {i: _words_of(i, text) for i, text in sorted(page_texts.items()) if text and text.strip()}
    blind = sorted(i for i, text in page_texts.items() if not (text and text.strip()))
    locator = Locator(pages)
    checks = []
    for keys, value in _leaves(fields):
        kind = _kind(keys, value, _subschema(schema, keys))
        if kind is None or (kind == "text" and len(_fold(value)) > MAX_GROUNDED_TEXT):
            continue
        # Lists are joined from several pages, so only a list's first page is known.
        origin = (field_pages or {}).get(str(keys[0])) if not any(isinstance(k, int) for k in keys) else None
        name, shown = f"grounding:{_path(keys)}", f"{value!r}"
        evidence, _ = locator.find(value, kind, keys, origin=origin)
        if evidence.page is not None:
            checks.append(Check(name, "pass", f"{shown} is on page {evidence.page}",
                                {"value": value, "page": evidence.page, "state": "grounded"}))
        elif origin in blind or (origin not in pages and blind) or not pages:
            where = [origin] if origin in blind else blind
            why = f"{_pages(where)} {'has' if len(where) == 1 else 'have'} no text layer" if where else "no page text"
            checks.append(Check(name, "unknown", f"{shown} cannot be looked for: {why}",
                                {"value": value, "page": origin, "state": "unknown"}))
        else:
            checks.append(Check(name, "fail", f"{shown} is not in the text layer of {_pages(sorted(pages))}",
                                {"value": value, "page": origin, "state": "ungrounded"}))
    return checks


def _words_of(index: int, text: str) -> PageWords:
    """A page's text as words, one printed line per line (their boxes count characters)."""
    words = [Word(m.group(), m.start(), n, m.end(), n + 1, n)
             for n, line in enumerate(text.splitlines()) for m in re.finditer(r"\S+", line)]
    return PageWords(index, max((w.x1 for w in words), default=1), len(text.splitlines()) or 1, "text", tuple(words))


def _pages(indices: list[int]) -> str:
    return f"page {indices[0]}" if len(indices) == 1 else "pages " + ", ".join(map(str, indices))


# -- invoice arithmetic -------------------------------------------------------------------------

def arithmetic(fields: dict[str, Any], tolerance: float = 0.01) -> list[Check]:
    """The invoice adds up: line amounts sum to ``net_total`` and ``net_total + tax_total``
    is ``gross_total``, each within ``tolerance`` (absolute, in the invoice's currency: the
    amounts are rounded to cents, so their sums are off by a cent at most). ``unknown``
    where a value needed is missing or not a number."""
    limit = Decimal(str(tolerance))
    net, tax, gross = (_amount(fields.get(key)) for key in ("net_total", "tax_total", "gross_total"))
    return [_lines_sum(fields.get("line_items"), net, limit), _totals(net, tax, gross, limit)]


def _lines_sum(items: Any, net: Decimal | None, limit: Decimal) -> Check:
    name = "arithmetic:line_items_sum"
    if not isinstance(items, list) or not items:
        return Check(name, "unknown", "no line items to add up")
    amounts = [_amount(item.get("amount")) if isinstance(item, dict) else None for item in items]
    missing = [i for i, amount in enumerate(amounts) if amount is None]
    if missing:
        return Check(name, "unknown", f"line_items[{missing[0]}] has no amount", {"lines_without_amount": missing})
    if net is None:
        return Check(name, "unknown", "no net_total to compare the lines with")
    total = sum((a for a in amounts if a is not None), Decimal(0))
    check = _sum_check(name, "the line amounts", total, "net_total", net, limit)
    if check.status == "fail":  # the schema has no field for them, so say what else it may be
        check.detail += "; a discount or charge on the whole invoice would explain that"
    return check


def _totals(net: Decimal | None, tax: Decimal | None, gross: Decimal | None, limit: Decimal) -> Check:
    name = "arithmetic:net_plus_tax"
    if net is None or tax is None or gross is None:
        missing = [key for key, value in (("net_total", net), ("tax_total", tax), ("gross_total", gross))
                   if value is None]
        return Check(name, "unknown", f"no {' or '.join(missing)}")
    return _sum_check(name, "net_total + tax_total", net + tax, "gross_total", gross, limit)


def _sum_check(name: str, what: str, total: Decimal, target: str, expected: Decimal, limit: Decimal) -> Check:
    difference = total - expected
    data = {"sum": float(total), target: float(expected), "difference": float(difference)}
    if abs(difference) <= limit:
        return Check(name, "pass", f"{what} add up to {total}, as {target} says", data)
    return Check(name, "fail", f"{what} add up to {total} but {target} is {expected} (off by {difference})", data)


# -- embedded e-invoice -------------------------------------------------------------------------

_PROSE = ("name", "address", "description")  # fields a model may abridge or reflow


def compare(model_fields: dict[str, Any], embedded_fields: dict[str, Any]) -> list[Check]:
    """Field-by-field agreement of a model's record with the exact one of an embedded
    e-invoice (``EInvoice.to_fields()``): numbers numerically, to the precision the model
    gave (at least cents), dates as dates, currencies by code or sign, text normalised, and
    names, addresses and descriptions when one contains the other. A value the e-invoice
    has and the model lacks fails; what the e-invoice lacks is not checked. Line items are
    compared one by one when their counts agree."""
    return list(_compare(model_fields, embedded_fields, ()))


def _compare(model: Any, truth: Any, keys: tuple[Key, ...]) -> Iterator[Check]:
    if isinstance(truth, dict):
        for key, value in truth.items():
            yield from _compare(model.get(key) if isinstance(model, dict) else None, value, (*keys, key))
        return
    name = f"embedded:{_path(keys)}"
    if isinstance(truth, list):
        if not truth:  # profiles such as MINIMUM carry no lines: nothing to hold the model to
            return
        count = len(model) if isinstance(model, list) else 0
        data = {"model": count, "embedded": len(truth)}
        if count != len(truth):
            yield Check(name, "fail", f"the model found {count} lines, the e-invoice has {len(truth)}", data)
            return
        yield Check(name, "pass", f"{count} lines in both", data)
        for index, (mine, theirs) in enumerate(zip(model, truth, strict=True)):
            yield from _compare(mine, theirs, (*keys, index))
        return
    kind = _kind(keys, truth, {})
    if kind is None:
        return
    data = {"model": model, "embedded": truth}
    if model is None or model == "" or isinstance(model, bool):
        yield Check(name, "fail", f"the model found none; the e-invoice says {truth!r}", {**data, "state": "missing"})
        return
    if _agree(kind, str(keys[-1]), model, truth):
        yield Check(name, "pass", f"{model!r} agrees with the e-invoice", {**data, "state": "agree"})
    else:
        yield Check(name, "fail", f"the model says {model!r}, the e-invoice {truth!r}", {**data, "state": "differ"})


def _agree(kind: str, key: str, model: Any, truth: Any) -> bool:
    if kind == "number":
        exact, given = _amount(truth), _amount(model)
        if exact is None or given is None:
            return False
        # 9.90 printed agrees with 9.9000 in the XML; 9 or 9.8 does not.
        places = max(_places(given), min(2, _places(exact)))
        step = Decimal(1).scaleb(-places)
        with localcontext(WIDE):
            return exact.quantize(step, ROUND_HALF_UP) == given.quantize(step, ROUND_HALF_UP)
    if not isinstance(model, str):
        return False
    if kind == "date":
        return bool(_dates_in(_fold(truth)) & _dates_in(_fold(model)))
    if kind == "currency":
        marks = {truth.casefold(), *(_fold(m) for m in _CURRENCY_MARKS.get(truth.upper(), ()))}
        return _fold(model) in marks
    mine, theirs = _fold(model), _fold(truth)
    if mine == theirs or mine.replace(" ", "") == theirs.replace(" ", ""):
        return True
    if key.lower() in _PROSE and mine and theirs:
        shorter, longer = sorted((mine, theirs), key=len)
        return bool(re.search(rf"(?<!\w){re.escape(shorter)}(?!\w)", longer))
    return False


def _places(number: Decimal) -> int:
    return len(f"{number:f}".partition(".")[2])
