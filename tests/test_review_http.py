"""The review page's routes over HTTP, against `llamadoc review` running in its own process:
the origin and host rules, ids and paths that name nothing, two reviewers on one batch, a
damaged decision file, and what a decision leaves on disk."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.review_helpers import QUEUE, Made, make_batch, queue_names, reviewing

SESSION_A, SESSION_B = "a" * 16, "b" * 16


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    return make_batch(tmp_path_factory.mktemp("review-http"))


@pytest.fixture
def fresh(made: Made, tmp_path: Path) -> Made:
    """The module's batch with no decisions yet (a copy, so each test decides on its own)."""
    out = tmp_path / "out"
    shutil.copytree(made.out, out)
    return Made(out=out, docs=made.docs, wrong=made.wrong)


def ids(url: str) -> dict[str, str]:
    return {item["name"]: item["id"] for item in httpx.get(url + "api/queue").json()["items"]}


def post(url: str, path: str, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    return httpx.post(url + path, json=body, **kwargs)


def test_the_queue_puts_what_needs_a_look_first_with_its_reasons(fresh: Made) -> None:
    with reviewing(fresh.out) as review:
        body = httpx.get(review.url + "api/queue").json()
    assert queue_names(body) == QUEUE
    reasons = {item["name"]: item["reasons"] for item in body["items"]}
    assert reasons == {"wrong.pdf": ["failed check", "low confidence"], "absent.pdf": ["no evidence", "low confidence"],
                       "again.pdf": ["duplicate"], "first.pdf": ["duplicate"], "clean.pdf": []}
    assert body["reasons"] == {"not read": 0, "failed check": 1, "no evidence": 1, "low confidence": 2, "duplicate": 2}
    assert body["reviewed"] == 0


def test_origin_and_host_are_checked_as_the_server_checks_them(fresh: Made) -> None:
    with reviewing(fresh.out) as review:
        url = review.url
        evil = httpx.post(url + "api/documents/" + "0" * 20 + "/decision", headers={"Origin": "http://evil.example"},
                          json={"session": SESSION_A, "decision": "approved"})
        rebound = httpx.get(url + "api/queue", headers={"Host": "attacker.example"})
        local = httpx.get(url + "api/queue", headers={"Origin": "http://localhost:3000"})
        preflight = httpx.options(url + "api/queue", headers={"Origin": "http://evil.example",
                                                               "Access-Control-Request-Method": "POST"})
    assert evil.status_code == 403 and "evil.example" in evil.json()["error"]
    assert "set LLAMADOC_ORIGINS=ORIGIN for llamadoc review" in evil.json()["error"]
    assert rebound.status_code == 403 and "DNS rebinding" in rebound.json()["error"]
    assert f"open the page at {url}" in rebound.json()["error"]
    assert local.status_code == 200 and local.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert preflight.status_code == 403


def test_llamadoc_origins_lets_an_origin_in(fresh: Made) -> None:
    with reviewing(fresh.out, env={"LLAMADOC_ORIGINS": "https://books.example.com"}) as review:
        allowed = httpx.get(review.url + "api/queue", headers={"Origin": "https://books.example.com"})
    assert allowed.status_code == 200


def test_ids_pages_and_paths_that_name_nothing_are_404_and_never_a_file(fresh: Made) -> None:
    with reviewing(fresh.out) as review:
        url = review.url
        doc = ids(url)["wrong.pdf"]
        answers = {
            "short id": httpx.get(url + "api/documents/xyz"),
            "unknown id": httpx.get(url + "api/documents/" + "f" * 20),
            "page 0": httpx.get(url + f"api/documents/{doc}/pages/0"),
            "page 9": httpx.get(url + f"api/documents/{doc}/pages/9"),
            "asset": httpx.get(url + "assets/app.py"),
        }
        # Paths a client may send as it likes (httpx would tidy them): raw, encoded, doubled.
        with httpx.Client(base_url=url) as client:
            for raw in ("/assets/..%2f..%2fapp.py", "/assets/%2e%2e%2f%2e%2e%2fbatch.py", "/assets/....//app.py",
                        "/api/documents/..%2f..%2f..%2fetc%2fpasswd", "/api/documents/%2e%2e/pages/1",
                        "/../../../../etc/passwd", "/assets/review.js%00.py"):
                answers[raw] = client.send(httpx.Request("GET", url.rstrip("/") + raw))
        image = httpx.get(url + f"api/documents/{doc}/pages/1")
    for what, answer in answers.items():
        assert answer.status_code == 404, what
        assert "root:" not in answer.text and "import" not in answer.text, what
        if answer.headers.get("content-type", "").startswith("application/json"):
            assert "\n" not in answer.json()["error"], what
    assert "not a document id" in answers["short id"].json()["error"]
    assert "no document ffff" in answers["unknown id"].json()["error"]
    assert "has no page 9" in answers["page 9"].json()["error"]
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert image.content[:3] == b"\xff\xd8\xff"


def test_the_page_and_its_assets_come_from_the_package_with_a_strict_policy(fresh: Made) -> None:
    with reviewing(fresh.out) as review:
        page = httpx.get(review.url)
        script = httpx.get(review.url + "assets/review.js")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
    assert page.status_code == 200 and 'src="assets/review.js"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from the network
    assert script.status_code == 200 and "http" not in script.text.replace("https", "").lower().replace(
        "xmlhttp", "")


def test_changes_are_json_only_and_small(fresh: Made) -> None:
    with reviewing(fresh.out) as review:
        doc = ids(review.url)["wrong.pdf"]
        form = httpx.post(review.url + f"api/documents/{doc}/decision", content=json.dumps(
            {"session": SESSION_A, "decision": "approved"}), headers={"Content-Type": "text/plain"})
        huge = httpx.post(review.url + f"api/documents/{doc}/check", json={"values": {"x": "y" * (2 << 20)}})
        no_session = post(review.url, f"api/documents/{doc}/decision", {"decision": "approved"})
        bad = post(review.url, f"api/documents/{doc}/decision", {"session": SESSION_A, "decision": "maybe"})
        unknown_field = post(review.url, f"api/documents/{doc}/check", {"values": {"no_such.field": "1"}})
        infinite = {what: httpx.post(review.url + f"api/documents/{doc}/decision", content=body.replace(
            "SESSION", SESSION_A), headers={"Content-Type": "application/json"}) for what, body in (
            ("1e999", '{"session": "SESSION", "decision": "approved", "values": {"net_total": 1e999}}'),
            ("NaN", '{"session": "SESSION", "decision": "approved", "values": {"net_total": NaN}}'))}
        still = httpx.get(review.url + f"api/documents/{doc}")
    assert all(r.status_code == 400 and "finite" in r.json()["error"] for r in infinite.values()), infinite
    assert still.status_code == 200
    assert form.status_code == 415 and huge.status_code == 413
    assert no_session.status_code == 400 and bad.status_code == 400
    assert unknown_field.status_code == 400 and "no field 'no_such.field'" in unknown_field.json()["error"]
    assert not (fresh.out / ".review" / "decisions").exists()


def test_an_edit_is_checked_at_once_and_a_decision_lands_beside_the_results(fresh: Made) -> None:
    result = fresh.out / "wrong.json"
    before = result.read_bytes()
    with reviewing(fresh.out) as review:
        doc = ids(review.url)["wrong.pdf"]
        checked = post(review.url, f"api/documents/{doc}/check", {"values": {
            "seller.vat_id": "DE136695976", "net_total": "2000", "iban": "DE89370400440532013001"}}).json()
        assert post(review.url, f"api/documents/{doc}/hold", {"session": SESSION_A}).status_code == 200
        decided = post(review.url, f"api/documents/{doc}/decision", {
            "session": SESSION_A, "decision": "approved", "note": "VAT ID from the letterhead",
            "values": {"seller.vat_id": "DE136695976", "iban": "DE89370400440532013000"}, "base": 0})
        queue = httpx.get(review.url + "api/queue").json()
        shown = httpx.get(review.url + f"api/documents/{doc}").json()
    vat = {c["name"].split(":")[0]: c["status"] for c in checked["values"]["seller.vat_id"]["checks"]}
    assert vat == {"vat_id": "pass"}
    assert [c["status"] for c in checked["values"]["iban"]["checks"]] == ["fail"]
    assert checked["values"]["net_total"]["value"] == 2000.0  # a number, as the model's was
    sums = {c["name"]: c["status"] for c in checked["checks"]}
    assert sums["arithmetic:line_items_sum"] == "fail" and sums["arithmetic:net_plus_tax"] == "fail"
    assert sums["schema"] == "pass"
    assert decided.status_code == 200, decided.text
    assert result.read_bytes() == before  # the model's result stays as written
    stored = json.loads((fresh.out / ".review" / "decisions" / f"{doc}.json").read_text())
    assert stored["decision"] == "approved" and stored["revision"] == 1 and stored["note"] == "VAT ID from the letterhead"
    assert stored["changed"] == {"seller.vat_id": {"old": "DE136695975", "new": "DE136695976"},
                                 "iban": {"old": "DE89370400440532013001", "new": "DE89370400440532013000"}}
    assert stored["fields"]["seller"]["vat_id"] == "DE136695976"
    log = [json.loads(line) for line in (fresh.out / ".review" / "audit.jsonl").read_text().splitlines()]
    assert [(e["action"], e["field"]) for e in log] == [("edit", "seller.vat_id"), ("edit", "iban"), ("approve", None)]
    assert log[0]["old"] == "DE136695975" and log[0]["new"] == "DE136695976" and log[0]["document"].endswith("wrong.pdf")
    assert all(e["by"] and e["at"].endswith("Z") for e in log)
    assert queue["reviewed"] == 1 and shown["decision"]["by"] == log[0]["by"]


def test_two_reviewers_never_overwrite_each_other(fresh: Made) -> None:
    with reviewing(fresh.out) as one, reviewing(fresh.out) as other:
        doc = ids(one.url)["wrong.pdf"]
        assert post(one.url, f"api/documents/{doc}/hold", {"session": SESSION_A}).status_code == 200
        # Another tab of the same page, and another process on the same folder, find it taken.
        same_server = post(one.url, f"api/documents/{doc}/hold", {"session": SESSION_B})
        other_server = post(other.url, f"api/documents/{doc}/hold", {"session": SESSION_B})
        other_decides = post(other.url, f"api/documents/{doc}/decision",
                             {"session": SESSION_B, "decision": "rejected", "base": 0})
        assert post(one.url, f"api/documents/{doc}/decision",
                    {"session": SESSION_A, "decision": "approved", "base": 0}).status_code == 200
        # The first reviewer moves on: the document is free, but its decision is newer than what
        # the second saw (revision 0), so theirs is refused rather than written over it.
        assert post(one.url, f"api/documents/{doc}/release", {"session": SESSION_A}).status_code == 200
        assert post(other.url, f"api/documents/{doc}/hold", {"session": SESSION_B}).status_code == 200
        late = post(other.url, f"api/documents/{doc}/decision", {"session": SESSION_B, "decision": "rejected",
                                                                  "base": 0})
        after = post(other.url, f"api/documents/{doc}/decision", {"session": SESSION_B, "decision": "rejected",
                                                                   "note": "wrong supplier", "base": 1})
    assert same_server.status_code == 423 and "another review page" in same_server.json()["error"]
    assert other_server.status_code == 423 and "another reviewer" in other_server.json()["error"]
    assert other_decides.status_code == 423
    assert late.status_code == 409 and "approved" in late.json()["error"] and "reload" in late.json()["error"]
    assert after.status_code == 200 and after.json()["decision"]["revision"] == 2
    log = [json.loads(line) for line in (fresh.out / ".review" / "audit.jsonl").read_text().splitlines()]
    assert [e["action"] for e in log] == ["approve", "reject"]


def test_a_damaged_decision_file_is_one_clear_line_and_is_not_written_over(fresh: Made, run_cli: Any) -> None:
    with reviewing(fresh.out) as review:
        doc = ids(review.url)["wrong.pdf"]
        damaged = fresh.out / ".review" / "decisions" / f"{doc}.json"
        damaged.parent.mkdir(parents=True)
        damaged.write_text('{"format": 1, "id": "')  # cut short
        shown = httpx.get(review.url + f"api/documents/{doc}").json()
        queue = httpx.get(review.url + "api/queue").json()
        decided = post(review.url, f"api/documents/{doc}/decision",
                       {"session": SESSION_A, "decision": "approved", "base": 0})
    assert "is not JSON: a damaged review decision" in shown["decision_problem"]
    assert "move" in shown["decision_problem"] and str(damaged) in shown["decision_problem"]
    assert [i["damaged"] for i in queue["items"] if i["id"] == doc] == [True]
    assert decided.status_code == 409 and str(damaged) in decided.json()["error"]
    assert "\n" not in decided.json()["error"]
    assert damaged.read_text() == '{"format": 1, "id": "'
    exported = run_cli("export", str(fresh.out), "--to", "csv")
    assert exported.exit_code == 1 and "its review decision was not used" in exported.stderr


def test_a_damaged_result_file_is_one_problem_and_the_others_are_reviewed(fresh: Made) -> None:
    good = json.loads((fresh.out / "clean.json").read_text())
    for name, part in (("values", [1]), ("options", "x"), ("page_count", "two"), ("checks", ["x"])):
        (fresh.out / f"broken-{name}.json").write_text(json.dumps(good | {"source": f"/b/{name}.pdf", name: part}))
    with reviewing(fresh.out) as review:
        body = httpx.get(review.url + "api/queue").json()
    assert queue_names(body) == QUEUE
    assert sorted(p.split(":")[0] for p in body["problems"]) == [
        "broken-checks.json", "broken-options.json", "broken-page_count.json", "broken-values.json"]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)], ids=["sigterm", "ctrl-c"])
def test_a_signal_sent_on_hearing_the_page_is_up_stops_it(fresh: Made, signum: int, code: int) -> None:
    """At once, as a service manager or a script sends it: the line with the page's address is
    said only once the server hears signals (said before, a SIGTERM could go unheard)."""
    with reviewing(fresh.out) as review:
        review.process.send_signal(signum)
        assert review.process.wait(20) == code
        assert review.process.stderr is not None
        err = review.process.stderr.read().decode()
    assert f"stopped; every decision is kept in {fresh.out / '.review'}" in err
    assert all(line.startswith("llamadoc: ") for line in err.splitlines())  # no traceback, no warning


def test_a_results_folder_that_is_not_one_is_a_usage_error(tmp_path: Path, run_cli: Any) -> None:
    result = run_cli("review", str(tmp_path / "nowhere"), "--no-browser")
    assert result.exit_code == 2 and "is not a folder of results" in result.stderr


def test_a_document_not_read_comes_first_and_can_only_be_rejected(fresh: Made) -> None:
    result = fresh.out / "clean.json"
    body = json.loads(result.read_text())
    body.update(fields=None, values=[], status="failed", needs_review=True, review=["no fields were extracted"])
    result.write_text(json.dumps(body))
    with reviewing(fresh.out) as review:
        queue = httpx.get(review.url + "api/queue").json()
        doc = ids(review.url)["clean.pdf"]
        approve = post(review.url, f"api/documents/{doc}/decision", {"session": SESSION_A, "decision": "approved"})
        reject = post(review.url, f"api/documents/{doc}/decision", {"session": SESSION_A, "decision": "rejected",
                                                                   "note": "unreadable scan"})
    assert queue_names(queue)[0] == "clean.pdf" and queue["items"][0]["reasons"] == ["not read"]
    assert approve.status_code == 400 and "no fields" in approve.json()["error"]
    assert reject.status_code == 200 and reject.json()["decision"]["fields"] is None


def test_a_decision_on_an_earlier_result_is_shown_as_such_and_not_counted(fresh: Made) -> None:
    with reviewing(fresh.out) as review:
        doc = ids(review.url)["wrong.pdf"]
        assert post(review.url, f"api/documents/{doc}/decision",
                    {"session": SESSION_A, "decision": "approved"}).status_code == 200
        assert httpx.get(review.url + "api/queue").json()["reviewed"] == 1
        result = fresh.out / "wrong.json"
        body = json.loads(result.read_text())
        body["timings_ms"] = {"total": 2.0}  # the batch ran again and wrote another result
        result.write_text(json.dumps(body))
        queue = httpx.get(review.url + "api/queue").json()
        shown = httpx.get(review.url + f"api/documents/{doc}").json()
    assert queue["reviewed"] == 0 and [i["decision"] for i in queue["items"] if i["id"] == doc] == [None]
    assert "on an earlier result of the batch" in shown["decision_problem"]


def test_pages_come_from_the_documents_the_results_name_and_only_unchanged(fresh: Made, tmp_path: Path) -> None:
    elsewhere = tmp_path / "archive" / "invoices"
    elsewhere.mkdir(parents=True)
    for name, path in fresh.docs.items():
        shutil.copyfile(path, elsewhere / name)
    for result in fresh.out.glob("*.json"):  # the batch ran with relative paths, in another folder
        body = json.loads(result.read_text())
        body["source"] = "invoices/" + Path(body["source"]).name
        result.write_text(json.dumps(body))
    (elsewhere / "absent.pdf").write_bytes((elsewhere / "absent.pdf").read_bytes() + b"\n% edited since\n")
    with reviewing(fresh.out, cwd=tmp_path) as review:
        missing = httpx.get(review.url + f"api/documents/{ids(review.url)['wrong.pdf']}").json()["images"]
    with reviewing(fresh.out, "--documents", str(tmp_path / "archive"), cwd=tmp_path) as review:
        found = ids(review.url)
        shown = httpx.get(review.url + f"api/documents/{found['wrong.pdf']}").json()["images"]
        image = httpx.get(review.url + f"api/documents/{found['wrong.pdf']}/pages/1")
        changed = httpx.get(review.url + f"api/documents/{found['absent.pdf']}").json()["images"]
        refused = httpx.get(review.url + f"api/documents/{found['absent.pdf']}/pages/1")
    assert "invoices/wrong.pdf is not found" in missing and "--documents" in missing
    assert shown is None and image.status_code == 200
    assert "has changed since the batch read it" in changed
    assert refused.status_code == 404 and "has changed" in refused.json()["error"]
