"""What evidence and OCR cost per page, their share of a page's time with the mid-size model,
and the share of an invoice's values that get evidence on the corpus (text layer vs OCR).

    python -m benchmarks.evidence_cost [--ocr-pages 24] [--model-pages 2] [--max-tokens 384]

For the first page of every e-invoice PDF in ../shared/corpus/zugferd_corpus (its own XML
gives the whole record, 30-odd values: what a model's perfect answer would be) and of the
invoice2data PDFs (their JSON gives a few values):

- words: the text layer's word boxes (Document.words);
- ocr: the page drawn as an image-only PDF, then Tesseract's words (Document.read_words);
- evidence: Extract.combine over the record (merge, locate every value, confidence from token
  probabilities, the model-free checks, review), on text-layer words and on OCR words;

all as CPU time of this process (time.process_time: the machine is shared, and wall time
there mostly measures the other work);
- found: the share of the record's printed values (not null, not free text) that get a box,
  sought on every page's text layer; and, for the scanned first pages, in OCR's words against
  the same page's text layer.

The page time with the mid-size model is one extract call of the `cpu-mid` synthetic mllama
model (benchmarks/mllama_synth.py; Q4_K_M; random weights, so the answer runs to
--max-tokens under the invoice schema's grammar, about what a real invoice's JSON takes) on a
corpus page, measured in the same run.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llamadoc.evidence.checks import MAX_GROUNDED_TEXT, _kind, _leaves, _path  # noqa: E402
from llamadoc.inputs import einvoice  # noqa: E402
from llamadoc.inputs.raster import RasterOptions, open_document  # noqa: E402
from llamadoc.inputs.sources import collect  # noqa: E402
from llamadoc.results import DocumentResult, PageResult, PageWords  # noqa: E402
from llamadoc.tasks import Extract, PageReply, Plan, load_schema  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"
SCHEMA = ROOT / "examples" / "invoice.yaml"


def truth(pdf: Path) -> dict[str, Any] | None:
    """The invoice's record in the schema's shape: the e-invoice's own, or invoice2data's few values."""
    xml = pdf.with_suffix(".xml")
    if xml.exists():
        try:
            return einvoice.parse(xml.read_bytes(), xml.name).to_fields()
        except Exception:  # the corpus's deliberately broken XML
            return None
    answer = pdf.with_suffix(".json")
    if answer.exists():
        given = json.loads(answer.read_text())[0]
        return {"invoice_number": given.get("invoice_number"), "issue_date": given.get("date"),
                "currency": given.get("currency"), "net_total": given.get("amount_untaxed"),
                "tax_total": given.get("amount_tax"), "gross_total": given.get("amount"),
                "seller": None, "buyer": None, "due_date": None, "line_items": []}
    return None


def printed_values(fields: dict[str, Any]) -> list[str]:
    """The paths of values a page should show: not null, not free text."""
    return [_path(k) for k, v in _leaves(fields) if _kind(k, v, {}) is not None
            and not (isinstance(v, str) and len(v) > MAX_GROUNDED_TEXT)]


def scan_of(pdf: Path, dpi: int = 200) -> bytes:
    """The first page as an image-only PDF: what a scanner would have made of it."""
    import pymupdf

    with pymupdf.open(pdf) as doc, pymupdf.open() as out:
        page = doc[0]
        new = out.new_page(width=page.rect.width, height=page.rect.height)
        new.insert_image(new.rect, pixmap=page.get_pixmap(dpi=dpi))
        buf = io.BytesIO()
        out.save(buf)
        return buf.getvalue()


def evidence(task: Extract, fields: dict[str, Any], words: dict[int, PageWords]) -> tuple[float, DocumentResult]:
    """Extract.combine over a record read from the first page (its values sought on every page
    given), with a token probability per character."""
    text = json.dumps(fields, ensure_ascii=False)
    pages = [PageResult(index=i, words=w) for i, w in sorted(words.items())]
    pages[0].logprobs = [(c.encode(), math.log(0.97)) for c in text]
    doc = DocumentResult(source="bench", task="extract", pages=pages)
    started = time.process_time()
    task.combine(doc, {1: PageReply(fields=fields)}, Plan(), lambda _p: None)  # type: ignore[arg-type, return-value]
    return (time.process_time() - started) * 1000, doc


def found(doc: DocumentResult, paths: list[str]) -> int:
    by_path = {v.path: v for v in doc.values}
    return sum(1 for p in paths if by_path[p].evidence.page is not None)


def model_page_ms(pdf: Path, task: Extract, pages: int, max_tokens: int) -> list[tuple[float, float]]:
    """(CPU ms, wall ms) of each extract call of the cpu-mid model on the page (2 threads)."""
    from benchmarks.mllama_synth import PRESETS, write_mllama
    from llamadoc.engines.base import GenerationRequest, LoadOptions
    from llamadoc.engines.mllama.engine import MllamaEngine

    times = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cpu-mid.gguf"
        write_mllama(path, PRESETS["cpu-mid"])
        engine = MllamaEngine(LoadOptions(model_path=str(path), max_tokens=max_tokens, n_ctx=4096, threads=2))
        [source] = collect([str(pdf)])
        with open_document(source, RasterOptions()) as doc:
            page = next(doc.pages([1]))
        for _ in range(pages):
            request = GenerationRequest(prompt=task.prompt(1), images=(page.image,), schema=task.schema,
                                        max_tokens=max_tokens)
            cpu, wall = time.process_time(), time.perf_counter()
            engine.generate(request)
            times.append(((time.process_time() - cpu) * 1000, (time.perf_counter() - wall) * 1000))
        engine.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ocr-pages", type=int, default=24, help="pages also read by OCR (the first N)")
    parser.add_argument("--model-pages", type=int, default=2, help="pages run through the cpu-mid model")
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--misses", action="store_true", help="name each value not found in the text layer")
    args = parser.parse_args()
    task = Extract(schema=load_schema(str(SCHEMA)), schema_path=str(SCHEMA))
    pdfs = sorted((CORPUS / "zugferd_corpus").rglob("*.pdf")) + sorted((CORPUS / "invoice2data").glob("*.pdf"))
    tmp = tempfile.mkdtemp()
    rows: dict[str, list[float]] = {"words": [], "evidence_text": [], "ocr": [], "evidence_ocr": []}
    counts = {"values": 0, "text": 0, "ocr_values": 0, "ocr": 0, "ocr_text": 0, "pages": 0, "ocr_pages": 0}
    for pdf in pdfs:
        fields = truth(pdf)
        if fields is None:
            continue
        [source] = collect([str(pdf)])
        with open_document(source, RasterOptions()) as doc:
            started = time.process_time()
            words = doc.words(1)
            words_ms = (time.process_time() - started) * 1000
            every = {i: w for i in doc.selected() if (w := doc.words(i)) is not None}
        if words is None:
            continue
        paths = printed_values(fields)
        ms, result = evidence(task, fields, every)
        if args.misses:
            by_path = {v.path: v for v in result.values}
            for p in paths:
                if by_path[p].evidence.page is None:
                    print(f"    miss {p} = {by_path[p].value!r}")
        rows["words"].append(words_ms)
        rows["evidence_text"].append(ms)
        counts["pages"] += 1
        counts["values"] += len(paths)
        counts["text"] += found(result, paths)
        line = f"{pdf.name[:40]:40} values {len(paths):3} text {found(result, paths):3} words {words_ms:6.1f} ms " \
               f"evidence {ms:6.1f} ms"
        if counts["ocr_pages"] < args.ocr_pages:
            scanned = Path(tmp) / f"{pdf.stem}.scan.pdf"
            scanned.write_bytes(scan_of(pdf))
            [scan] = collect([str(scanned)])
            with open_document(scan, RasterOptions()) as doc:
                started = time.process_time()
                read = doc.read_words(1)
                ocr_ms = (time.process_time() - started) * 1000
            ms, result = evidence(task, fields, {1: read})
            rows["ocr"].append(ocr_ms)
            rows["evidence_ocr"].append(ms)
            counts["ocr_pages"] += 1
            counts["ocr_values"] += len(paths)
            counts["ocr"] += found(result, paths)
            counts["ocr_text"] += found(evidence(task, fields, {1: words})[1], paths)
            line += f" | ocr {found(result, paths):3} ocr {ocr_ms:7.1f} ms evidence {ms:6.1f} ms"
        print(line, flush=True)
    model = model_page_ms(pdfs[0], task, args.model_pages, args.max_tokens) if args.model_pages else []
    page = statistics.median(cpu for cpu, _ in model) if model else float("nan")

    def med(name: str) -> float:
        return statistics.median(rows[name]) if rows[name] else float("nan")

    print()
    print(f"pages: {counts['pages']} (text layer), {counts['ocr_pages']} also as scans; a cpu-mid extract page "
          f"(max_tokens {args.max_tokens}, 2 threads): " + ", ".join(f"{c / 1000:.1f} s CPU ({w / 1000:.1f} s wall)"
                                                                     for c, w in model))
    print()
    print("| per page (median) | CPU ms | share of a cpu-mid page's CPU time |")
    print("|---|---|---|")
    for name, label in (("words", "text-layer words"), ("evidence_text", "evidence + checks (text layer)"),
                        ("ocr", "OCR (Tesseract, 300 DPI)"), ("evidence_ocr", "evidence + checks (OCR words)")):
        print(f"| {label} | {med(name):.1f} | {med(name) / page:.3%} |")
    text_total = med("words") + med("evidence_text")
    ocr_total = med("ocr") + med("evidence_ocr")
    print(f"| a text-layer page, all of it | {text_total:.1f} | {text_total / page:.3%} |")
    print(f"| a scanned page, all of it | {ocr_total:.1f} | {ocr_total / page:.3%} |")
    print()
    print("| values with evidence | text layer | OCR |")
    print("|---|---|---|")
    share = counts["text"] / max(1, counts["values"])
    print(f"| every page of each invoice | {counts['text']}/{counts['values']} ({share:.1%}) | |")
    print(f"| first pages, text layer vs the same page scanned | {counts['ocr_text']}/{counts['ocr_values']} "
          f"({counts['ocr_text'] / max(1, counts['ocr_values']):.1%}) | {counts['ocr']}/{counts['ocr_values']} "
          f"({counts['ocr'] / max(1, counts['ocr_values']):.1%}) |")


if __name__ == "__main__":
    main()
