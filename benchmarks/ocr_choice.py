"""Which OCR engine to use for evidence: accuracy and speed on the corpus's invoices.

    python benchmarks/ocr_choice.py [--limit N] [--engines tesseract-300,rapidocr]

Each invoice PDF of ../shared/corpus with a text layer has its first page drawn as an
image and read by each engine; the text layer is the truth. Measured per engine:

- word recall: the share of the text layer's words (letters and digits, two or more) that
  the engine reads the same (as multisets, so a word printed twice counts twice);
- value recall: the share of the invoice's known values (invoice2data's JSON, the
  e-invoice's fields) found in the engine's words by llamadoc's own matcher
  (evidence/locate.py), among those it finds in the text layer;
- seconds per page on this machine's CPU (the engine alone, not the drawing).

Engines: Tesseract 5 through PyMuPDF (the OS packages' language models) at several DPIs
and language sets, and RapidOCR (rapidocr-onnxruntime, models in its wheel; pip install
rapidocr-onnxruntime to include it), whose line boxes are split into words in proportion
to their characters.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llamadoc.evidence.checks import _kind  # noqa: E402
from llamadoc.evidence.locate import Locator  # noqa: E402
from llamadoc.inputs import ocr  # noqa: E402
from llamadoc.inputs.words import pdf_words  # noqa: E402
from llamadoc.results import PageWords, Word  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"


def tokens(text: str) -> collections.Counter[str]:
    folded = unicodedata.normalize("NFKC", text).casefold()
    return collections.Counter(w for w in re.findall(r"[^\W_]+", folded) if len(w) >= 2)


def truth_values(pdf: Path) -> list[tuple[tuple[str, ...], Any]]:
    """(keys, value) pairs known for an invoice, in the invoice schema's names."""
    values: list[tuple[tuple[str, ...], Any]] = []
    if pdf.with_suffix(".json").exists():  # invoice2data
        truth = json.loads(pdf.with_suffix(".json").read_text())[0]
        names = {"amount": "gross_total", "amount_untaxed": "net_total", "amount_tax": "tax_total",
                 "date": "issue_date", "invoice_number": "invoice_number"}
        values = [((names[k],), truth[k]) for k in names if truth.get(k) not in (None, "")]
    fields = Path(f"{pdf}.fields.json") if Path(f"{pdf}.fields.json").exists() else pdf.with_suffix(".fields.json")
    if fields.exists():  # the e-invoice's own
        truth = json.loads(fields.read_text())
        for key, name in (("invoice_number", "invoice_number"), ("issue_date", "issue_date"),
                          ("grand_total", "gross_total"), ("tax_total", "tax_total"),
                          ("seller_name", "name"), ("seller_vat_id", "vat_id")):
            value = truth.get(key)
            if value not in (None, ""):
                if key == "issue_date" and re.fullmatch(r"\d{8}", str(value)):
                    value = f"{value[:4]}-{value[4:6]}-{value[6:]}"
                if key in ("grand_total", "tax_total"):
                    value = float(value)
                values.append(((name,), value))
    return values


def tesseract(languages: str, dpi: int) -> Any:
    def read(page: Any, index: int) -> PageWords:
        import pymupdf
        from PIL import Image

        zoom = dpi / 72
        pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csRGB, alpha=False)
        image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
        saved = ocr.languages
        ocr.languages = lambda: languages  # type: ignore[assignment]
        try:
            started = time.perf_counter()
            words = ocr.read(image, index, page.rect.width, page.rect.height)
        finally:
            ocr.languages = saved  # type: ignore[assignment]
        read.seconds = time.perf_counter() - started  # type: ignore[attr-defined]
        return words

    return read


def rapidocr(dpi: int) -> Any:
    import numpy as np
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR()

    def read(page: Any, index: int) -> PageWords:
        import pymupdf

        zoom = dpi / 72
        pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csRGB, alpha=False)
        pixels = np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.width, 3)
        started = time.perf_counter()
        found, _ = engine(pixels)
        read.seconds = time.perf_counter() - started  # type: ignore[attr-defined]
        words: list[Word] = []
        for line, (box, text, _score) in enumerate(found or []):
            xs, ys = [p[0] / zoom for p in box], [p[1] / zoom for p in box]
            x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
            step = (x1 - x0) / max(1, len(text))
            position = 0
            for part in text.split(" "):
                if part:
                    words.append(Word(part, x0 + position * step, y0, x0 + (position + len(part)) * step, y1, line))
                position += len(part) + 1
        return PageWords(index, page.rect.width, page.rect.height, "ocr", tuple(words))

    return read


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=24, help="invoices read (the first N with a text layer)")
    parser.add_argument("--engines", default="tesseract-200,tesseract-300,tesseract-eng-300,rapidocr-200")
    args = parser.parse_args()
    import pymupdf

    engines: dict[str, Any] = {}
    for name in args.engines.split(","):
        dpi = int(name.rsplit("-", 1)[1])
        if name.startswith("tesseract"):
            engines[name] = tesseract("eng" if "-eng-" in name else ocr.languages(), dpi)
        elif name.startswith("rapidocr"):
            engines[name] = rapidocr(dpi)
    pdfs = sorted((CORPUS / "invoice2data").glob("*.pdf")) + sorted((CORPUS / "zugferd_corpus").rglob("*.pdf"))
    totals: dict[str, collections.Counter[str]] = {name: collections.Counter() for name in engines}
    read = 0
    for pdf in pdfs:
        if read >= args.limit:
            break
        with pymupdf.open(pdf) as doc:
            page = doc[0]
            layer = pdf_words(page, 1)
            truth = tokens(page.get_text())
            if layer is None or sum(truth.values()) < 30:
                continue
            values = truth_values(pdf)
            in_layer = [(k, v) for k, v in values if Locator({1: layer}).find(v, _kind(k, v, {}), k)[0].page]
            read += 1
            line = f"{pdf.name[:38]:38} words {sum(truth.values()):4} values {len(in_layer):2}"
            for name, engine in engines.items():
                words = engine(page, 1)
                seen = tokens(" ".join(w.text for w in words.words))
                locator = Locator({1: words})
                found = sum(1 for k, v in in_layer if locator.find(v, _kind(k, v, {}), k)[0].page)
                t = totals[name]
                t["words"] += sum(truth.values())
                t["words_read"] += sum((truth & seen).values())
                t["values"] += len(in_layer)
                t["values_found"] += found
                t["ms"] += int(engine.seconds * 1000)
                t["pages"] += 1
                line += f" | {name} {sum((truth & seen).values()) / sum(truth.values()):.3f} {found}/{len(in_layer)}" \
                        f" {engine.seconds:5.1f}s"
            print(line, flush=True)
    print()
    print("| engine | pages | word recall | values found (of those in the text layer) | s per page |")
    print("|---|---|---|---|---|")
    for name, t in totals.items():
        if t["pages"]:
            print(f"| {name} | {t['pages']} | {t['words_read'] / t['words']:.3f} | "
                  f"{t['values_found']}/{t['values']} ({t['values_found'] / max(1, t['values']):.3f}) | "
                  f"{t['ms'] / t['pages'] / 1000:.2f} |")


if __name__ == "__main__":
    main()
