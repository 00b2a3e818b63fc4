"""Llama 3.2 Vision through the product: convert the fixture checkpoint with the CLI,
then ask, describe and extract on the real mllama engine (tiny random weights)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_pdf, parse_json
from tests.mllama_helpers import FIXTURES, fixture_image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def mllama_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from typer.testing import CliRunner

    from llamadoc.cli.app import app

    out = tmp_path_factory.mktemp("mllama") / "tiny-mllama.gguf"
    result = CliRunner().invoke(app, ["models", "convert", str(FIXTURES / "tiny" / "checkpoint"), str(out),
                                      "--quant", "Q8_0"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(out) and "wrote" in result.stderr
    return out


def args(model: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--threads", "1", "--guard", "off", "--max-tokens", "8", *extra]


def test_ask_a_chart(run_cli: Any, mllama_model: Path, tmp_path: Path) -> None:
    chart = tmp_path / "chart.png"
    fixture_image("wide").save(chart)
    result = run_cli("ask", str(chart), "-q", "Which bar is tallest?", *args(mllama_model), "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = parse_json(result.stdout)
    assert doc["model"]["engine"] == "mllama" and doc["status"] == "ok"
    assert doc["pages"][0]["tokens"]["completion"] <= 8


def test_describe_pages(run_cli: Any, mllama_model: Path, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "r.pdf", ["Annual report", "Appendix"])
    result = run_cli("describe", str(pdf), *args(mllama_model, "--dpi", "20"))
    assert result.exit_code == 0, result.stderr
    assert "<!-- page 1 -->" in result.stdout and "<!-- page 2 -->" in result.stdout


def test_extract_is_schema_constrained(run_cli: Any, mllama_model: Path, tmp_path: Path) -> None:
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "required": ["paid"], "properties": {"paid": {"type": "boolean"}}}))
    pdf = make_pdf(tmp_path / "i.pdf", ["Invoice 7, paid"])
    result = run_cli("extract", str(pdf), "--schema", str(schema), *args(mllama_model, "--max-tokens", "16"))
    assert result.exit_code == 0, result.stderr
    assert isinstance(json.loads(result.stdout)["paid"], bool)


def test_an_mllama_model_takes_no_projector(run_cli: Any, mllama_model: Path, tmp_path: Path) -> None:
    chart = tmp_path / "c.png"
    fixture_image("square").save(chart)
    result = run_cli("ask", str(chart), "-q", "?", *args(mllama_model, "--mmproj", str(mllama_model)))
    assert result.exit_code == 2 and "drop --mmproj" in result.stderr


def test_convert_refuses_what_is_not_a_checkpoint(run_cli: Any, tmp_path: Path) -> None:
    result = run_cli("models", "convert", str(tmp_path), str(tmp_path / "x.gguf"))
    assert result.exit_code == 2 and "config.json is missing" in result.stderr
    assert not (tmp_path / "x.gguf").exists()


def test_the_vision_guard_screens_the_page_image(run_cli: Any, mllama_model: Path, tmp_path: Path) -> None:
    chart = tmp_path / "chart.png"
    fixture_image("square").save(chart)
    base = [a for a in args(mllama_model) if a not in ("--guard", "off")]
    result = run_cli("ask", str(chart), "-q", "What is shown?", *base, "--guard-model", str(mllama_model),
                     "--guard", "flag", "--format", "json")
    assert result.exit_code == 0, result.stderr
    page = parse_json(result.stdout)["pages"][0]
    [screen] = page["guard_in"]  # one check: the page image with the prompt; no "not screened" note
    assert screen["screened"] == "image+text" and screen["subject"] == "page image and prompt"
    assert screen["error"] is None and page["guard_out"]["subject"] == "answer"


def test_offload_options_and_the_memory_estimate(run_cli: Any, mllama_model: Path, tmp_path: Path) -> None:
    chart = tmp_path / "c.png"
    fixture_image("wide").save(chart)
    split = run_cli("ask", str(chart), "-q", "?", *args(mllama_model, "--gpu-layers", "2", "--format", "json"))
    assert split.exit_code == 0, split.stderr
    assert parse_json(split.stdout)["model"]["device"] == "CPU"  # no GPU here: every layer on the CPU
    huge = run_cli("ask", str(chart), "-q", "?", *args(mllama_model, "--ctx", "400000000", "--force"))
    assert huge.exit_code == 1  # refused before loading (not a usage error: the machine lacks the memory)
    assert "GiB on CPU" in huge.stderr and "kv_cache" in huge.stderr and "--ctx" in huge.stderr
