"""Exit codes follow the cause, one test per row of the README's table, and --help agrees with it.

The rule: 2 when the command or the configuration must change before a retry can work;
1 when the run itself failed (a document, a write, a download, the machine's memory, a bug).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llamadoc.errors import ExitCode, ResourceError
from tests.conftest import make_image, make_pdf
from tests.fakes import ScriptedGuard

README = Path(__file__).resolve().parents[1] / "README.md"
FAST = ("--max-tokens", "4", "--dpi", "30")


def readme_table() -> dict[int, str]:
    section = README.read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(code): meaning.strip() for code, meaning in re.findall(r"^\| (\d+) \| (.+?) \|$", section, re.M)}


def test_the_readme_and_help_list_every_exit_code(run_cli: Any) -> None:
    table = readme_table()
    assert sorted(table) == sorted(int(c) for c in ExitCode)
    help_text = run_cli("ask", "--help").stdout
    listed = re.search(r"Exit codes: (.+)", " ".join(help_text.split()))
    assert listed is not None
    assert [int(c) for c in re.findall(r"(?:^|; )(\d+) ", listed.group(1))] == sorted(table)


# -- 0 ------------------------------------------------------------------------------


def test_0_every_document_answered(run_cli: Any, model_args: list[str], chart: Path) -> None:
    assert run_cli("ask", str(chart), "-q", "?", *model_args, *FAST).exit_code == 0


# -- 1 ------------------------------------------------------------------------------


def test_1_a_document_failed(run_cli: Any, model_args: list[str], chart: Path, tmp_path: Path) -> None:
    result = run_cli("ask", str(chart), str(tmp_path / "missing.png"), "-q", "?", *model_args, *FAST)
    assert result.exit_code == 1 and "missing.png does not exist" in result.stderr


def test_1_a_download_failed(run_cli: Any, chart: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLAMADOC_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("LLAMADOC_OLLAMA_REGISTRY", "http://127.0.0.1:9")  # nothing listens: refused at once
    result = run_cli("ask", str(chart), "-q", "?", "--guard", "off")
    assert result.exit_code == 1  # a retry may work: nothing in the command is wrong
    assert "cannot reach 127.0.0.1:9" in result.stderr and "connection refused" in result.stderr


def test_1_out_of_memory(run_cli: Any, model_args: list[str], chart: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mllama engine's own estimate refusing a model is tested in test_mllama_cli.py; here the
    error's code, whichever engine raises it."""
    def too_big(*_a: Any) -> None:
        raise ResourceError("the model needs 9.5 GiB on CPU, 2.0 GiB are free", hint="lower --ctx")

    monkeypatch.setattr("llamadoc.engines.load_vision_engine", too_big)
    result = run_cli("ask", str(chart), "-q", "?", *model_args, *FAST)
    assert result.exit_code == 1 and "error: the model needs 9.5 GiB on CPU" in result.stderr


def test_1_an_internal_error_says_so_and_offers_the_traceback(run_cli: Any, model_args: list[str], chart: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(self: Any, text: str) -> None:
        raise ZeroDivisionError("a bug of ours")

    monkeypatch.setattr("llamadoc.tasks.ask.Ask.read", bug)
    result = run_cli("ask", str(chart), "-q", "?", *model_args, *FAST)
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "llamadoc: internal error: ZeroDivisionError: a bug of ours "
        "(rerun as `llamadoc --traceback ...` to see where, and report it)"]
    with pytest.raises(ZeroDivisionError):
        run_cli("--traceback", "ask", str(chart), "-q", "?", *model_args, *FAST, "--force")
    monkeypatch.setenv("LLAMADOC_RAISE_ERRORS", "1")
    with pytest.raises(ZeroDivisionError):
        run_cli("ask", str(chart), "-q", "?", *model_args, *FAST, "--force")


def test_a_bug_in_our_image_code_is_not_called_a_bad_image(run_cli: Any, model_args: list[str], chart: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(img: Any) -> Any:
        raise TypeError("our conversion broke")

    monkeypatch.setattr("llamadoc.inputs.raster.page_rgb", bug)
    result = run_cli("ask", str(chart), "-q", "?", *model_args, *FAST)
    assert result.exit_code == 1
    assert "internal error: TypeError: our conversion broke" in result.stderr
    assert "not a readable image" not in result.stderr and "cannot be decoded" not in result.stderr


# -- 2 ------------------------------------------------------------------------------


# Every bad value of an option: exit 2 and one line on stderr that names the option and the
# value. One table for the whole CLI; a new check adds its row here.
USAGE_ERRORS = [
    (["--format", "xml"], "--format 'xml' is not one of text, json, jsonl, md"),
    (["--pages", "3-1"], "--pages '3-1' has an empty or zero range"),
    (["--guard", "blok"], "--guard 'blok' is not one of block, flag, off"),
    (["--shard", "4/3"], "--shard 4/3: i must be between 1 and n"),
    (["--fail-on", "typo"], "--fail-on: unknown outcome typo"),
    (["--max-pixels", "-5"], "--max-pixels -5 is too small"),
    (["--max-pixels", "0"], "--max-pixels 0 is too small"),
    (["--dpi", "nan"], "--dpi nan is out of range"),
    (["--dpi", "1e-9"], "--dpi 1e-09 is out of range"),
    (["--max-tokens", "0"], "--max-tokens must be at least 1"),
    (["--temperature", "-1"], "--temperature must be 0 or more"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--guard-threshold", "1.5"], "--guard-threshold must be between 0 and 1"),
    (["--model", "/nonexistent/model.gguf"], "/nonexistent/model.gguf does not exist"),
    (["--mmproj", "/nonexistent/mmproj.gguf"], "/nonexistent/mmproj.gguf does not exist"),
    (["--model", "no-such-model:7b"], "unknown model 'no-such-model:7b'"),
]


@pytest.mark.parametrize("args, message", USAGE_ERRORS, ids=[" ".join(args) for args, _ in USAGE_ERRORS])
def test_2_a_bad_option_is_one_line(run_cli: Any, model_args: list[str], chart: Path, args: list[str],
                                    message: str) -> None:
    result = run_cli("ask", str(chart), "-q", "?", *model_args, *args)  # the last of a repeated option wins
    assert result.exit_code == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert message in line


def test_2_a_model_that_is_not_there(run_cli: Any, chart: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model")
    not_gguf = run_cli("ask", str(chart), "-q", "?", "--model", str(junk), "--guard", "off")
    assert not_gguf.exit_code == 2 and "is not a GGUF file" in not_gguf.stderr
    offline = run_cli("ask", str(chart), "-q", "?", "--guard", "off")  # the default model, offline
    assert offline.exit_code == 2 and "offline mode is on" in offline.stderr


def test_2_a_schema_that_cannot_be_used(run_cli: Any, model_args: list[str], chart: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    unreadable = tmp_path / "bad.yaml"
    unreadable.write_text("type: [object\n")
    result = run_cli("extract", str(chart), "--schema", str(unreadable), *model_args)
    assert result.exit_code == 2 and "does not parse" in result.stderr
    # A valid JSON Schema that no grammar expresses: checked once, before the first page, not page by page.
    loads: list[int] = []
    monkeypatch.setattr("llamadoc.engines.load_vision_engine", lambda *a: loads.append(1))
    no_grammar = tmp_path / "not.json"
    no_grammar.write_text(json.dumps({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}))
    docs = [str(make_image(tmp_path / f"p{i}.png")) for i in range(3)]
    result = run_cli("extract", *docs, "--schema", str(no_grammar), *model_args)
    assert result.exit_code == 2 and loads == []
    assert result.stderr.count("cannot be turned into a grammar") == 1
    remote = tmp_path / "remote.json"
    remote.write_text(json.dumps({"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}))
    result = run_cli("extract", *docs, "--schema", str(remote), *model_args)
    assert result.exit_code == 2 and "llamadoc never fetches schemas" in result.stderr


def test_2_a_guard_prompt_that_can_never_fit(run_cli: Any, model_args: list[str], tmp_path: Path, guard_model: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    engine = ScriptedGuard(lambda convo: ("safe", 0.0))
    engine.n_ctx = 512
    monkeypatch.setattr("llamadoc.engines.load_guard_engine", lambda *a: engine)
    docs = [str(make_image(tmp_path / f"p{i}.png")) for i in range(3)]
    question = " ".join(["why"] * 600)  # 600 words: more than the guard's 512 tokens on its own
    args = [a for a in model_args if a not in ("--guard", "off")]
    result = run_cli("ask", *docs, "-q", question, *args, "--guard-model", str(guard_model), *FAST)
    assert result.exit_code == 2 and engine.prompts == []  # stopped before any page was screened
    assert result.stderr.count("cannot fit the guard's context of 512 tokens") == 1


def test_2_an_output_folder_that_cannot_be_used(run_cli: Any, model_args: list[str], chart: Path) -> None:
    result = run_cli("ask", str(chart), "-q", "?", *model_args, "-o", str(chart))
    assert result.exit_code == 2 and "is a file, not a folder" in result.stderr


# -- 3 ------------------------------------------------------------------------------


def test_3_the_guard_withheld_an_answer(run_cli: Any, model_args: list[str], chart: Path, tmp_path: Path,
                                       guard_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = ScriptedGuard(lambda convo: ("unsafe\nS1", 0.99) if "Agent:" in convo else ("safe", 0.01))
    monkeypatch.setattr("llamadoc.engines.load_guard_engine", lambda *a: engine)
    args = [a for a in model_args if a not in ("--guard", "off")]
    result = run_cli("ask", str(chart), "-q", "?", *args, "--guard-model", str(guard_model), *FAST)
    assert result.exit_code == 3 and result.stdout == "" and "withheld by the guard" in result.stderr
    # A failure outranks a block: 1.
    mixed = run_cli("ask", str(chart), str(tmp_path / "missing.png"), "-q", "?", *args, "--guard-model",
                    str(guard_model), *FAST)
    assert mixed.exit_code == 1


# -- 130 ----------------------------------------------------------------------------


def test_130_interrupted(run_cli: Any, model_args: list[str], chart: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real signals to a real process are in test_reliability.py; here the code and the message."""
    def ctrl_c(*_a: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("llamadoc.engines.load_vision_engine", ctrl_c)
    result = run_cli("ask", str(chart), "-q", "?", *model_args, *FAST)
    assert result.exit_code == 130 and "interrupted; finished documents are kept" in result.stderr


# -- what loads when ------------------------------------------------------------------


def test_the_cli_imports_no_engine_until_a_page_needs_one(tmp_path: Path) -> None:
    code = ("import sys, llamadoc.cli.app; from llamadoc.cli.app import app; "
            "heavy = [m for m in ('llama_cpp', 'pymupdf', 'numpy', 'gguf') if m in sys.modules]; print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    helped = subprocess.run([sys.executable, "-m", "llamadoc", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "Exit codes" in helped.stdout


def test_a_batch_taken_whole_from_the_store_loads_no_model(run_cli: Any, model_args: list[str], tmp_path: Path,
                                                           guard_model: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    docs = [str(make_pdf(tmp_path / f"d{i}.pdf", [f"Invoice {i}"])) for i in range(3)]
    args = [a for a in model_args if a not in ("--guard", "off")]
    base = ["ask", *docs, "-q", "?", *args, "--guard-model", str(guard_model), "--guard", "flag", *FAST,
            "-o", str(tmp_path / "out"), "--format", "json"]
    assert run_cli(*base).exit_code == 0

    def no_load(*_a: Any) -> None:
        raise AssertionError("a finished batch must not load a model")

    monkeypatch.setattr("llamadoc.engines.load_vision_engine", no_load)
    monkeypatch.setattr("llamadoc.engines.load_guard_engine", no_load)
    again = run_cli(*base)
    assert again.exit_code == 0, again.stderr
    assert "(3 from earlier runs)" in again.stderr
