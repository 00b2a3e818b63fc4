"""The real CLI on the real llama.cpp engine (tiny generated models): every command,
every input kind, and every bad input with its exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests import tinymodels
from tests.conftest import make_image, make_pdf, parse_json

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_ask_answers_a_chart_in_plain_text(run_cli: Any, model_args: list[str], chart: Path) -> None:
    result = run_cli("ask", str(chart), "-q", "Which bar is tallest?", *model_args, "--max-tokens", "12")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() and result.stderr == ""


def test_ask_json_is_the_result_document(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "report.pdf", ["Revenue 2024: 12", "Revenue 2025: 15"])
    result = run_cli("ask", str(pdf), "-q", "What was the revenue?", *model_args, "--max-tokens", "8",
                     "--format", "json", "--dpi", "30")
    assert result.exit_code == 0, result.stderr
    doc = parse_json(result.stdout)
    assert doc["schema_version"] == 3 and doc["task"] == "ask" and doc["status"] == "ok"
    assert doc["page_count"] == 2 and doc["pages_read"] == [1, 2]
    assert doc["model"]["engine"] == "mtmd" and len(doc["model"]["sha256"]) == 64
    assert [p["text_layer"] for p in doc["pages"]] == ["Revenue 2024: 12", "Revenue 2025: 15"]
    assert all(p["tokens"]["completion"] <= 8 for p in doc["pages"])
    assert doc["options"]["question"] == "What was the revenue?"


def test_describe_separates_pages(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "r.pdf", ["one", "two", "three"])
    result = run_cli("describe", str(pdf), *model_args, "--max-tokens", "8", "--pages", "1,3", "--dpi", "30")
    assert result.exit_code == 0, result.stderr
    assert "<!-- page 1 -->" in result.stdout and "<!-- page 3 -->" in result.stdout
    assert "<!-- page 2 -->" not in result.stdout


def test_an_extraction_cut_short_is_a_recorded_failure(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    from tests.documents import Invoice

    invoice = make_pdf(tmp_path / "invoice.pdf", ["\n".join(Invoice().text)])
    result = run_cli("extract", str(invoice), "--schema", str(EXAMPLES / "invoice.yaml"), *model_args,
                     "--max-tokens", "3", "--format", "json", "--dpi", "30")
    assert result.exit_code == 1  # three tokens cannot hold the invoice's JSON: a failure, never a crash
    doc = parse_json(result.stdout)
    [page] = doc["pages"]
    assert doc["status"] == "failed" and page["status"] == "failed"
    assert [c["name"] for c in page["checks"]] == ["schema"] and page["checks"][0]["status"] == "fail"
    assert page["errors"][-1].startswith("the reply is not JSON")
    assert any("--max-tokens (3)" in w for w in page["warnings"])
    assert any("asked again" in w for w in page["warnings"])  # re-asked once


def test_extract_text_output_is_the_fields(run_cli: Any, model_args: list[str], chart: Path,
                                           tmp_path: Path) -> None:
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}},
                                  "required": ["ok"]}))
    result = run_cli("extract", str(chart), "--schema", str(schema), *model_args)
    assert result.exit_code == 0, result.stderr
    assert isinstance(json.loads(result.stdout)["ok"], bool)


def test_jsonl_streams_one_line_per_document(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    a, b = make_image(tmp_path / "a.png"), make_image(tmp_path / "b.jpg", fmt="JPEG")
    result = run_cli("ask", str(a), str(b), "-q", "?", *model_args, "--max-tokens", "4", "--format", "jsonl")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert [json.loads(line)["source"] for line in lines] == [str(a), str(b)]


def test_output_folder_gets_one_file_per_document(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    make_image(docs / "x.png")
    (docs / "sub").mkdir()
    make_image(docs / "sub" / "x.png")  # same stem: must not overwrite the first
    out = tmp_path / "out"
    result = run_cli("describe", str(docs), *model_args, "--max-tokens", "4", "-o", str(out), "--format", "json")
    assert result.exit_code == 0, result.stderr
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and ".llamadoc" not in p.parts)
    assert files == ["sub/x.json", "x.json"]  # the folder's layout, mirrored
    assert result.stdout == ""
    sources = {parse_json((out / f).read_text())["source"] for f in files}
    assert sources == {str(docs / "x.png"), str(docs / "sub" / "x.png")}


def test_stdin_is_a_document(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    data = make_pdf(tmp_path / "p.pdf", ["piped"]).read_bytes()
    result = run_cli("ask", "-", "-q", "?", *model_args, "--max-tokens", "4", "--format", "json",
                     "--dpi", "30", stdin=data)
    assert result.exit_code == 0, result.stderr
    doc = parse_json(result.stdout)
    assert doc["source"] == "<stdin>" and doc["pages"][0]["text_layer"] == "piped"


def test_gemma3_projector(run_cli: Any, text_model: Path, mmproj_gemma3: Path, chart: Path) -> None:
    result = run_cli("ask", str(chart), "-q", "?", "--model", str(text_model), "--mmproj", str(mmproj_gemma3),
                     "--threads", "1", "--max-tokens", "4", "--format", "json", "--guard", "off")
    assert result.exit_code == 0, result.stderr
    assert parse_json(result.stdout)["pages"][0]["tokens"]["prompt"] > 0


def test_one_bad_document_does_not_stop_the_batch(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    good = make_image(tmp_path / "good.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.pdf"
    text.write_text("plain text pretending")
    out = tmp_path / "out"
    result = run_cli("ask", str(tmp_path / "missing.pdf"), str(empty), str(text), str(good), "-q", "?",
                     *model_args, "--max-tokens", "4", "-o", str(out))
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    errors = lines[:3]
    assert all(line.startswith("llamadoc: ") for line in errors)
    assert "does not exist" in errors[0] and "is empty" in errors[1] and "is not a document llamadoc reads" in errors[2]
    assert lines[3] == f"llamadoc: wrote {out / 'good.txt'}"
    assert "4 documents: ok 1, partial 0, failed 3, blocked 0" in lines[4]  # the summary
    assert sorted(p.name for p in out.iterdir()) == [".llamadoc", "good.txt"]  # the result store, and the result
    assert "Traceback" not in result.stderr


def test_encrypted_pdf(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "s.pdf", ["secret"], password="pw")
    base = ["ask", str(pdf), "-q", "?", *model_args, "--max-tokens", "4", "--dpi", "30"]
    missing = run_cli(*base)
    assert missing.exit_code == 1 and "encrypted" in missing.stderr and "--password" in missing.stderr
    wrong = run_cli(*base, "--password", "nope")
    assert wrong.exit_code == 1 and "does not open" in wrong.stderr
    assert run_cli(*base, "--password", "pw").exit_code == 0


def test_page_that_cannot_fit_the_context(run_cli: Any, model_args: list[str], chart: Path) -> None:
    result = run_cli("ask", str(chart), "-q", "?", *model_args, "--ctx", "64")
    assert result.exit_code == 1
    assert "context holds 64" in result.stderr and "--ctx" in result.stderr


def test_model_without_projector_and_mismatched_projector(run_cli: Any, text_model: Path, chart: Path,
                                                          tmp_path: Path) -> None:
    alone = run_cli("ask", str(chart), "-q", "?", "--model", str(text_model), "--guard", "off")
    assert alone.exit_code == 2 and "needs its vision projector" in alone.stderr
    narrow = tinymodels.write_mmproj(tmp_path / "narrow.gguf", text_width=32)
    mismatch = run_cli("ask", str(chart), "-q", "?", "--model", str(text_model), "--mmproj", str(narrow),
                       "--guard", "off")
    assert mismatch.exit_code == 2 and "does not fit model" in mismatch.stderr
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_text("nope")
    bad = run_cli("ask", str(chart), "-q", "?", "--model", str(not_gguf), "--mmproj", str(not_gguf),
                  "--guard", "off")
    assert bad.exit_code == 2 and "not a GGUF file" in bad.stderr


def test_default_model_missing_offline_says_how_to_get_it(run_cli: Any, chart: Path) -> None:
    result = run_cli("ask", str(chart), "-q", "?")
    assert result.exit_code == 2  # the configuration must change (go online, or put the files in place)
    assert "offline" in result.stderr and "LLAMADOC_OFFLINE" in result.stderr


def test_nothing_to_read(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_cli("ask", str(tmp_path / "empty"), "-q", "?", *model_args)
    assert result.exit_code == 1 and "holds no documents" in result.stderr


def test_models_list_and_doctor(run_cli: Any) -> None:
    listed = run_cli("models", "list")
    assert listed.exit_code == 0 and "qwen2.5-vl:7b" in listed.stdout and "(default)" in listed.stdout
    doctor = run_cli("doctor")
    assert doctor.exit_code == 0
    assert "llama-cpp-python" in doctor.stdout and "ggml device" in doctor.stdout and "CPU" in doctor.stdout


def test_entry_point_and_help(tmp_path: Path, model_args: list[str], chart: Path) -> None:
    help_text = subprocess.run([sys.executable, "-m", "llamadoc", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "Exit codes" in help_text.stdout
    run = subprocess.run([sys.executable, "-m", "llamadoc", "ask", str(chart), "-q", "?", *model_args,
                          "--max-tokens", "4"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip()
    assert run.stderr == ""  # libmtmd's chatter is silenced
