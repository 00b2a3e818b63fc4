"""Trust features in the pipeline: blank pages, runaway output, grounding and
arithmetic on extractions, embedded e-invoices, and --fail-on for checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pymupdf
import pytest

from llamadoc.batch.options import RunOptions
from llamadoc.inputs.raster import RasterOptions
from llamadoc.results import Status
from llamadoc.tasks import Describe, Extract, load_schema
from tests.conftest import CORPUS, make_pdf
from tests.documents import Invoice, cii_xml, make_einvoice_pdf
from tests.fakes import ScriptedEngine, run_pipeline

INVOICE_SCHEMA = Path(__file__).resolve().parents[1] / "examples" / "invoice.yaml"
ZUGFERD = CORPUS / "zugferd_corpus" / "ZUGFeRDv2_correct" / "Facture_FR_BASICWL.pdf"
needs_corpus = pytest.mark.skipif(not ZUGFERD.is_file(), reason=f"the shared corpus is not at {CORPUS}")


def run(engine: ScriptedEngine, task: Any, path: Path) -> Any:
    [doc] = run_pipeline(engine, task, [path], RunOptions(raster=RasterOptions(dpi=30)))
    return doc


def invoice_task(embedded: str = "prefer") -> Extract:
    return Extract(schema=load_schema(str(INVOICE_SCHEMA)), schema_path=str(INVOICE_SCHEMA), embedded=embedded)


def invoice_record(**values: Any) -> str:
    fields = {k: None for k in load_schema(str(INVOICE_SCHEMA))["required"]} | {"line_items": []}
    return json.dumps(fields | values)


def test_blank_pages_never_reach_the_model(tmp_path: Path) -> None:
    pdf = tmp_path / "b.pdf"
    doc = pymupdf.open()
    doc.new_page()  # blank
    doc.new_page().insert_text((72, 72), "Summary of results")
    doc.save(str(pdf))
    engine = ScriptedEngine(lambda req, n: "# Summary")
    result = run(engine, Describe(), pdf)
    assert len(engine.requests) == 1
    assert result.pages[0].status is Status.SKIPPED and result.pages[0].skipped_reason == "blank page"
    assert result.status is Status.OK and result.pages_read == [2]


def test_runaway_output_is_cut_with_a_status(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "r.pdf", ["Totals"])
    engine = ScriptedEngine(lambda req, n: "| Total | 12 |\n" + "| Total | 12 |\n" * 60)
    result = run(engine, Describe(), pdf)
    page = result.pages[0]
    assert page.answer == "| Total | 12 |" and page.status is Status.PARTIAL
    assert page.checks[0].name == "repetition" and page.checks[0].status == "fail"
    assert result.status is Status.PARTIAL


def test_extraction_is_grounded_and_added_up(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "i.pdf", ["Invoice INV-7  Date 03.08.2014", "Net 100.00 VAT 20.00 Total 120,00"])
    answers = {
        1: invoice_record(invoice_number="INV-7", issue_date="2014-08-03"),
        2: invoice_record(net_total=100.0, tax_total=20.0, gross_total=121.0),  # 121 is not on the page
    }
    result = run(ScriptedEngine(lambda req, n: answers[n]), invoice_task(), pdf)
    checks = {c.name: c for c in result.checks} | {c.name: c for v in result.values for c in v.checks}
    assert checks["grounding:invoice_number"].status == "pass" and checks["grounding:invoice_number"].data["page"] == 1
    assert checks["grounding:issue_date"].status == "pass"  # 03.08.2014 on the page
    assert checks["grounding:net_total"].status == "pass"
    assert checks["grounding:gross_total"].status == "fail"
    assert checks["arithmetic:net_plus_tax"].status == "fail"


def test_embedded_e_invoice_is_preferred_exactly(tmp_path: Path) -> None:
    inv = Invoice()
    engine = ScriptedEngine(lambda req, n: "{}")
    result = run(engine, invoice_task(), make_einvoice_pdf(tmp_path / "fx.pdf", inv))
    assert engine.requests == [] and result.embedded == "factur-x.xml"
    assert result.fields == inv.fields
    assert result.status is Status.OK and result.pages == [] and result.model.device is None  # no model needed
    assert {c.name: c.status for c in result.checks}["arithmetic:net_plus_tax"] == "pass"


@needs_corpus
def test_embedded_e_invoice_of_the_corpus_is_preferred_exactly() -> None:
    truth = json.loads(ZUGFERD.with_suffix(".fields.json").read_text())
    engine = ScriptedEngine(lambda req, n: "{}")
    result = run(engine, invoice_task(), ZUGFERD)
    assert engine.requests == [] and (result.embedded or "").lower() == truth["embedded_file"]
    assert result.fields["invoice_number"] == truth["invoice_number"]
    assert result.fields["gross_total"] == float(truth["grand_total"])


def test_embedded_compare_checks_the_model_against_the_xml(tmp_path: Path) -> None:
    inv = Invoice()
    pdf = make_einvoice_pdf(tmp_path / "fx.pdf", inv)
    wrong = invoice_record(invoice_number=inv.number, gross_total=1.0)
    engine = ScriptedEngine(lambda req, n: wrong)
    result = run(engine, invoice_task("compare"), pdf)
    assert engine.requests and result.embedded is None
    compared = {c.name: c.status for c in result.checks if c.name.startswith("embedded:")}
    assert compared["embedded:invoice_number"] == "pass" and compared["embedded:gross_total"] == "fail"
    ignored = run(ScriptedEngine(lambda req, n: wrong), invoice_task("ignore"), pdf)
    assert ignored.embedded is None and not any(c.name.startswith("embedded:") for c in ignored.checks)


def test_broken_embedded_xml_falls_back_to_the_pages(tmp_path: Path) -> None:
    broken = cii_xml().replace(b"</rsm:CrossIndustryInvoice>", b"")  # cut short: not well-formed
    pdf = make_einvoice_pdf(tmp_path / "broken.pdf", xml=broken)
    engine = ScriptedEngine(lambda req, n: invoice_record())
    result = run(engine, invoice_task(), pdf)
    assert engine.requests and result.embedded is None and result.status is Status.OK
    assert any("embedded e-invoice cannot be used" in w for w in result.warnings) and not result.errors


@needs_corpus
def test_broken_embedded_xml_of_the_corpus_falls_back_to_the_pages() -> None:
    broken = sorted((CORPUS / "zugferd_corpus" / "ZUGFeRDv2_fail").glob("*.pdf"))[0]
    engine = ScriptedEngine(lambda req, n: invoice_record())
    result = run(engine, invoice_task(), broken)
    assert engine.requests and result.embedded is None
    assert any("embedded e-invoice cannot be used" in w for w in result.warnings)


def test_a_schema_of_other_fields_is_not_replaced_by_the_xml(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"title": {"type": ["string", "null"]}}}
    engine = ScriptedEngine(lambda req, n: '{"title": null}')
    result = run(engine, Extract(schema=schema), make_einvoice_pdf(tmp_path / "fx.pdf"))
    assert engine.requests and result.embedded is None
    assert any("does not use the invoice field names" in w for w in result.warnings)


def test_fail_on_ungrounded_through_the_cli(run_cli: Any, model_args: list[str], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pdf = make_pdf(tmp_path / "i.pdf", ["Invoice INV-7"])
    engine = ScriptedEngine(lambda req, n: invoice_record(invoice_number="INV-8"))
    monkeypatch.setattr("llamadoc.engines.load_vision_engine", lambda *a: engine)
    args = ["extract", str(pdf), "--schema", str(INVOICE_SCHEMA), *model_args, "--format", "json"]
    assert run_cli(*args).exit_code == 0
    strict = run_cli(*args, "--fail-on", "failed,ungrounded", "--force")
    assert strict.exit_code == 1
    doc = json.loads(strict.stdout)
    value_checks = {c["name"]: c["status"] for v in doc["values"] for c in v["checks"]}
    assert value_checks["grounding:invoice_number"] == "fail"
