"""E-mails and archives through the real CLI and the tiny models: one result per document
inside, output files mirrored below -o, the store, duplicates, filters and the summary."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from tests.conftest import make_image, make_pdf, parse_json
from tests.documents import Invoice, make_mail, ubl_xml

INVOICE_SCHEMA = Path(__file__).resolve().parents[1] / "examples" / "invoice.yaml"
ASK = ("-q", "What is the total?", "--max-tokens", "4", "--dpi", "20")


def _three_invoices(tmp_path: Path) -> Path:
    pdfs = [make_pdf(tmp_path / f"p{i}.pdf", [f"Invoice {i}  Total {i}0.00"]).read_bytes() for i in range(3)]
    mail = tmp_path / "mail.eml"
    mail.write_bytes(make_mail([(f"invoice-{i}.pdf", p) for i, p in enumerate(pdfs)]))
    return mail


def test_an_e_mail_with_three_invoices_gives_three_results(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    mail = _three_invoices(tmp_path)
    out = tmp_path / "out"
    result = run_cli("ask", str(mail), *ASK, *model_args, "-o", str(out), "--format", "json")
    assert result.exit_code == 0, result.stderr
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json") if ".llamadoc" not in p.parts)
    assert written == [f"mail.eml/invoice-{i}.json" for i in range(3)]
    docs = [json.loads((out / name).read_text()) for name in written]
    assert [d["source"] for d in docs] == [f"{mail}#invoice-{i}.pdf" for i in range(3)]
    assert [d["pages"][0]["text_layer"] for d in docs] == [f"Invoice {i}  Total {i}0.00" for i in range(3)]
    assert "3 documents: ok 3" in result.stderr
    again = run_cli("ask", str(mail), *ASK, *model_args, "-o", str(out), "--format", "json")  # resumed from the store
    assert again.exit_code == 0 and "wrote" not in again.stderr


def test_the_body_only_with_include_body(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    mail = _three_invoices(tmp_path)
    result = run_cli("ask", str(mail), *ASK, *model_args, "--format", "jsonl", "--include-body")
    assert result.exit_code == 0, result.stderr
    sources = [json.loads(line)["source"] for line in result.stdout.splitlines()]
    assert sources == [f"{mail}#body", *(f"{mail}#invoice-{i}.pdf" for i in range(3))]


def test_bombs_and_bad_names_fail_as_data_one_line_each(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    good = make_pdf(tmp_path / "g.pdf", ["Total 5.00"]).read_bytes()
    archive = tmp_path / "inbox.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("../../evil.pdf", good)
        z.writestr("bomb.pdf", b"%PDF-1.4\n" + bytes(8 << 20))
        z.writestr("scans/good.pdf", good)
        z.writestr("copy-of-good.pdf", good)
    out = tmp_path / "out"
    result = run_cli("ask", str(archive), *ASK, *model_args, "-o", str(out))
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("llamadoc: ") and "wrote" not in line]
    assert lines[0] == (f"llamadoc: {archive}#../../evil.pdf has a name that climbs out of the archive ('..'); "
                        "not read")
    assert lines[1].startswith(f"llamadoc: {archive}#bomb.pdf unpacks to more than 100 times its packed size")
    assert "Traceback" not in result.stderr and not (tmp_path / "evil.txt").exists()
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.txt"))
    assert files == ["inbox.zip/copy-of-good.txt", "inbox.zip/scans/good.txt"]  # nothing outside OUT
    assert "4 documents: ok 2, partial 0, failed 2" in result.stderr


def test_duplicates_and_filters_work_on_members(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "p.pdf", ["Total 7.00"]).read_bytes()
    logo = make_image(tmp_path / "logo.png").read_bytes()
    mail = tmp_path / "m.eml"
    mail.write_bytes(make_mail([("a.pdf", pdf), ("resent-a.pdf", pdf), ("logo.png", logo)]))
    result = run_cli("ask", str(mail), *ASK, *model_args, "--format", "jsonl", "--include", "*.pdf")
    assert result.exit_code == 0, result.stderr
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["source"].rpartition("#")[2] for d in docs] == ["a.pdf", "resent-a.pdf"]
    assert docs[1]["duplicate_of"] == f"{mail}#a.pdf"


def test_extract_a_ubl_invoice_mailed_as_xml(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    mail = tmp_path / "xrechnung.eml"
    mail.write_bytes(make_mail([("rechnung.xml", ubl_xml())]))
    result = run_cli("extract", str(mail), "--schema", str(INVOICE_SCHEMA), *model_args, "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = parse_json(result.stdout)
    assert doc["source"] == f"{mail}#rechnung.xml" and doc["fields"] == Invoice().fields and doc["pages"] == []
