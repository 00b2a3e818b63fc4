"""Where a value stands on the page: the words it was read from, found in a page's word
boxes (its text layer, or OCR's), however the value is printed.

A value is matched as it may be printed, not as the model wrote it: 1234.5 as ``1.234,50``,
``1,234.50`` or ``1 234,50``; 2026-12-05 as ``05.12.2026`` or ``5 Dec 2026``; a name or an
IBAN with its spaces, line breaks and hyphenation anywhere; an address in parts over
several lines. When a value is printed more than once, the place whose line carries a
label like the field's name (``Total``, ``USt-IdNr.``) wins, and a line item's numbers are
looked for on the lines of its description.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, localcontext
from functools import cached_property
from typing import Any

from llamadoc.evidence.checks import (
    _CURRENCY_MARKS,
    MAX_GROUNDED_TEXT,
    WIDE,
    _as_numbers,
    _dates_in,
    _fold,
    _numbers_in,
    _pages,
)
from llamadoc.results import Evidence, PageWords

_CENT = Decimal("0.01")
MAX_NUMBER_WORDS = 3  # "1 234 567,89", "EUR 1.234,56"
MAX_DATE_WORDS = 4  # "5. Dezember 2026", "December 5, 2026"
MAX_TEXT_LINES = 4  # a name or an IBAN wrapped over a few lines; an address goes by its parts
# Words a page may hold for its values to be looked for on it: an invoice page holds a few
# hundred, a dense statement a few thousand; each value costs a pass over the page's words.
MAX_PAGE_WORDS = 20_000

# Words that label a field on invoices, by the words of its name; in the languages of the corpus.
_LABELS = {
    "invoice": "invoice rechnung facture factuur fattura factura bill",
    "number": "number no nr nummer numero num n° #",
    "date": "date datum dated le du fecha data",
    "issue": "date datum issued",
    "due": "due fallig falligkeit echeance payable zahlbar vervaldatum",
    "vat": "vat ust ust-idnr ustid mwst tva btw iva tax steuer",
    "id": "id idnr no nr",
    "tax": "tax vat mwst ust tva btw steuer",
    "net": "net netto subtotal ht total",
    "gross": "total gross brutto ttc due amount betrag",
    "total": "total summe gesamt montant totaal",
    "amount": "amount betrag montant bedrag total",
    "iban": "iban",
    "bic": "bic swift",
    "currency": "currency wahrung devise",
    "seller": "from seller supplier vendor",
    "buyer": "to bill buyer customer kunde client",
}


def _key(text: str) -> str:
    """What two spellings of a name or an id share: letters and digits, folded."""
    return "".join(c for c in _fold(text) if c.isalnum())


@dataclass
class _Page:
    """One page's words, prepared once for every value looked for on it."""

    words: PageWords
    keys: list[str] = field(init=False)
    folded: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.folded = [_fold(w.text) for w in self.words.words]
        self.keys = [_key(w.text) for w in self.words.words]

    def _spans(self, longest: int) -> Iterable[tuple[int, int, str]]:
        """(start, end, text) of every run of up to ``longest`` words on one line."""
        words = self.words.words
        for i in range(len(words)):
            for j in range(i + 1, min(len(words), i + longest) + 1):
                if words[j - 1].line != words[i].line:
                    break
                yield i, j, " ".join(self.folded[i:j])

    @cached_property
    def numbers(self) -> list[tuple[int, int, set[Decimal]]]:
        """The numbers each short run of words shows, with the shortest runs first."""
        found = []
        for i, j, text in self._spans(MAX_NUMBER_WORDS):
            if j - i > 1 and not all(any(c.isdigit() for c in w) or len(w) <= 3 for w in self.folded[i:j]):
                continue  # only digit groups and currency marks make a number of several words
            values = _numbers_in(text)
            if values:
                found.append((i, j, values))
        return sorted(found, key=lambda s: s[1] - s[0])

    @cached_property
    def dates(self) -> list[tuple[int, int, set[date]]]:
        found = []
        for i, j, text in self._spans(MAX_DATE_WORDS):
            values = _dates_in(text)
            if values:
                found.append((i, j, values))
        return sorted(found, key=lambda s: s[1] - s[0])

    def text(self, target: str) -> list[list[tuple[int, int]]]:
        """Places where words spell ``target`` in their letters and digits exactly, whole words
        only, across line breaks and hyphenation; each place a list of runs of words."""
        found = []
        keys, words = self.keys, self.words.words
        for i in range(len(keys)):
            key = next((k for k in self.heads[i] if target.startswith(k)), None)
            if key is None:
                continue
            have, j, runs = key, i + 1, [(i, i + 1)]
            while len(have) < len(target) and j < len(keys):
                if words[j].line - words[i].line >= MAX_TEXT_LINES:
                    break
                if keys[j] and not target.startswith(have + keys[j]):
                    # A block printed beside this one may come first in reading order: the
                    # value goes on below its first word, at the same left edge.
                    below = self._below(i, runs[-1][1] - 1, have, target)
                    if below is None:
                        break
                    runs.append((below, below + 1))
                    have, j = have + keys[below], below + 1
                    continue
                have += keys[j]
                j += 1
                runs[-1] = (runs[-1][0], j)
            if have != target and j < len(keys) and runs[-1][1] == j and words[j].line == words[j - 1].line:
                # The last word may go on past the value after a mark: "562044387/2015".
                tail = next((t for t in self.tails[j] if have + t == target), None)
                if tail is not None:
                    have, runs[-1] = have + tail, (runs[-1][0], j + 1)
            if have == target:
                found.append(runs)
        return found

    @cached_property
    def heads(self) -> list[list[str]]:
        """Each word's key, and the keys of what follows a mark inside it ("n°562044387" ->
        "562044387"): a value may be printed glued to its label."""
        return [[self.keys[i], *_after_marks(w)] if self.keys[i] else [] for i, w in enumerate(self.folded)]

    @cached_property
    def tails(self) -> list[list[str]]:
        """The keys of what precedes a mark inside each word ("562044387/2015" -> "562044387")."""
        return [[_key(part) for part in _before_marks(w)] for w in self.folded]

    def _below(self, first: int, last: int, have: str, target: str) -> int | None:
        """The word that carries a value on at the next line down, aligned with its first word."""
        words, keys = self.words.words, self.keys
        top, left = words[last], words[first].x0
        height = max(1.0, top.y1 - top.y0)
        for k in range(last + 1, min(len(words), last + 80)):
            w = words[k]
            if w.y0 > top.y1 + 1.5 * height:
                break
            if w.y0 >= top.y1 - 0.3 * height and abs(w.x0 - left) <= height and keys[k] and target.startswith(
                    have + keys[k]):
                return k
        return None

    def marks(self, marks: set[str]) -> list[tuple[int, int]]:
        """Words that are, or carry, one of ``marks`` (a currency code or sign)."""
        found = []
        for i, word in enumerate(self.folded):
            bare = word.strip(".,:;()")
            if bare in marks or any(not m.isalnum() and m in word for m in marks):
                found.append((i, i + 1))
        return found


@dataclass(frozen=True)
class Place:
    """A run of words on a page: [start, end) in the page's word list."""

    page: int
    start: int
    end: int


class Locator:
    """Finds values in the word boxes of a document's pages."""

    def __init__(self, pages: Mapping[int, PageWords]) -> None:
        self.pages = {i: _Page(words) for i, words in sorted(pages.items())
                      if words.words and len(words.words) <= MAX_PAGE_WORDS}
        self.blind = sorted(i for i, words in pages.items() if not words.words)
        self.crowded = sorted(i for i, words in pages.items() if len(words.words) > MAX_PAGE_WORDS)

    def find(self, value: Any, kind: str | None, keys: tuple[str | int, ...] = (), origin: int | None = None,
             near: Place | None = None) -> tuple[Evidence, Place | None]:
        """The evidence for ``value`` (kind as checks._kind tells it) and where it was found.

        ``origin``: the page the value came from, searched first. ``near``: a place the value
        should be close to (a line item's description), preferred among several matches."""
        if value is None or value == "":
            return Evidence("none", why_not="no value"), None
        if kind is None:
            return Evidence("none", why_not="not a value printed on a page"), None
        if kind == "text" and len(_fold(str(value))) > MAX_GROUNDED_TEXT:
            return Evidence("none", why_not=f"free text over {MAX_GROUNDED_TEXT} characters is not matched word "
                                            "for word"), None
        if not self.pages:
            why = (f"no page to look on: {self._crowded()}" if self.crowded else
                   "no page has a text layer or OCR words" if self.blind else
                   "no page has word boxes (a scan needs OCR: see the document's warnings)")
            return Evidence("none", why_not=why), None
        order = sorted(self.pages, key=lambda i: (i != origin, i))
        for index in order:
            runs = self._runs(self.pages[index], value, kind)
            if runs:
                best = self._best(self.pages[index], runs, keys, near if near and near.page == index else None)
                return self._evidence(index, best, len(runs)), Place(index, best[0][0], best[-1][1])
        crowded = f" ({self._crowded()})" if self.crowded else ""
        return Evidence("none", why_not=f"not found on {_pages(sorted(order))}{crowded}"), None

    def _crowded(self) -> str:
        if not self.crowded:
            return ""
        return (f"{_pages(self.crowded)} {'holds' if len(self.crowded) == 1 else 'hold'} over {MAX_PAGE_WORDS:,} "
                "words, more than evidence reads")

    def _runs(self, page: _Page, value: Any, kind: str) -> list[list[tuple[int, int]]]:
        """Every place the value is printed on a page: each a list of runs (one, or one per
        part of an address)."""
        if kind == "number":
            targets = _as_numbers(value)
            # A price kept to four places in the data is printed to the cent: 67.2269 as 67,23.
            with localcontext(WIDE):
                targets |= {t.quantize(_CENT, ROUND_HALF_UP) for t in targets if -t.as_tuple().exponent > 2}  # type: ignore[operator]
            return [[run] for run in _minimal([(i, j) for i, j, values in page.numbers if targets & values])]
        if kind == "date":
            wanted = _dates_in(_fold(str(value)))
            return [[run] for run in _minimal([(i, j) for i, j, values in page.dates if wanted & values])]
        if kind == "currency":
            code = str(value).strip()
            return [[run] for run in page.marks({code.casefold(), *(_fold(m) for m in _CURRENCY_MARKS.get(
                code.upper(), ()))})]
        target = _key(str(value))
        if not target:
            return []
        whole = page.text(target)
        if whole:
            return whole
        # An address prints its parts on lines of their own, perhaps in another order.
        parts = [_key(p) for p in re.split(r"[,;\n]", str(value)) if _key(p)]
        if len(parts) < 2:
            return []
        found = [page.text(part) for part in parts]
        # A country code at the end is often printed as the country's name, or not at all.
        if not found[-1] and len(parts[-1]) == 2:
            found = found[:-1]
        if not all(found):
            return []
        first = found[0][0]
        chosen = [first] + [min(places, key=lambda p: abs(p[0][0] - first[0][0])) for places in found[1:]]
        return [sorted(run for place in chosen for run in place)]

    def _best(self, page: _Page, runs: list[list[tuple[int, int]]], keys: tuple[str | int, ...],
              near: Place | None) -> list[tuple[int, int]]:
        """The place a field's value most likely came from, when it is printed more than once."""
        if len(runs) == 1:
            return runs[0]
        labels = _labels(keys)
        words = page.words.words
        # The words that label this field, by line, found once (not once per place it is printed).
        labelled: dict[int, list[int]] = {}
        for k, word in enumerate(words):
            if any(page.folded[k].startswith(w) for w in labels):
                labelled.setdefault(word.line, []).append(k)

        def score(run: list[tuple[int, int]]) -> tuple[float, ...]:
            start = run[0][0]
            line = words[start].line
            closeness = 0.0
            if near is not None:
                first, last = words[near.start].line, words[near.end - 1].line
                distance = 0 if first <= line <= last else min(abs(line - first), abs(line - last))
                closeness = -distance
            # A label before it on its line counts twice; one on the line above, once.
            label = 2 * bisect.bisect_left(labelled.get(line, []), start) + len(labelled.get(line - 1, []))
            later = start if _is_total(keys) else -start  # totals stand at the end; the rest at the first
            return (closeness, label, later)

        return max(runs, key=score)

    def _evidence(self, index: int, runs: list[tuple[int, int]], count: int) -> Evidence:
        page = self.pages[index].words
        boxes: list[list[float]] = []
        lines: list[str] = []
        last_line = None
        for start, end in runs:
            for w in page.words[start:end]:
                if w.line == last_line:
                    box = boxes[-1]
                    box[:] = [min(box[0], w.x0), min(box[1], w.y0), max(box[2], w.x1), max(box[3], w.y1)]
                    lines[-1] += " " + w.text
                else:
                    boxes.append([w.x0, w.y0, w.x1, w.y1])
                    lines.append(w.text)
                last_line = w.line
        return Evidence(page.source, page=index, boxes=boxes, page_size=[page.width, page.height],
                        text="\n".join(lines), occurrences=count)


def _after_marks(word: str) -> list[str]:
    parts = re.split(r"[^\w]+", word)
    return [k for n in range(1, len(parts)) if (k := _key("".join(parts[n:])))]


def _before_marks(word: str) -> list[str]:
    parts = re.split(r"[^\w]+", word)
    return ["".join(parts[:n]) for n in range(len(parts) - 1, 0, -1) if _key("".join(parts[:n]))]


def _minimal(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The matching spans (shortest first) that hold no shorter match: one per place. A span
    holds a kept one only if that one starts inside it, so only its own few starts are looked
    at (spans are a few words long): a page of 8,000 matches costs 8,000 steps, not 64 million."""
    ends: dict[int, int] = {}  # start -> the end of the shortest span kept there
    taken: list[tuple[int, int]] = []
    for i, j in spans:
        if not any(ends.get(a, j + 1) <= j for a in range(i, j)):
            taken.append((i, j))
            ends[i] = min(ends.get(i, j), j)
    return sorted(taken)


def _labels(keys: tuple[str | int, ...]) -> set[str]:
    names = [k for k in keys if isinstance(k, str)][-2:]
    words = {part for name in names for part in name.lower().split("_") if part}
    return {label for w in words for label in _LABELS.get(w, w).split()} | words


def _is_total(keys: tuple[str | int, ...]) -> bool:
    return bool(keys) and isinstance(keys[-1], str) and "total" in keys[-1]

