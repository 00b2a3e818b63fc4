"""`llamadoc models list | pull | rm | path | info | verify`, driven through the real CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from llamadoc.cli.app import app
from tests.tinymodels import write_mmproj, write_text_model

if TYPE_CHECKING:  # imported by pytest as a plugin, not here: its asserts stay rewritten
    from tests.registry_server import FakeRegistry

pytest_plugins = ["tests.registry_server"]  # the loopback server and the environment pointing at it

MODELS = """
[models.tiny]
engine = "mtmd"
quantisation = "F32"
size_bytes = 600000
context = 4096
min_memory_gb = 1
files.model = "hf://test/tiny/tiny.gguf"
files.mmproj = "hf://test/tiny/mmproj-tiny.gguf"

[models.tiny-vision]
engine = "mllama"
files.model = "ollama://library/tiny-vision:1b"
"""


@pytest.fixture
def config(registry_server: FakeRegistry, model_env, tmp_path: Path) -> Path:
    """A models.toml naming real (tiny) GGUF files that the loopback servers offer."""
    model = write_text_model(tmp_path / "tiny.gguf", context=4096).read_bytes()
    projector = write_mmproj(tmp_path / "mmproj.gguf").read_bytes()
    registry_server.add_hf_file("test/tiny", "tiny.gguf", model)
    registry_server.add_hf_file("test/tiny", "mmproj-tiny.gguf", projector)
    registry_server.add_ollama_model("library/tiny-vision:1b", {"model": model, "template": b"{{ .Prompt }}"})
    path = tmp_path / "models.toml"
    path.write_text(MODELS)
    return path


def run(*args: str):
    return CliRunner().invoke(app, ["models", *args], catch_exceptions=False)


def one_error_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("llamadoc: error: ") and "Traceback" not in result.output
    return lines[-1]


def test_list_shows_every_model_with_its_facts_and_presence(config):
    result = run("list", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert "llama3.2-vision:11b (default)" in result.stdout and "llama-guard3:1b (default guard)" in result.stdout
    tiny = next(line for line in result.stdout.splitlines() if line.startswith("tiny "))
    assert tiny.split() == ["tiny", "mtmd", "vision", "F32", "600.0", "kB", "4,096", "1", "GB", "hf", "(unchecked)", "no"]
    guard = next(line for line in result.stdout.splitlines() if line.startswith("llama-guard3:11b-vision"))
    assert guard.split()[-2:] == ["meta", "no"]  # Meta's checkpoint, checked, not here
    assert "models folder:" in result.stdout and "(0 B used)" in result.stdout

    assert run("pull", "tiny", "--config", str(config)).exit_code == 0
    result = run("list", "--config", str(config))
    tiny = next(line for line in result.stdout.splitlines() if line.startswith("tiny "))
    assert tiny.split()[-1] == "yes"
    assert "(0 B used)" not in result.stdout


def test_list_tells_a_model_used_from_ollamas_store(config, ollama_store):
    ollama_store("library/tiny-vision:1b", {"model": b"G" * 5000})
    result = run("list", "--config", str(config))
    line = next(line for line in result.stdout.splitlines() if line.startswith("tiny-vision"))
    assert line.split()[-2:] == ["yes", "(ollama)"]
    assert "used in place, not copied: 5.0 kB" in result.stdout and "(0 B used)" in result.stdout


def test_pull_prints_the_paths_and_reports_on_stderr(config, registry_server):
    result = run("pull", "tiny", "tiny-vision", "--config", str(config))
    assert result.exit_code == 0, result.output
    paths = [Path(line) for line in result.stdout.splitlines()]
    assert [p.name for p in paths[:2]] == ["tiny.gguf", "mmproj-tiny.gguf"]
    assert all(p.is_file() for p in paths)
    assert "downloading tiny.gguf" in result.stderr
    again = run("pull", "tiny", "--config", str(config))
    assert again.exit_code == 0 and "model tiny is already here" in again.stderr


def test_path_prints_where_a_file_is(config, tmp_path):
    result = run("path", "tiny", "--config", str(config))
    assert "llamadoc models pull tiny" in one_error_line(result, 2)
    run("pull", "tiny", "tiny-vision", "--config", str(config))
    model = run("path", "tiny", "--config", str(config))
    assert model.exit_code == 0 and Path(model.stdout.strip()).name == "tiny.gguf"
    mmproj = run("path", "tiny", "--file", "mmproj", "--config", str(config))
    assert Path(mmproj.stdout.strip()).name == "mmproj-tiny.gguf"
    template = run("path", "tiny-vision", "--file", "template", "--config", str(config))
    assert Path(template.stdout.strip()).read_text() == "{{ .Prompt }}"
    params = run("path", "tiny-vision", "--file", "params", "--config", str(config))
    assert "has no params file" in one_error_line(params, 2)
    assert "--file 'weights'" in one_error_line(run("path", "tiny", "--file", "weights"), 2)
    local = run("path", str(tmp_path / "tiny.gguf"))
    assert local.stdout.strip() == str(tmp_path / "tiny.gguf")


def test_info_shows_the_entry_and_the_gguf_headers(config, tmp_path):
    before = run("info", "tiny", "--config", str(config))
    assert before.exit_code == 0 and "not downloaded" in before.stdout
    run("pull", "tiny", "--config", str(config))
    result = run("info", "tiny", "--config", str(config))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "engine" in out and "mtmd (vision)" in out
    assert "architecture     llama" in out.replace("  architecture", "architecture")
    assert "chat template" in out and "yes" in out
    assert "projector (mlp" in out and "sha256" in out
    assert "4,096" in out  # the trained context the GGUF records
    local = run("info", str(tmp_path / "mmproj.gguf"))
    assert local.exit_code == 0 and "clip" in local.stdout


def test_verify_checks_every_downloaded_file(config):
    assert "no downloaded models" in run("verify", "--config", str(config)).stderr
    run("pull", "tiny", "--config", str(config))
    result = run("verify", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["ok", "ok"]
    path = Path(run("path", "tiny", "--config", str(config)).stdout.strip())
    path.write_bytes(b"GGUF" + path.read_bytes()[4:][::-1])
    result = run("verify", "tiny", "--config", str(config))
    assert "1 file(s) failed verification" in one_error_line(result, 1)
    assert "MISMATCH  tiny model" in result.stdout and "(deleted)" in result.stdout
    mine = config.with_name("mmproj.gguf")
    result = run("verify", str(mine))
    assert result.exit_code == 0 and hashlib.sha256(mine.read_bytes()).hexdigest() in result.stdout


def test_rm_deletes_llamadocs_copies(config):
    run("pull", "tiny", "tiny-vision", "--config", str(config))
    result = run("rm", "tiny", "tiny-vision", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert "removed" in result.stderr and "freed" in result.stderr
    listing = run("list", "--config", str(config)).stdout
    assert all(line.split()[-1] == "no" for line in listing.splitlines() if line.startswith("tiny"))
    assert "has no files here" in run("rm", "tiny", "--config", str(config)).stderr
    assert "deletes only what it downloaded" in one_error_line(run("rm", str(config.with_name("tiny.gguf"))), 2)


def test_errors_are_one_line_with_what_to_do(config, registry_server, monkeypatch):
    assert "unknown model 'nope'" in one_error_line(run("pull", "nope", "--config", str(config)), 2)
    assert "cannot download the manifest of ollama://library/x:1b: HTTP 404" in one_error_line(
        run("pull", "ollama://library/x:1b"), 1)
    registry_server.corrupt.update(registry_server.hf_files.values())
    assert "failed verification" in one_error_line(run("pull", "tiny", "--config", str(config)), 1)
    line = one_error_line(run("pull", "llama3.2-vision:11b", "--quant", "Q8_0", "--config", str(config)), 2)
    assert "--quant applies to a checkpoint converted on pull" in line and "add --source meta" in line
    monkeypatch.setenv("LLAMADOC_OFFLINE", "1")
    line = one_error_line(run("pull", "tiny", "--config", str(config)), 2)
    assert "offline mode is on" in line and "unset LLAMADOC_OFFLINE" in line
    monkeypatch.setenv("LLAMADOC_OFFLINE", "perhaps")
    assert "LLAMADOC_OFFLINE must be 1 or 0" in one_error_line(run("list"), 2)


def test_the_installed_command_fails_cleanly(config):
    broken = config.with_name("broken.toml")
    broken.write_text('[models.x]\nengin = "mllama"\n')
    result = subprocess.run(
        [sys.executable, "-m", "llamadoc", "models", "list", "--config", str(broken)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"llamadoc: error: {broken}: unknown key 'models.x.engin' (did you mean 'engine'?)"
    ]


def test_a_manifest_the_registry_mangles_is_a_clear_error(config, registry_server):
    registry_server.manifests[("library", "tiny-vision", "1b")] = json.dumps({"layers": "none"}).encode()
    line = one_error_line(run("pull", "tiny-vision", "--config", str(config)), 1)
    assert "cannot read: no list of layers" in line and "LLAMADOC_OLLAMA_REGISTRY" in line
