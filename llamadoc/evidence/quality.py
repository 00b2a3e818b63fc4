"""Model-free quality gates around the model: blank pages before it, runaway repetition after it.

Models answer blank pages with invented content and sometimes loop until the token
budget ends; both are cheap to see without a model.
"""

from __future__ import annotations

import math
import re

import numpy as np
from PIL import Image

# Blank pages: the page is looked at about 0.25 mm per pixel (an A4 page's long side in
# 1,200 pixels), where a speck of scanner dust is a dot or two and a glyph is several.
_WORK_SIDE = 1200
_MARGIN = 0.03  # scanners darken the edges; a page's content never sits there alone
_CONTRAST = 64  # grey levels below the paper that count as ink (bleed-through is fainter)
_CELL = 6  # pixels: about a glyph's stroke spacing at the working size
_CELL_INK = 5  # inked pixels that make a cell part of a glyph rather than a speck

# Runaway text: a unit repeated back to back at the very end of the output. Legitimate
# text repeats too (identical table rows, a column of equal amounts), but not for long.
_MIN_REPEATS = 8
_MIN_SPAN = 100  # tokens the repetition covers; short units must repeat more often
_MAX_UNIT = 400  # tokens: a repeated paragraph is still caught
_MAX_CHAR_RUN = 200  # the same character this many times in a row is never content
_TOKEN = re.compile(r"\w+|([^\w\s])\1*")  # words, and runs of one punctuation character


def is_blank(image: Image.Image) -> bool:
    """True when a page shows nothing worth reading: empty, or only specks of noise, edge
    shadows or faint bleed-through. One short line of text is enough to be not blank."""
    gray = _flatten(image)
    factor = max(1, math.ceil(max(gray.size) / _WORK_SIDE))
    pixels = np.asarray(gray.reduce(factor) if factor > 1 else gray, dtype=np.int16)
    h, w = pixels.shape
    dy, dx = int(h * _MARGIN), int(w * _MARGIN)
    pixels = pixels[dy : h - dy, dx : w - dx]
    if pixels.size == 0:
        return True
    paper = int(np.median(pixels))  # a page that may be blank is mostly paper
    ink = pixels < paper - _CONTRAST
    if not ink.any():
        return True
    # Glyphs put several strokes in a small cell and sit next to each other along a line;
    # specks are isolated dots that ink one cell, or two where they straddle a border.
    # A page is not blank once three neighbouring cells hold ink.
    h, w = (ink.shape[0] // _CELL) * _CELL, (ink.shape[1] // _CELL) * _CELL
    cells = ink[:h, :w].reshape(h // _CELL, _CELL, w // _CELL, _CELL).sum(axis=(1, 3)) >= _CELL_INK
    padded = np.pad(cells, 1).astype(np.int8)
    neighbours = sum(
        padded[1 + dy : padded.shape[0] - 1 + dy, 1 + dx : padded.shape[1] - 1 + dx]
        for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
    )
    return not (cells & (neighbours >= 2)).any()


def cut_runaway(text: str) -> tuple[str, str | None]:
    """Cut degenerate repetition from the end of generated text.

    Returns the text with the repetition cut after its first occurrence (that one is
    usually real content, e.g. one table row) and the reason, or ``(text, None)``.
    Repetition that stops before the end is left alone (the model got out of it), except
    one character repeated hundreds of times, which is cut wherever it is.
    """
    run = re.search(rf"(\S)\1{{{_MAX_CHAR_RUN - 1},}}", text)
    if run:
        return text[: run.start() + 1], f"the character {run.group(1)!r} repeated {len(run.group(0))} times"
    tokens = [(m.start(), m.end(), m.group(0)) for m in _TOKEN.finditer(text)]
    words = [t[2] for t in tokens]
    # A budget-truncated output may end in half a word, which breaks the period.
    found = _periodic_tail(words) or _periodic_tail(words[:-1])
    if found is None:
        return text, None
    start, unit, repeats = found
    cut = tokens[start + unit - 1][1]
    if "\n" in text[tokens[start][0] :]:  # the unit is made of lines: keep the first one whole
        newline = text.find("\n", cut)
        cut = newline if newline != -1 else cut
    return text[:cut].rstrip(), f"the same {unit}-token sequence repeated {repeats} times at the end"


def _periodic_tail(words: list[str]) -> tuple[int, int, int] | None:
    """(start, unit, repeats) of the shortest unit repeated back to back up to the end."""
    n = len(words)
    for unit in range(1, min(_MAX_UNIT, n // _MIN_REPEATS) + 1):
        start = n - unit
        while start > 0 and words[start - 1] == words[start - 1 + unit]:
            start -= 1
        span = n - start
        if span // unit >= _MIN_REPEATS and span >= _MIN_SPAN:
            return start, unit, span // unit
    return None


def _flatten(image: Image.Image) -> Image.Image:
    """Grey levels, with transparency read as white paper."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("L")
    return image.convert("L")
