"""The review page in a real browser: headless Chromium from the OS packages (never a browser
download), driven by playwright. A person's path through a generated batch: the queue in
order, a field and its box, an edit and its check, approve, reload, the audit log and the
export; then the same from the keyboard alone, and every input labelled."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.review_helpers import QUEUE, Made, make_batch, reviewing

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    # Nothing but the page's own server: a request anywhere else fails the test.
    stray: list[str] = []
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith("http://127.0.0.1:")
                  else (stray.append(route.request.url), route.abort()))
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda err: errors.append(str(err)))
    opened.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and "423" not in msg.text
              else None)
    yield opened
    context.close()
    assert not stray, f"the page reached beyond its server: {stray}"
    assert not errors, f"the page had errors: {errors}"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    return make_batch(tmp_path_factory.mktemp("review-browser"))


@pytest.fixture
def fresh(made: Made, tmp_path: Path) -> Made:
    out = tmp_path / "out"
    shutil.copytree(made.out, out)
    return Made(out=out, docs=made.docs, wrong=made.wrong)


def field(page: Any, path: str) -> Any:
    return page.locator(f'.field[data-path="{path}"]')


def test_a_person_approves_a_corrected_invoice(page: Any, fresh: Made, run_cli: Any) -> None:
    from playwright.sync_api import expect

    with reviewing(fresh.out) as review:
        page.goto(review.url)
        names = page.locator("#queue .name")
        expect(names).to_have_text(QUEUE)  # what needs a look first
        expect(page.locator("#progress")).to_have_text("0 of 5 reviewed")
        expect(page.locator("#doc-title")).to_have_text("wrong.pdf")  # the first of the queue opens
        expect(page.locator("#queue a").first).to_contain_text("failed check")

        # A field selected shows its box, in view; a box clicked selects its field.
        vat = field(page, "seller.vat_id")
        expect(vat).to_have_class(re.compile(r"\blook\b"))
        vat.locator("input").click()
        box = page.locator('.box.selected[data-path="seller.vat_id"]')
        expect(box).to_have_count(1)
        expect(box).to_be_in_viewport()
        page.locator('.box[data-path="invoice_number"]').click()
        expect(page.locator("input[data-path='invoice_number']")).to_be_focused()
        expect(page.locator('.box.selected[data-path="invoice_number"]')).to_have_count(1)

        # An edit is checked as it is typed: the VAT ID's check turns from fail to pass.
        expect(vat.locator(".checks li.fail")).to_contain_text("vat id: fail")
        vat.locator("input").fill("DE136695976")
        expect(vat.locator(".checks li.pass")).to_contain_text("vat id: pass")
        expect(vat).not_to_have_class(re.compile(r"\blook\b"))  # no longer in doubt
        expect(vat).to_have_class(re.compile(r"\bedited\b"))
        # And the record's arithmetic follows an amount.
        net = page.locator("input[data-path='net_total']")
        net.fill("2000")
        expect(page.locator('#doc-checks li[data-name="arithmetic:net_plus_tax"]')).to_have_class("fail")
        net.fill(field_value(fresh, "net_total"))
        expect(page.locator('#doc-checks li[data-name="arithmetic:net_plus_tax"]')).to_have_class("pass")

        page.locator("#note").fill("VAT ID as on the letterhead")
        doc_id = page.evaluate("() => location.hash.slice(1)")
        page.locator("#approve").click()
        expect(page.locator("#progress")).to_have_text("1 of 5 reviewed")
        expect(page.locator("#doc-title")).to_have_text("absent.pdf")  # on to the next not decided
        expect(page.locator(f"#q-{doc_id}")).to_contain_text("approved by")

        # Reloaded, the decision is there, with the approved value in its field.
        page.goto(f"{review.url}#{doc_id}")
        page.reload()
        expect(page.locator("#doc-title")).to_have_text("wrong.pdf")
        expect(page.locator("#decision")).to_contain_text("Approved by")
        expect(page.locator("#decision")).to_contain_text("VAT ID as on the letterhead")
        expect(page.locator("input[data-path='seller.vat_id']")).to_have_value("DE136695976")
        expect(page.locator("#progress")).to_have_text("1 of 5 reviewed")
        page.goto("about:blank")  # the page lets its document go while its server still runs

    log = [json.loads(line) for line in (fresh.out / ".review" / "audit.jsonl").read_text().splitlines()]
    assert [(e["action"], e["field"], e.get("old"), e.get("new")) for e in log] == [
        ("edit", "seller.vat_id", "DE136695975", "DE136695976"), ("approve", None, None, None)]
    assert log[1]["note"] == "VAT ID as on the letterhead" and log[1]["document"] == str(fresh.docs["wrong.pdf"])

    exported = run_cli("export", str(fresh.out), "--to", "csv")
    assert exported.exit_code == 0, exported.stderr
    assert "5 invoices (1 reviewed)" in exported.stderr
    with (fresh.out / "export" / "invoices.csv").open(encoding="utf-8") as f:
        rows = {Path(r["source"]).name: r for r in csv.DictReader(f)}
    assert rows["wrong.pdf"]["seller.vat_id"] == "DE136695976" and rows["wrong.pdf"]["reviewed"] == "approved"
    assert rows["wrong.pdf"]["review_note"] == "VAT ID as on the letterhead"
    assert "changed in review from \"DE136695975\"" in rows["wrong.pdf"]["seller.vat_id review"]
    assert rows["clean.pdf"]["reviewed"] == ""


def field_value(made: Made, path: str) -> str:
    body = json.loads((made.out / "wrong.json").read_text())
    return str(body["fields"][path])


def test_the_keyboard_alone_reviews_documents_and_every_input_is_labelled(page: Any, fresh: Made) -> None:
    from playwright.sync_api import expect

    with reviewing(fresh.out) as review:
        page.goto(review.url)
        expect(page.locator("#doc-title")).to_have_text("wrong.pdf")
        unlabelled = page.evaluate("""() => Array.from(document.querySelectorAll('input, select, textarea'))
            .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
            .map(el => el.outerHTML)""")
        assert unlabelled == []
        assert page.locator("input").count() > 20  # the fields and the line items

        keys = page.keyboard
        keys.press("j")  # next document
        expect(page.locator("#doc-title")).to_have_text("absent.pdf")
        keys.press("n")  # the field that needs a look: the buyer the page does not print
        expect(page.locator("input[data-path='buyer.name']")).to_be_focused()
        expect(page.locator('.field.selected[data-path="buyer.name"]')).to_have_count(1)
        keys.press("Control+a")
        keys.type("Beispiel AG")
        keys.press("Enter")  # on to the next that needs a look: none but this one, so it stays
        keys.press("Escape")
        expect(page.locator("#doc-title")).to_be_focused()
        keys.press("a")  # approve: the next not decided opens
        expect(page.locator("#doc-title")).to_have_text("again.pdf")
        expect(page.locator("#progress")).to_have_text("1 of 5 reviewed")
        keys.press("k")  # back: the decision is shown; then on again to reject the next one
        expect(page.locator("#doc-title")).to_have_text("absent.pdf")
        expect(page.locator("#decision")).to_contain_text("Approved by")
        keys.press("j")
        expect(page.locator("#doc-title")).to_have_text("again.pdf")
        keys.press("?")  # the keys' help, and the list's filter, are keys away too
        expect(page.locator("#keys")).to_be_visible()
        keys.press("Escape")
        expect(page.locator("#keys")).to_be_hidden()
        keys.press("/")
        expect(page.locator("#filter")).to_be_focused()
        keys.press("Escape")
        expect(page.locator("#doc-title")).to_be_focused()
        keys.press("r")
        expect(page.locator("#progress")).to_have_text("2 of 5 reviewed")
        page.goto("about:blank")

    decisions = {json.loads(p.read_text())["source"]: json.loads(p.read_text())
                 for p in (fresh.out / ".review" / "decisions").glob("*.json")}
    absent = decisions[str(fresh.docs["absent.pdf"])]
    assert absent["decision"] == "approved" and absent["changed"] == {
        "buyer.name": {"old": "Nirgendwo Handels GmbH", "new": "Beispiel AG"}}
    assert decisions[str(fresh.docs["again.pdf"])]["decision"] == "rejected"


def test_what_a_document_says_is_shown_as_text_never_run(page: Any, fresh: Made) -> None:
    from playwright.sync_api import expect

    result = fresh.out / "wrong.json"
    body = json.loads(result.read_text())
    hostile = '<img src=x onerror="document.body.dataset.pwned=1"><b id="pwned">RE</b>'
    body["fields"]["invoice_number"] = hostile
    body["values"][0]["value"] = hostile
    body["review"][0] = hostile
    result.write_text(json.dumps(body))
    with reviewing(fresh.out) as review:
        page.goto(review.url)
        expect(page.locator("input[data-path='invoice_number']")).to_have_value(hostile)
        expect(page.locator("#doc-reasons li").first).to_have_text(hostile)
        expect(page.locator("#pwned")).to_have_count(0)
        assert page.evaluate("() => document.body.dataset.pwned") is None
        page.goto("about:blank")


def decisions_of(made: Made) -> dict[str, Any]:
    return {Path(json.loads(p.read_text())["source"]).name: json.loads(p.read_text())
            for p in (made.out / ".review" / "decisions").glob("*.json")}


def test_a_double_click_decides_once_and_edits_wait_for_their_document(page: Any, fresh: Made) -> None:
    from playwright.sync_api import expect

    result = fresh.out / "clean.json"
    body = json.loads(result.read_text())
    address = "Hauptstrasse 5\n10115 Berlin"
    body["fields"]["seller"]["address"] = address
    next(v for v in body["values"] if v["path"] == "seller.address")["value"] = address
    result.write_text(json.dumps(body))
    with reviewing(fresh.out) as review:
        page.goto(review.url)
        expect(page.locator("#doc-title")).to_have_text("wrong.pdf")
        page.locator("#approve").dblclick()  # a second click while the first decision is on its way
        expect(page.locator("#doc-title")).to_have_text("absent.pdf")
        expect(page.locator("#progress")).to_have_text("1 of 5 reviewed")
        expect(page.locator("#banner")).not_to_contain_text("after you opened it")  # no conflict with itself

        # An edit left undecided waits for its document while the person looks at another.
        number = page.locator("input[data-path='invoice_number']")
        number.fill("RE-2026-0901-B")
        page.keyboard.press("Escape")
        page.keyboard.press("j")
        expect(page.locator("#doc-title")).to_have_text("again.pdf")
        page.keyboard.press("k")
        expect(page.locator("#doc-title")).to_have_text("absent.pdf")
        expect(number).to_have_value("RE-2026-0901-B")
        expect(page.locator("#banner")).to_contain_text("not yet decided, are back")

        # A value of two lines keeps them, and is no edit when left alone.
        page.locator("#queue a", has_text="clean.pdf").click()
        expect(page.locator("#doc-title")).to_have_text("clean.pdf")
        expect(page.locator("textarea[data-path='seller.address']")).to_have_value(address)
        page.locator("#approve").click()
        expect(page.locator("#progress")).to_have_text("2 of 5 reviewed")
        page.goto("about:blank")
    made = decisions_of(fresh)
    assert made["wrong.pdf"]["revision"] == 1 and made["clean.pdf"]["changed"] == {}
    log = [json.loads(line) for line in (fresh.out / ".review" / "audit.jsonl").read_text().splitlines()]
    assert [e["action"] for e in log] == ["approve", "approve"]


def test_a_read_only_page_takes_the_document_over_when_the_other_moves_on(browser: Any, page: Any,
                                                                            fresh: Made) -> None:
    from playwright.sync_api import expect

    other = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    with reviewing(fresh.out) as review:
        page.goto(review.url)
        expect(page.locator("#doc-title")).to_have_text("wrong.pdf")
        other.goto(review.url)  # another reviewer, on the same first document
        expect(other.locator("#banner")).to_contain_text("read only")
        expect(other.locator("#approve")).to_be_disabled()
        page.locator("#approve").click()
        expect(page.locator("#doc-title")).to_have_text("absent.pdf")
        # Within a heartbeat the other page holds it, shows the decision made, and may decide again.
        expect(other.locator("#decision")).to_contain_text("Approved by", timeout=25_000)
        expect(other.locator("#approve")).to_be_enabled()
        expect(other.locator("#progress")).to_have_text("1 of 5 reviewed")
        other.goto("about:blank")
        page.goto("about:blank")
    other.context.close()
