"""Decisions beside a batch, from the library: what export makes of an approved, a rejected, a
stale and a damaged decision; the audit log's lines; and the review page under llamadoc serve."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from llamadoc.errors import UsageError
from llamadoc.outputs.decisions import Conflict, DecisionError, Decisions
from llamadoc.outputs.export import export, load_batch
from llamadoc.review.batch import coerce
from tests.review_helpers import QUEUE, Made, make_batch


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    return make_batch(tmp_path_factory.mktemp("review-decisions"))


@pytest.fixture
def fresh(made: Made, tmp_path: Path) -> Made:
    out = tmp_path / "out"
    shutil.copytree(made.out, out)
    return Made(out=out, docs=made.docs, wrong=made.wrong)


def entry_of(out: Path, name: str) -> Any:
    found, _ = load_batch(out)
    return next((entry, doc) for entry, doc in found if doc.source.endswith(name))


def test_export_takes_approved_values_leaves_rejected_invoices_out_and_names_the_reviewer(fresh: Made) -> None:
    decisions = Decisions(fresh.out)
    entry, doc = entry_of(fresh.out, "wrong.pdf")
    record = json.loads(json.dumps(doc.fields))
    record["iban"] = "DE89370400440532013000"
    decisions.decide(entry, doc.source, "approved", record,
                     {"iban": {"old": doc.fields["iban"], "new": "DE89370400440532013000"}}, "IBAN from the letter",
                     by="alice")
    entry, doc = entry_of(fresh.out, "again.pdf")
    decisions.decide(entry, doc.source, "rejected", doc.fields, {}, "a copy of first.pdf", by="bob")

    done = export(fresh.out, "jsonl")
    lines = {Path(line["source"]).name: line for line in map(json.loads, done.written[0].read_text().splitlines())}
    assert done.rows == 5 and done.reviewed == 2 and done.skipped == [] and done.notes == []
    assert lines["wrong.pdf"]["fields"]["iban"] == "DE89370400440532013000"
    assert lines["wrong.pdf"]["reviewed"]["by"] == "alice" and lines["wrong.pdf"]["reviewed"]["decision"] == "approved"
    assert lines["again.pdf"]["reviewed"]["decision"] == "rejected" and lines["clean.pdf"]["reviewed"] is None
    assert "changed in review" in lines["wrong.pdf"]["values"]["iban"]["review"]

    ubl = export(fresh.out, "ubl")
    assert any("again.pdf: not exported: bob rejected it in review (a copy of first.pdf)" in s for s in ubl.skipped)
    assert {p.name for p in ubl.written} == {"wrong.xml", "absent.xml", "first.xml", "clean.xml"}
    # The approved IBAN is the one in the e-invoice.
    assert "DE89370400440532013000" in (fresh.out / "export" / "ubl" / "wrong.xml").read_text()

    log = decisions.audit()
    assert [(e["action"], e["by"], e["field"]) for e in log] == [
        ("edit", "alice", "iban"), ("approve", "alice", None), ("reject", "bob", None)]


def test_a_decision_on_an_earlier_result_is_not_exported_and_a_note_says_so(fresh: Made) -> None:
    entry, doc = entry_of(fresh.out, "wrong.pdf")
    record = dict(doc.fields, invoice_number="RE-2026-9999")
    Decisions(fresh.out).decide(entry, doc.source, "approved", record,
                                {"invoice_number": {"old": doc.fields["invoice_number"], "new": "RE-2026-9999"}})
    body = json.loads((fresh.out / "wrong.json").read_text())
    body["timings_ms"] = {"total": 1.0}  # the batch ran again: another result for the same document
    (fresh.out / "wrong.json").write_text(json.dumps(body))
    done = export(fresh.out, "csv", fresh.out / "x")
    with (fresh.out / "x" / "invoices.csv").open(encoding="utf-8") as f:
        rows = {Path(r["source"]).name: r for r in csv.DictReader(f)}
    assert rows["wrong.pdf"]["invoice_number"] == "RE-2026-0900" and rows["wrong.pdf"]["reviewed"] == ""
    assert len(done.notes) == 1 and "made on an earlier result" in done.notes[0] and done.reviewed == 0


def test_a_decision_names_the_revision_it_follows(fresh: Made) -> None:
    decisions = Decisions(fresh.out)
    entry, doc = entry_of(fresh.out, "clean.pdf")
    first = decisions.decide(entry, doc.source, "approved", doc.fields, {}, base=0, by="alice")
    with pytest.raises(Conflict, match="alice approved .*clean.pdf"):
        decisions.decide(entry, doc.source, "rejected", doc.fields, {}, base=0, by="bob")
    second = decisions.decide(entry, doc.source, "rejected", doc.fields, {}, base=first.revision, by="bob")
    assert second.revision == 2 and decisions.get(entry.id) == second
    with pytest.raises(DecisionError, match="not a document id"):
        decisions.get("../../etc/passwd")


@pytest.mark.parametrize(("typed", "original", "schema", "value"), [
    ("1200", 1200.0, {"type": ["number", "null"]}, 1200.0),
    ("10", 10, {"type": ["number", "null"]}, 10),
    ("1.5", 10, {}, 1.5),
    ("1.234,50", 1234.5, {"type": "number"}, 1234.5),  # as a German invoice prints it
    ("2634,20", 1200.0, {"type": ["number", "null"]}, 2634.2),
    ("1,234", 1234.5, {"type": "number"}, "1,234"),  # 1234 or 1.234: kept as typed, for its check to say so
    ("", "DE123", {}, None),
    ("  ATU13585627 ", "x", {}, "ATU13585627"),
    ("0815", "RE-0815", {"type": "string"}, "0815"),
    ("9" * 400, 1200.0, {"type": "number"}, "9" * 400),  # past a float's range: kept as text, never inf
])
def test_what_a_person_types_becomes_a_value_of_the_kind_it_replaces(typed: str, original: Any,
                                                                       schema: dict[str, Any], value: Any) -> None:
    got = coerce(typed, original, schema)
    assert got == value and type(got) is type(value)


def test_the_audit_log_records_each_edit_once(fresh: Made) -> None:
    decisions = Decisions(fresh.out)
    entry, doc = entry_of(fresh.out, "absent.pdf")
    old = doc.fields["buyer"]["name"]
    edit = {"buyer.name": {"old": old, "new": "Acme GmbH"}}
    first = decisions.decide(entry, doc.source, "approved", doc.fields, edit, by="alice")
    second = decisions.decide(entry, doc.source, "rejected", doc.fields, edit, base=first.revision, by="bob")
    decisions.decide(entry, doc.source, "approved", doc.fields, {}, base=second.revision, by="carol")
    log = [(e["action"], e["by"], e["field"], e.get("old"), e.get("new")) for e in decisions.audit()]
    assert log == [("edit", "alice", "buyer.name", old, "Acme GmbH"), ("approve", "alice", None, None, None),
                   ("reject", "bob", None, None, None),  # the same edit, not logged again
                   ("edit", "carol", "buyer.name", "Acme GmbH", old), ("approve", "carol", None, None, None)]


def test_infinity_is_no_value_a_person_can_type() -> None:
    with pytest.raises(UsageError, match="finite number"):
        coerce(float("inf"), 1200.0, {"type": "number"})


def test_a_decision_whose_changes_are_damaged_is_reported_and_not_used(fresh: Made) -> None:
    decisions = Decisions(fresh.out)
    entry, doc = entry_of(fresh.out, "clean.pdf")
    made = decisions.decide(entry, doc.source, "approved", doc.fields, {}, by="alice")
    body = made.to_json() | {"changed": {"invoice_number": "X-9"}}  # an edit by hand, not the page's shape
    decisions.path(entry.id).write_text(json.dumps(body))
    done = export(fresh.out, "csv", fresh.out / "x")
    assert any("clean.pdf: its review decision was not used" in s and "damaged" in s for s in done.skipped)
    assert done.reviewed == 0


def test_serve_offers_the_review_page_under_review(fresh: Made, text_model: Path, mmproj: Path,
                                                   monkeypatch: pytest.MonkeyPatch, run_cli: Any) -> None:
    from llamadoc.guard import GuardPolicy
    from llamadoc.review import ReviewOptions, app
    from tests.server_helpers import serving

    monkeypatch.chdir(fresh.out.parent)
    with serving(mounts={"/review": app(ReviewOptions(out=fresh.out))}, model=str(text_model), mmproj=str(mmproj),
                 guard=GuardPolicy(mode="off")) as served:
        bare = httpx.get(served.url + "/review")
        page = httpx.get(served.url + "/review/")
        queue = httpx.get(served.url + "/review/api/queue")
        evil = httpx.get(served.url + "/review/api/queue", headers={"Origin": "http://evil.example"})
    assert bare.status_code == 307 and bare.headers["location"].endswith("/review/")
    assert page.status_code == 200 and 'src="assets/review.js"' in page.text
    assert [i["name"] for i in queue.json()["items"]] == QUEUE
    assert evil.status_code == 403 and "llamadoc serve" in evil.json()["error"]
    key = fresh.out.parent / "key"
    key.write_text("k" * 32)
    refused = run_cli("serve", "--review", str(fresh.out), "--api-key-file", str(key))
    assert refused.exit_code == 2 and "cannot send the API key" in refused.stderr
