"""Blank-page detection and runaway cutting, on synthetic pages and texts and on every page
of the shared corpus (real pages are never blank; real text layers never run away)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pymupdf
import pytest
from PIL import Image, ImageDraw, ImageFont

from llamadoc.evidence.quality import cut_runaway, is_blank

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
PDFS = sorted(CORPUS.glob("zugferd_corpus/**/*.pdf")) + sorted(CORPUS.glob("invoice2data/*.pdf"))
PNGS = sorted(CORPUS.glob("invoice2data/*.png"))
needs_corpus = pytest.mark.skipif(not PDFS, reason=f"the shared corpus is not at {CORPUS}")
A4_INCHES = (8.27, 11.69)


def _page(dpi: float, paper: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    return Image.new("RGB", (round(A4_INCHES[0] * dpi), round(A4_INCHES[1] * dpi)), paper)


def _write(image: Image.Image, dpi: float, text: str, points: float, ink: tuple[int, int, int]) -> Image.Image:
    font = ImageFont.load_default(size=points * dpi / 72)
    ImageDraw.Draw(image).text((1.2 * dpi, 5 * dpi), text, fill=ink, font=font)
    return image


def _specks(image: Image.Image, count: int, largest: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.asarray(image).copy()
    h, w = pixels.shape[:2]
    for y, x, size in zip(rng.integers(0, h - largest, count), rng.integers(0, w - largest, count),
                          rng.integers(1, largest + 1, count), strict=True):
        pixels[y : y + size, x : x + size] = 0
    return Image.fromarray(pixels)


# -- blank pages ----------------------------------------------------------------------------

@pytest.mark.parametrize("dpi", [72, 100, 150, 300])
@pytest.mark.parametrize("points", [8, 12])
def test_one_short_line_is_not_blank(dpi: int, points: int) -> None:
    assert is_blank(_page(dpi))
    assert not is_blank(_write(_page(dpi), dpi, "Total 42.00", points, (0, 0, 0)))
    # the same on tinted paper, in blue ink
    assert not is_blank(_write(_page(dpi, (240, 230, 200)), dpi, "Total 42.00", points, (20, 20, 120)))


@pytest.mark.parametrize("dpi", [150, 300])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_scanner_noise_is_blank(dpi: int, seed: int) -> None:
    """Hundreds of dust specks up to 0.5 mm, grain, an edge shadow and faint bleed-through."""
    largest = round(0.5 / 25.4 * dpi)
    page = _specks(_page(dpi, (245, 243, 238)), 400, largest, seed)
    pixels = np.asarray(page).astype(np.int16)
    pixels -= np.abs(np.random.default_rng(seed).normal(0, 10, pixels.shape[:2]))[..., None].astype(np.int16)
    pixels[:, : int(0.02 * pixels.shape[1])] = 40  # the scanner lid's shadow along one edge
    page = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    page = _write(page, dpi, "text showing through from the back of the sheet", 11, (215, 213, 208))
    assert is_blank(page)
    assert not is_blank(_write(page, dpi, "Total 42.00", 10, (0, 0, 0)))


def test_uniform_and_transparent_pages_are_blank() -> None:
    assert is_blank(Image.new("L", (600, 800), 0))  # all black: nothing to read either
    assert is_blank(Image.new("RGBA", (600, 800), (0, 0, 0, 0)))  # transparent reads as paper
    assert is_blank(Image.new("RGB", (1, 1), (255, 255, 255)))


@needs_corpus
@pytest.mark.parametrize("pdf", PDFS, ids=lambda p: p.name)
def test_corpus_pages_are_not_blank(pdf: Path) -> None:
    with pymupdf.open(pdf) as doc:
        for page in doc:
            pix = page.get_pixmap(dpi=72, colorspace=pymupdf.csRGB, alpha=False)
            image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
            assert not is_blank(image), f"page {page.number + 1}"
        doc.new_page()  # and a page with nothing on it, the same size
        pix = doc[-1].get_pixmap(dpi=72, colorspace=pymupdf.csRGB, alpha=False)
        assert is_blank(Image.frombytes("RGB", (pix.width, pix.height), pix.samples))


@needs_corpus
@pytest.mark.parametrize("png", PNGS, ids=lambda p: p.name)
def test_corpus_scans_are_not_blank(png: Path) -> None:
    with Image.open(png) as image:
        assert not is_blank(image)


# -- runaway output -------------------------------------------------------------------------

ROW = "| Small Business QualityExchange 2010 | 1 | 5,39 | 5,39 |\n"


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("The total is " + "the " * 300, "The total is the"),
        ("| a | b |\n|---|---|\n" + "| 0.00 | 0.00 |\n" * 120, "| a | b |\n|---|---|\n| 0.00 | 0.00 |"),
        ('{"line_items": [' + '{"description": "Nintendo", "quantity": 1, "amount": 14.99}, ' * 40,
         '{"line_items": [{"description": "Nintendo", "quantity": 1, "amount": 14.99},'),
        # stopped by the token budget in the middle of a word
        ("Summary\n" + "Invoice 42 was paid.\n" * 50 + "Invoice 42 was pa", "Summary\nInvoice 42 was paid."),
        ("Rechnung\n" + "=" * 4000, "Rechnung\n="),
    ],
    ids=["word", "table-row", "json-object", "truncated", "one-character"],
)
def test_runaway_is_cut(text: str, kept: str) -> None:
    cut, reason = cut_runaway(text)
    assert (cut, reason is not None) == (kept, True)
    assert "repeated" in (reason or "")


@pytest.mark.parametrize(
    "text",
    [
        "Header\n" + ROW * 6 + "Total 32,34",  # identical table rows, then more content
        "Header\n" + ROW * 7,  # identical rows up to the end, but only a few
        "Amount\n" + "0,00\n" * 30,  # a column of equal amounts
        "\n".join(f"| Service {i} | 1 | 5,39 | 5,39 |" for i in range(200)),  # rows sharing words
        "ha " * 150 + "\nand then the model went on to write the rest of the answer properly.",
        "-" * 120 + "\n" + "_" * 80,
        "",
    ],
    ids=["rows-then-total", "few-rows-at-end", "equal-amounts", "similar-rows", "recovered", "rules", "empty"],
)
def test_legitimate_repetition_is_kept(text: str) -> None:
    assert cut_runaway(text) == (text, None)


@needs_corpus
@pytest.mark.parametrize("pdf", PDFS, ids=lambda p: p.name)
def test_corpus_text_layers(pdf: Path) -> None:
    """Real pages never look like a runaway; a real page followed by its last line repeated
    to the end of a token budget is cut back to exactly the page."""
    with pymupdf.open(pdf) as doc:
        texts = [t for t in (page.get_text("text").strip() for page in doc) if t]
    for text in texts:
        assert cut_runaway(text) == (text, None)
        last = text.splitlines()[-1]
        looping = text + ("\n" + last) * 150 + "\n" + last[: len(last) // 2]
        cut, reason = cut_runaway(looping)
        assert cut == text and reason is not None
