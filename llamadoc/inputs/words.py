"""Word boxes of a page: from a PDF's text layer, or from OCR where a page has none.

Evidence for a value is the box of the words it was read from, so every page the
extract task reads gets its words here: the text layer's are exact and cost about a
millisecond; OCR (inputs/ocr.py) runs only for pages that have no text layer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from llamadoc.results import PageWords, Word


def pdf_words(page: Any, index: int) -> PageWords | None:
    """A PyMuPDF page's text-layer words in reading order (None when it has none), in the
    coordinates of the page as shown (its /Rotate applied), in PDF points."""
    rows = page.get_text("words", sort=True)
    if not rows:
        return None
    rotate = page.rotation_matrix if page.rotation else None
    return PageWords(index, page.rect.width, page.rect.height, "text", tuple(_words(rows, rotate)))


def _words(rows: Iterable[Any], rotate: Any) -> Iterable[Word]:
    """PyMuPDF's (x0, y0, x1, y1, text, block, line, word) rows -> Words, with a line number
    that counts the (block, line) pairs in order: one printed line each."""
    lines: dict[tuple[int, int], int] = {}
    for x0, y0, x1, y1, text, block, line, _ in rows:
        if not text.strip():
            continue
        if rotate is not None:
            import pymupdf  # here only for rotated pages; the page object came from it

            x0, y0, x1, y1 = pymupdf.Rect(x0, y0, x1, y1) * rotate
        number = lines.setdefault((block, line), len(lines))
        yield Word(text, round(x0, 2), round(y0, 2), round(x1, 2), round(y1, 2), number)


def scaled(words: PageWords, width: float, height: float, source: str | None = None) -> PageWords:
    """The same words measured on a page of another size (OCR's pixels -> the page's points)."""
    sx, sy = width / words.width, height / words.height
    return PageWords(words.index, width, height, source or words.source, tuple(
        Word(w.text, round(w.x0 * sx, 2), round(w.y0 * sy, 2), round(w.x1 * sx, 2), round(w.y1 * sy, 2), w.line)
        for w in words.words))
