"""OCR for pages without a text layer (scans, phone photos, image-only PDFs): word boxes
from Tesseract, run through PyMuPDF's built-in binding.

Tesseract was chosen over RapidOCR by measurement on the corpus's invoices (see
benchmarks/ocr_choice.md): it finds more of the printed words, is several times faster
on the CPU, and gives a box per word where RapidOCR gives one per line. Its models are
the OS packages' (tesseract-ocr-eng, -deu, ...): nothing is downloaded at run time, and
without them OCR is off and says so. It runs on the thread that prepares pages, never
on the model's.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from llamadoc.inputs.words import pdf_words, scaled
from llamadoc.results import PageWords

if TYPE_CHECKING:
    from PIL.Image import Image

# Invoices in the corpus are English, German, French and Dutch; each language more costs time
# (benchmarks/ocr_choice.md), so only these are used, of those installed.
LANGUAGES = ("eng", "deu", "fra", "nld")
MAX_PIXELS = 6_000_000  # about 300 DPI for A4: more only costs time


@cache
def tessdata() -> str | None:
    """Tesseract's model folder, or None when no language model is installed."""
    import pymupdf  # imported here: only pages that need OCR need it

    try:
        folder = str(pymupdf.get_tessdata())  # TESSDATA_PREFIX, else where Tesseract's packages put it
    except (RuntimeError, OSError):  # "No tessdata specified and Tesseract is not installed"
        return None
    return folder if any(Path(folder).glob("*.traineddata")) else None


@cache
def languages() -> str:
    """'eng+deu+...': the LANGUAGES installed, in that order (at least one when tessdata is there)."""
    folder = tessdata()
    if folder is None:
        return ""
    have = [lang for lang in LANGUAGES if (Path(folder) / f"{lang}.traineddata").exists()]
    if not have:
        have = sorted(p.stem for p in Path(folder).glob("*.traineddata") if p.stem != "osd")[:1]
    return "+".join(have)


def unavailable() -> str | None:
    """Why OCR cannot run here, or None when it can."""
    if tessdata() is None or not languages():
        return ("OCR needs Tesseract's language models (on Debian and Ubuntu: apt-get install tesseract-ocr "
                "tesseract-ocr-eng; set TESSDATA_PREFIX to their folder elsewhere)")
    return None


def read(image: Image, index: int, width: float, height: float) -> PageWords:
    """The words Tesseract reads on ``image``, measured on a page ``width`` x ``height``
    (the page's own unit: PDF points, or the page image's pixels)."""
    import pymupdf

    # RGB: MuPDF's OCR device reads no words from a grey pixmap (seen with PyMuPDF 1.26).
    if image.width * image.height > MAX_PIXELS:  # shrunk first, then copied as RGB: one small copy
        scale = (MAX_PIXELS / (image.width * image.height)) ** 0.5
        image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))))
    rgb = image.convert("RGB")
    pix = pymupdf.Pixmap(pymupdf.csRGB, rgb.width, rgb.height, rgb.tobytes(), False)
    pix.set_dpi(72, 72)  # one pixel, one point: the OCR page measures the image in pixels
    folder = tessdata()
    if folder is None:
        raise RuntimeError(unavailable())
    with pymupdf.open("pdf", pix.pdfocr_tobytes(language=languages(), tessdata=folder)) as doc:
        found = pdf_words(doc[0], index)
    if found is None:
        return PageWords(index, width, height, "ocr")
    return scaled(found, width, height, "ocr")
