"""Pipeline logic with a scripted engine: combining, skipping, re-asking, statuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llamadoc.batch.pipeline import document_status
from llamadoc.engines.base import GenerationRequest
from llamadoc.outputs.report import Report
from llamadoc.results import DocumentResult, PageResult, Status
from llamadoc.tasks import NOT_FOUND, Ask, Extract, Task
from tests.conftest import make_pdf
from tests.fakes import PatientEngine, ScriptedEngine, Waiting, run_pipeline

FILLER = "\n".join(["lorem ipsum dolor sit amet"] * 12)


def run(engine: ScriptedEngine, task: Task, *paths: Path) -> list[DocumentResult]:
    return run_pipeline(engine, task, paths)


def test_ask_combines_the_pages_that_answer_and_cites_them(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "r.pdf", [f"Revenue 10 {FILLER}", f"Revenue 12 {FILLER}", f"Revenue none {FILLER}"])

    def answer(req: GenerationRequest, n: int) -> str:
        if not req.images:
            return "Revenue grew from 10 to 12 (page 1, page 2)."
        return {1: "10", 2: "12"}.get(n, NOT_FOUND)

    engine = ScriptedEngine(answer)
    [doc] = run(engine, Ask("What is the revenue?"), pdf)
    assert doc.status is Status.OK and doc.cited_pages == [1, 2]
    assert doc.answer.startswith("Revenue grew")
    combine = engine.requests[-1]
    assert not combine.images and "[page 1] 10" in combine.prompt and "[page 2] 12" in combine.prompt


def test_ask_skips_pages_the_text_layer_rules_out(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "r.pdf", [f"Quarterly revenue table {FILLER}", FILLER, FILLER])
    engine = ScriptedEngine(lambda req, n: "42")
    [doc] = run(engine, Ask("What is the quarterly revenue?"), pdf)
    assert doc.pages_read == [1] and len(engine.requests) == 1
    assert [p.status for p in doc.pages] == [Status.OK, Status.SKIPPED, Status.SKIPPED]
    assert "shares no word" in (doc.pages[1].skipped_reason or "")
    [doc] = run(engine, Ask("What is the quarterly revenue?", all_pages=True), pdf)
    assert doc.pages_read == [1, 2, 3]


def test_extract_reasks_once_then_records_the_failure(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "i.pdf", ["Invoice 7"])
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fixed = ScriptedEngine(lambda req, n: '{"n": "seven"}' if n == 1 else '{"n": 7}')
    [doc] = run(fixed, Extract(schema=schema), pdf)
    assert doc.status is Status.OK and doc.fields == {"n": 7}
    assert "previous answer did not match" in fixed.requests[1].prompt
    assert doc.pages[0].status is Status.OK and not doc.pages[0].errors
    assert doc.pages[0].warnings == ["the first answer was asked again: n: 'seven' is not of type 'integer'"]
    assert doc.pages[0].tokens["prompt"] == 20  # both calls counted

    stubborn = ScriptedEngine(lambda req, n: '{"n": "seven"}')
    [doc] = run(stubborn, Extract(schema=schema), pdf)
    assert len(stubborn.requests) == 2 and doc.status is Status.FAILED
    assert doc.pages[0].fields == {"n": "seven"}  # kept for inspection, marked failed
    assert [(c.name, c.status) for c in doc.pages[0].checks] == [("schema", "fail")]
    assert Report.problems(doc) == [f"{pdf}: page 1: n: 'seven' is not of type 'integer'"]


def test_extract_merges_fields_across_pages(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "i.pdf", ["Invoice A-1", "Total 12.50"])
    schema = {"type": "object", "properties": {"id": {"type": ["string", "null"]},
                                                "total": {"type": ["number", "null"]}}}
    answers = {1: '{"id": "A-1", "total": null}', 2: '{"id": null, "total": 12.5}'}
    [doc] = run(ScriptedEngine(lambda req, n: answers[n]), Extract(schema=schema), pdf)
    assert doc.fields == {"id": "A-1", "total": 12.5} and doc.field_pages == {"id": 1, "total": 2}
    assert [(c.name, c.status) for c in doc.checks] == [("schema", "pass")]
    # Each value carries its own checks: both are printed, each on its own page.
    assert [(c.name, c.status) for v in doc.values for c in v.checks] == [
        ("grounding:id", "pass"), ("grounding:total", "pass"), ("amount:total", "pass")]
    assert [v.evidence.page for v in doc.values] == [1, 2]


def test_failures_are_data_and_the_batch_goes_on(tmp_path: Path) -> None:
    good = make_pdf(tmp_path / "good.pdf", ["fine"])
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"%PDF-1.4 truncated")
    docs = run(ScriptedEngine(lambda req, n: "ok"), Ask("q?"), bad, tmp_path / "missing.pdf", good)
    assert [d.status for d in docs] == [Status.FAILED, Status.FAILED, Status.OK]
    assert "does not exist" in docs[1].errors[0]
    report = Report()
    for d in docs:
        report.add(d)
    assert int(report.exit_code) == 1


def test_document_status() -> None:
    from llamadoc.results import Verdict

    ok, failed, blocked = (PageResult(index=i, status=s) for i, s in
                           enumerate((Status.OK, Status.FAILED, Status.BLOCKED), 1))
    skipped = PageResult(index=9, status=Status.SKIPPED)

    def status(*pages: PageResult, **doc: object) -> Status:
        return document_status(DocumentResult(source="d", task="ask", pages=list(pages), **doc))  # type: ignore[arg-type]

    assert status(ok, skipped) is Status.OK
    assert status(ok, failed) is Status.PARTIAL
    assert status(failed, blocked) is Status.FAILED
    assert status(blocked, skipped) is Status.BLOCKED
    withheld = Verdict(safe=False, categories=["S1"])
    assert status(ok, guard_out=withheld) is Status.BLOCKED  # the combined answer was withheld
    assert status(ok, guard_out=withheld, answer="flagged, kept") is Status.OK
    assert status(ok, guard_out=Verdict(safe=None, error="junk")) is Status.FAILED
    assert document_status(DocumentResult(source="d", task="ask"), opened=False) is Status.FAILED


def test_pages_of_several_documents_decode_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pymupdf

    paths = []
    for i in range(3):  # every page a different width, so an answer given to the wrong page shows
        pdf = pymupdf.open()
        for p in range(3):
            pdf.new_page(width=300 + 40 * (3 * i + p), height=400).insert_text((20, 40), f"Invoice {i}-{p}")
        pdf.save(str(tmp_path / f"d{i}.pdf"))
        paths.append(tmp_path / f"d{i}.pdf")

    def answer(req: GenerationRequest, n: int) -> str:
        return json.dumps({"n": req.images[0].width})  # what this page shows, whatever the order

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    # A model slower than rasterising, as real ones are: each call waits for 4 pages, so batches fill up.
    batched_engine = PatientEngine(answer, Waiting(4, monkeypatch))
    many = run(batched_engine, Extract(schema=schema), *paths)
    assert [d.source for d in many] == [str(p) for p in paths]  # documents come out in order
    assert [[p.index for p in d.pages] for d in many] == [[1, 2, 3]] * 3
    widths = [p.width for d in many for p in d.pages]
    assert len(set(widths)) == 9 and widths == sorted(widths)
    assert [p.fields for d in many for p in d.pages] == [{"n": w} for w in widths]  # each page its own answer
    assert all(d.status is Status.OK for d in many)
    assert len(batched_engine.requests) == 9 and max(batched_engine.batches) == 4


def test_a_failing_page_in_a_batch_does_not_fail_the_others(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from llamadoc.errors import PageError

    pdf = make_pdf(tmp_path / "d.pdf", ["one", "two", "three"], rotate={2: 90})

    class Picky(PatientEngine):
        """Fails on landscape pages, and fails a whole batch that holds one."""

        def generate(self, request: GenerationRequest) -> Any:
            if request.images and request.images[0].width > request.images[0].height:
                raise PageError("the page does not fit")
            return super().generate(request)

    # Each call waits for the pages left, so page 2 is always asked in a batch with another.
    engine = Picky(lambda req, n: "fine", Waiting(3, monkeypatch))
    [doc] = run(engine, Ask("q?"), pdf)
    assert [p.status for p in doc.pages] == [Status.OK, Status.FAILED, Status.OK]
    assert doc.pages[1].errors == ["the page does not fit"] and doc.status is Status.PARTIAL
    assert max(engine.batches) > 1  # the batch holding page 2 failed whole, and was asked again page by page
