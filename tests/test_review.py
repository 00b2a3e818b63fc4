"""Evidence, confidence and checks through the whole batch: line items over two pages, OCR'd
scans, e-invoices, wrong VAT IDs and IBANs, duplicates across a batch, needs_review with
--fail-on and the summary, the result store across schema versions, and `llamadoc export`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest

from llamadoc.batch.options import RunOptions
from llamadoc.engines.base import GenerationRequest, GenerationResponse
from llamadoc.inputs import einvoice, ocr
from llamadoc.inputs.raster import RasterOptions
from llamadoc.outputs.writer import OutputSpec
from llamadoc.reader import Reader
from llamadoc.results import DocumentResult, Status
from llamadoc.tasks import Extract, load_schema
from tests.conftest import CORPUS
from tests.documents import Invoice, make_einvoice_pdf
from tests.fakes import ScriptedEngine, ScriptedModels, run_pipeline
from tests.printed import PrintedInvoice, image_only_pdf, resaved, wrong_ids

INVOICE_SCHEMA = Path(__file__).resolve().parents[1] / "examples" / "invoice.yaml"
OPTIONS = RunOptions(raster=RasterOptions(dpi=40))


class SureEngine(ScriptedEngine):
    """A scripted engine that also says how sure it was of each character it wrote: ``p`` for
    all of them, ``doubt`` for those of the strings it names."""

    def __init__(self, answer: Any, p: float = 0.99, doubt: dict[str, float] | None = None) -> None:
        super().__init__(answer)
        self.p, self.doubt = p, doubt or {}

    def generate(self, request: GenerationRequest) -> GenerationResponse:
        response = super().generate(request)
        chances = [self.p] * len(response.text)
        for text, p in self.doubt.items():
            start = response.text.find(text)
            if start >= 0:
                chances[start : start + len(text)] = [p] * len(text)
        response.logprobs = [(c.encode(), math.log(p)) for c, p in zip(response.text, chances, strict=True)]
        return response


def task(**options: Any) -> Extract:
    return Extract(schema=load_schema(str(INVOICE_SCHEMA)), schema_path=str(INVOICE_SCHEMA), **options)


def pages_answer(invoice: PrintedInvoice) -> Any:
    answers = invoice.answers()
    return lambda req, n: answers[(n - 1) % len(answers)]


def run(engine: ScriptedEngine, path: Path, **options: Any) -> DocumentResult:
    [doc] = run_pipeline(engine, task(**options), [path], OPTIONS)
    return doc


def values(doc: DocumentResult) -> dict[str, Any]:
    return {v.path: v for v in doc.values}


def test_every_value_of_a_two_page_invoice_has_its_evidence_confidence_and_checks(tmp_path: Path) -> None:
    invoice = PrintedInvoice(two_pages=True)
    doc = run(SureEngine(pages_answer(invoice)), invoice.pdf(tmp_path / "invoice.pdf"))
    assert doc.status is Status.OK
    # The table runs over the page break: one list, in order, without the carried-over subtotals.
    assert doc.fields["line_items"] == invoice.fields["line_items"]
    assert {c.name: c.status for c in doc.checks}["arithmetic:line_items_sum"] == "pass"
    got = values(doc)
    assert set(got) == {p for p, _ in _leaf_paths(invoice.fields)}
    for path, (page, printed) in invoice.printed.items():
        v = got[path]
        assert (v.evidence.source, v.evidence.page, v.evidence.text.replace("\n", " ")) == ("text", page, printed), path
        assert v.model_p == 0.99 and v.confidence == 0.995, path
    assert got["line_items[3].amount"].evidence.page == 2
    checks = {c.name.split(":")[0]: c.status for c in got["seller.vat_id"].checks}
    assert checks == {"grounding": "pass", "vat_id": "pass"}
    assert {c.name.split(":")[0]: c.status for c in got["iban"].checks} == {"grounding": "pass", "iban": "pass"}
    date = [c for c in got["issue_date"].checks if c.name.startswith("date")][0]
    assert date.data == {"value": "2026-12-05", "printed": "05.12.2026", "iso": "2026-12-05"}
    assert not doc.needs_review and doc.review == []
    assert doc.pages[0].words_source == "text" and "words" in doc.pages[0].timings_ms


def _leaf_paths(fields: dict[str, Any]) -> list[tuple[str, Any]]:
    from llamadoc.evidence.checks import _leaves, _path

    return [(_path(k), v) for k, v in _leaves(fields)]


def test_a_wrong_vat_id_and_iban_and_a_doubtful_value_need_review(tmp_path: Path) -> None:
    invoice = wrong_ids(PrintedInvoice())
    engine = SureEngine(pages_answer(invoice), doubt={invoice.number: 0.3})
    doc = run(engine, invoice.pdf(tmp_path / "invoice.pdf"), review_below=0.7)
    got = values(doc)
    assert got["invoice_number"].model_p == 0.3 and got["invoice_number"].confidence == 0.65
    assert [c.status for c in got["seller.vat_id"].checks if c.name.startswith("vat_id")] == ["fail"]
    assert [c.status for c in got["iban"].checks if c.name.startswith("iban")] == ["fail"]
    assert doc.needs_review
    assert [r.split(":")[0] for r in doc.review] == ["invoice_number", "seller.vat_id", "iban"]
    assert "under 0.7" in doc.review[0] and "vat_id check failed" in doc.review[1]


def test_a_value_the_page_does_not_show_has_no_evidence_and_says_why(tmp_path: Path) -> None:
    invoice = PrintedInvoice()
    wrong = json.loads(invoice.answers()[0]) | {"gross_total": 9999.0}
    doc = run(SureEngine(lambda req, n: json.dumps(wrong)), invoice.pdf(tmp_path / "invoice.pdf"))
    v = values(doc)["gross_total"]
    assert v.evidence.source == "none" and v.evidence.why_not == "not found on page 1"
    assert v.confidence == 0.495  # half the model's probability: the page could show it, and does not
    assert "gross_total: no evidence (not found on page 1)" in doc.review
    assert {c.name: c.status for c in v.checks}["grounding:gross_total"] == "fail"


@pytest.mark.skipif(ocr.unavailable() is not None, reason=ocr.unavailable() or "")
def test_a_scan_gets_its_evidence_from_ocr(tmp_path: Path) -> None:
    invoice = PrintedInvoice()
    scan = image_only_pdf(invoice.pdf(tmp_path / "invoice.pdf"), tmp_path / "scan.pdf")
    doc = run(SureEngine(pages_answer(invoice)), scan)
    assert doc.pages[0].words_source == "ocr" and doc.pages[0].timings_ms["ocr"] > 0
    found = [v for v in doc.values if v.evidence.source == "ocr"]
    assert len(found) >= 0.9 * len(invoice.printed)
    assert values(doc)["gross_total"].evidence.page_size == [595.0, 842.0]


def test_an_e_invoice_gives_xml_paths_confidence_one_and_the_printed_box(tmp_path: Path) -> None:
    inv = Invoice()
    engine = ScriptedEngine(lambda req, n: "{}")
    doc = run(engine, make_einvoice_pdf(tmp_path / "fx.pdf", inv))
    assert engine.requests == [] and doc.embedded == "factur-x.xml"
    got = values(doc)
    assert all(v.confidence == 1.0 and v.model_p is None and v.evidence.source == "xml" for v in doc.values)
    assert got["invoice_number"].evidence.xml_path == "/CrossIndustryInvoice/ExchangedDocument/ID"
    assert got["line_items[1].amount"].evidence.xml_path == (
        "/CrossIndustryInvoice/SupplyChainTradeTransaction/IncludedSupplyChainTradeLineItem[2]/"
        "SpecifiedLineTradeSettlement/SpecifiedTradeSettlementLineMonetarySummation/LineTotalAmount")
    # Printed on the PDF's page too: the box is there beside the path, for every value the page prints.
    assert got["gross_total"].evidence.page == 1 and got["gross_total"].evidence.text == inv.gross
    unprinted = {v.path for v in doc.values if v.evidence.page is None}
    assert unprinted == {"due_date", "seller.address", "buyer.address", "buyer.vat_id"}  # not in Invoice.text
    assert all(v.evidence.xml_path for v in doc.values if v.value is not None)
    assert got["buyer.address"].evidence.why_not == "no value"
    assert not doc.needs_review


def batch(tmp_path: Path, engine: ScriptedEngine, paths: list[Path], **kwargs: Any) -> tuple[Any, Path]:
    out = tmp_path / "out"
    with Reader(models=ScriptedModels(engine)) as reader:  # type: ignore[arg-type]
        report = reader.run_batch(task(), paths, OPTIONS, output=OutputSpec(dir=out, format="json"), **kwargs)
    return report, out


def test_the_same_invoice_saved_twice_is_flagged_on_both_and_in_the_summary(tmp_path: Path) -> None:
    invoice = PrintedInvoice()
    first = invoice.pdf(tmp_path / "a.pdf")
    again = resaved(first, tmp_path / "b.pdf")  # other bytes, the same invoice
    other = PrintedInvoice(number="RE-2026-0816").pdf(tmp_path / "c.pdf")
    answers = {"RE-2026-0816": json.dumps(PrintedInvoice(number="RE-2026-0816").fields)}

    def answer(req: GenerationRequest, n: int) -> str:
        return answers["RE-2026-0816"] if n == 3 else invoice.answers()[0]

    report, out = batch(tmp_path, SureEngine(answer), [first, again, other],
                        fail_on=frozenset({"failed", "duplicate"}))
    a, b, c = (json.loads((out / f"{n}.json").read_text()) for n in "abc")
    assert a["duplicates"] == [str(again)] and b["duplicates"] == [str(first)] and c["duplicates"] == []
    assert a["needs_review"] and f"the same invoice as {again}" in a["review"]  # the first's file was rewritten
    assert report.duplicates == [(str(first), str(again))] and int(report.exit_code) == 1
    summary = "\n".join(report.summary())
    assert "review: 2 need a person's look, 2 of them the same invoice as another" in summary
    assert f"{again} is the same invoice as {first}" in summary


def test_fail_on_needs_review_and_the_review_count(tmp_path: Path) -> None:
    invoice = wrong_ids(PrintedInvoice())
    pdf = invoice.pdf(tmp_path / "a.pdf")
    report, _ = batch(tmp_path, SureEngine(pages_answer(invoice)), [pdf])
    assert report.review == {str(pdf)} and int(report.exit_code) == 0
    report, _ = batch(tmp_path, SureEngine(pages_answer(invoice)), [pdf], fail_on=frozenset({"needs-review"}))
    assert int(report.exit_code) == 1


def test_a_version_2_result_in_the_store_is_a_miss_not_a_crash(tmp_path: Path) -> None:
    invoice = PrintedInvoice()
    pdf = invoice.pdf(tmp_path / "a.pdf")
    engine = SureEngine(pages_answer(invoice))
    batch(tmp_path, engine, [pdf])
    store = tmp_path / "out" / ".llamadoc" / "results"
    entries = [p for p in store.rglob("*.json") if "tmp" not in p.relative_to(store).parts]
    assert entries
    for entry in entries:  # what version 2 wrote: no values, no review
        body = json.loads(entry.read_text())
        for key in ("values", "needs_review", "review", "duplicates"):
            del body[key]
        body["schema_version"] = 2
        entry.write_text(json.dumps(body))
    calls = len(engine.requests)
    report, out = batch(tmp_path, engine, [pdf])
    assert len(engine.requests) > calls and report.cached == 0  # read again, not taken from the store
    assert any("could not be read" in note for note in report.notes)
    assert json.loads((out / "a.json").read_text())["schema_version"] == 3


def test_export_writes_tables_and_e_invoices(tmp_path: Path, run_cli: Any) -> None:
    good, wrong = PrintedInvoice(), wrong_ids(PrintedInvoice(number="RE-2026-0900", two_pages=True))
    unfinished = PrintedInvoice(number="RE-2026-0901")
    answers = {"a": good.answers(), "b": wrong.answers(), "c": [json.dumps(unfinished.fields | {"net_total": None})]}
    order = ["a", "b", "b", "c"]

    def answer(req: GenerationRequest, n: int) -> str:
        key = order[n - 1]
        return answers[key][order[:n].count(key) - 1]

    paths = [good.pdf(tmp_path / "a.pdf"), wrong.pdf(tmp_path / "b.pdf"), unfinished.pdf(tmp_path / "c.pdf")]
    _, out = batch(tmp_path, SureEngine(answer), paths)

    result = run_cli("export", str(out), "--to", "csv")
    assert result.exit_code == 0, result.stderr
    with (out / "export" / "invoices.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["invoice_number"] for r in rows] == [good.number, wrong.number, unfinished.number]
    assert rows[0]["gross_total page"] == "1" and rows[1]["gross_total page"] == "2"
    assert rows[0]["needs_review"] == "False" and rows[1]["needs_review"] == "True"
    assert "vat_id check failed" in rows[1]["seller.vat_id review"] and rows[0]["seller.vat_id review"] == ""
    with (out / "export" / "line_items.csv").open(encoding="utf-8") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 12 and [r["line"] for r in lines[4:8]] == ["1", "2", "3", "4"]
    assert lines[7]["amount page"] == "2" and float(lines[7]["amount confidence"]) > 0.9

    assert run_cli("export", str(out), "--to", "xlsx").exit_code == 0
    from openpyxl import load_workbook

    book = load_workbook(out / "export" / "invoices.xlsx")
    assert book.sheetnames == ["invoices", "line items"] and book["line items"].max_row == 13

    assert run_cli("export", str(out), "--to", "jsonl").exit_code == 0
    lines_ = (out / "export" / "invoices.jsonl").read_text().splitlines()
    assert json.loads(lines_[1])["values"]["gross_total"]["page"] == 2
    again = run_cli("export", str(out), "--to", "csv")  # an export's own tables are never read as results
    assert again.exit_code == 0 and "invoices.jsonl" not in again.stderr, again.stderr

    for kind in ("cii", "ubl"):
        result = run_cli("export", str(out), "--to", kind)
        assert result.exit_code == 1  # the unfinished invoice is left out, and named
        assert f"{paths[2]}: not exported: no net_total" in result.stderr
        written = sorted((out / "export" / kind).glob("*.xml"))
        assert [p.name for p in written] == ["a.xml", "b.xml"]
        back = einvoice.parse(written[0].read_bytes()).to_fields()
        expected = good.fields | {"seller": good.fields["seller"] | {"address": good.seller_address + ", DE"}}
        assert back == expected


def test_an_e_invoice_exported_from_its_own_xml_reads_back_the_same(tmp_path: Path, run_cli: Any) -> None:
    inv = Invoice()
    pdf = make_einvoice_pdf(tmp_path / "fx.pdf", inv)
    _, out = batch(tmp_path, ScriptedEngine(lambda req, n: "{}"), [pdf])
    for kind in ("cii", "ubl"):
        assert run_cli("export", str(out), "--to", kind).exit_code == 0
        [xml] = (out / "export" / kind).glob("*.xml")
        assert einvoice.parse(xml.read_bytes()).to_fields() == inv.fields


def test_export_refuses_what_is_not_a_folder_of_results(tmp_path: Path, run_cli: Any) -> None:
    result = run_cli("export", str(tmp_path / "nothing"), "--to", "csv")
    assert result.exit_code == 2 and "is not a folder of results" in result.stderr
    (tmp_path / "old.json").write_text(json.dumps({"schema_version": 2, "source": "x"}))
    result = run_cli("export", str(tmp_path), "--to", "csv")
    assert result.exit_code == 1 and "schema version 2; run the batch again" in result.stderr
    assert run_cli("export", str(tmp_path), "--to", "pdf").exit_code == 2


CORPUS_EINVOICES = sorted((CORPUS / "zugferd_corpus").glob("ZUGFeRDv2_correct/*.xml"))


@pytest.mark.skipif(not CORPUS_EINVOICES, reason=f"the shared corpus is not at {CORPUS}")
def test_corpus_e_invoices_round_trip_through_both_syntaxes() -> None:
    from llamadoc.outputs.export import incomplete, to_cii, to_ubl

    tried = 0
    for xml in CORPUS_EINVOICES:
        fields = einvoice.parse(xml.read_bytes()).to_fields()
        if incomplete(fields) is not None:
            continue
        tried += 1
        for make in (to_cii, to_ubl):
            assert einvoice.parse(make(fields)).to_fields() == fields, (xml.name, make.__name__)
    assert tried >= 5
