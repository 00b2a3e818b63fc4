"""The mission's models by name, and any hf:// or ollama:// address, from an empty models folder
through the real CLI: pulled (and converted) on first use, then run on the real engines."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import parse_json
from tests.mllama_helpers import FIXTURES, fixture_image

if TYPE_CHECKING:  # imported by pytest as a plugin, not here: its asserts stay rewritten
    from tests.registry_server import FakeRegistry

pytest_plugins = ["tests.registry_server"]
pytest.importorskip("llama_cpp")

GUARD_REPO = "meta-llama/Llama-Guard-3-11B-Vision"
TOKEN = "hf_meta_accepted"
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the loopback Hub's main


@pytest.fixture
def page(tmp_path: Path) -> Path:
    path = tmp_path / "page.png"
    fixture_image("square").save(path)
    return path


@pytest.fixture(scope="module")
def tiny_mllama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.mllama_helpers import convert_fixture

    return convert_fixture("tiny", tmp_path_factory.mktemp("mllama") / "tiny-mllama.gguf", "Q8_0")


def one_error_line(result: Any, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("llamadoc: error: ") and "Traceback" not in result.output
    return lines[-1]


def test_the_vision_guard_by_name_from_an_empty_models_folder(
    run_cli, registry_server: FakeRegistry, model_env, monkeypatch, page, text_model, mmproj
):
    registry_server.add_hf_repo(GUARD_REPO, FIXTURES / "tiny" / "checkpoint", token=TOKEN)
    ask = ["ask", str(page), "-q", "What is shown?", "--model", str(text_model), "--mmproj", str(mmproj),
           "--threads", "1", "--max-tokens", "4", "--guard", "flag", "--guard-model", "llama-guard3:11b-vision",
           "--format", "json"]
    refused = run_cli(*ask)
    line = one_error_line(refused, 2)
    assert f"accept the licence at {registry_server.url}/{GUARD_REPO}" in line and "hf auth login" in line

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = run_cli(*ask)
    assert result.exit_code == 0, result.stderr
    assert "downloading and converting it once" in result.stderr
    page_result = parse_json(result.stdout)["pages"][0]
    [screen] = page_result["guard_in"]
    assert screen["screened"] == "image+text" and screen["error"] is None  # the vision guard saw the page
    listing = run_cli("models", "list").stdout
    guard = next(line for line in listing.splitlines() if line.startswith("llama-guard3:11b-vision"))
    assert guard.split()[-2:] == ["meta", "yes"]


def test_a_checkpoint_address_is_converted_on_first_use_and_recorded(
    run_cli, registry_server: FakeRegistry, model_env, page
):
    registry_server.add_hf_repo("test/tiny-mllama", FIXTURES / "tiny" / "checkpoint")
    address = "hf://test/tiny-mllama"
    result = run_cli("ask", str(page), "-q", "Which colour?", "--model", address, "--threads", "1",
                     "--max-tokens", "4", "--guard", "off", "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = parse_json(result.stdout)
    converted = Path(doc["model"]["path"])
    assert doc["model"]["name"] == address and doc["model"]["engine"] == "mllama"
    assert doc["model"]["sha256"] == hashlib.sha256(converted.read_bytes()).hexdigest()
    assert doc["model"]["quantisation"] == "Q4_K_M"
    record = json.loads(converted.with_name(converted.name + ".source.json").read_text())
    assert record["revision"] == COMMIT and record["sha256"] == doc["model"]["sha256"]

    info = run_cli("models", "info", address)
    assert info.exit_code == 0, info.stderr
    assert COMMIT in info.stdout and "a checkpoint converted to GGUF on pull" in info.stdout
    pulled = run_cli("models", "pull", address, "--quant", "Q8_0", "--keep-source")
    assert pulled.exit_code == 0, pulled.stderr
    assert pulled.stdout.strip().endswith("tiny-mllama-Q8_0.gguf") and "kept the downloaded checkpoint" in pulled.stderr
    bad = run_cli("models", "pull", address, "--quant", "Q2_K")
    assert "unknown quantisation 'Q2_K'" in one_error_line(bad, 2)


def test_an_ollama_address_runs_with_the_engine_its_file_names(
    run_cli, registry_server: FakeRegistry, model_env, page, tiny_mllama
):
    registry_server.add_ollama_model("library/tiny-mllama:1b", {"model": tiny_mllama.read_bytes()}, family="mllama")
    address = "ollama://library/tiny-mllama:1b"
    result = run_cli("ask", str(page), "-q", "?", "--model", address, "--threads", "1", "--max-tokens", "4",
                     "--guard", "off", "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = parse_json(result.stdout)
    assert doc["model"]["name"] == address and doc["model"]["engine"] == "mllama"
    # The same address as a guard: the file says mllama, so the vision guard screens the page.
    guarded = run_cli("ask", str(page), "-q", "?", "--model", address, "--threads", "1", "--max-tokens", "4",
                      "--guard", "flag", "--guard-model", address, "--format", "json")
    assert guarded.exit_code == 0, guarded.stderr
    assert parse_json(guarded.stdout)["pages"][0]["guard_in"][0]["screened"] == "image+text"


def test_a_hub_gguf_address_with_its_projector_address_runs_on_libmtmd(
    run_cli, registry_server: FakeRegistry, model_env, page, text_model, mmproj
):
    registry_server.add_hf_file("someone/tiny-GGUF", "tiny-F32.gguf", text_model.read_bytes())
    registry_server.add_hf_file("someone/tiny-GGUF", "mmproj-tiny.gguf", mmproj.read_bytes())
    model = "hf://someone/tiny-GGUF/tiny-F32.gguf"
    alone = run_cli("ask", str(page), "-q", "?", "--model", model, "--threads", "1", "--guard", "off")
    assert "needs its vision projector" in one_error_line(alone, 2)
    result = run_cli("ask", str(page), "-q", "?", "--model", model, "--mmproj", "hf://someone/tiny-GGUF/mmproj-tiny.gguf",
                     "--threads", "1", "--max-tokens", "4", "--guard", "off", "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = parse_json(result.stdout)
    assert doc["model"]["name"] == model and doc["model"]["engine"] == "mtmd"
    assert doc["model"]["sha256"] == hashlib.sha256(text_model.read_bytes()).hexdigest()


def test_a_bad_address_is_one_line(run_cli, model_env, page):
    assert "'ollama://bad name' is not a model address" in one_error_line(
        run_cli("models", "pull", "ollama://bad name"), 2)
    assert "is not a model address" in one_error_line(
        run_cli("ask", str(page), "-q", "?", "--model", "s3://bucket/m.gguf", "--guard", "off"), 2)
