"""ask, describe and extract through a running server (--server / LLAMADOC_HOST): the same result
documents, files and exit codes as a local run; a clear line when the server cannot serve the run."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from llamadoc.guard import GuardPolicy
from tests.conftest import make_image, make_pdf
from tests.mllama_helpers import convert_fixture
from tests.server_helpers import offline_home, serving


def timeless(value: Any) -> Any:
    """A result document without its timings, which no two runs share."""
    if isinstance(value, dict):
        return {k: timeless(v) for k, v in value.items() if k not in ("timings_ms", "elapsed_ms")}
    if isinstance(value, list):
        return [timeless(v) for v in value]
    return value


def two_runs(run_cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str, local: list[str],
             remote: list[str]) -> tuple[Any, Any]:
    """The same command run here and through the server, each with a home of its own."""
    monkeypatch.setenv("LLAMADOC_HOME", str(tmp_path / "home-local"))
    here = run_cli(*local, "-o", str(tmp_path / "out-local"))
    monkeypatch.setenv("LLAMADOC_HOME", str(tmp_path / "home-client"))
    monkeypatch.setenv("LLAMADOC_HOST", url)
    there = run_cli(*remote, "-o", str(tmp_path / "out-client"))
    return here, there


def test_ask_through_the_server_is_the_local_run(run_cli: Any, text_model: Path, mmproj: Path, guard_model: Path,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chart = make_image(tmp_path / "chart.png")
    pdf = make_pdf(tmp_path / "report.pdf", ["Sales by region", "North 40, South 25"])
    job = ["ask", str(chart), str(pdf), "-q", "Which region sold most?", "--max-tokens", "6", "--dpi", "30",
           "--format", "json"]
    model = ["--model", str(text_model), "--mmproj", str(mmproj), "--threads", "1", "--guard-model", str(guard_model)]
    with offline_home(tmp_path / "home-server"), serving(model=str(text_model), mmproj=str(mmproj),
                                                         guard=GuardPolicy(model=str(guard_model))) as s:
        here, there = two_runs(run_cli, monkeypatch, tmp_path, s.url, [*job, *model], job)
    assert there.exit_code == here.exit_code, there.stderr
    for name in ("chart.json", "report.json"):
        local = json.loads((tmp_path / "out-local" / name).read_text())
        remote = json.loads((tmp_path / "out-client" / name).read_text())
        assert timeless(remote) == timeless(local)
        assert remote["guard_model"] == "tiny-guard.gguf" and remote["pages"][0]["guard_in"]


def test_describe_on_mllama_through_the_server(run_cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mllama = convert_fixture("tiny", tmp_path / "tiny-mllama.gguf", "Q8_0")
    pdf = make_pdf(tmp_path / "r.pdf", ["Annual report", "Appendix", "Contacts"])
    job = ["describe", str(pdf), "--max-tokens", "8", "--dpi", "20", "--format", "json", "--guard", "off"]
    with offline_home(tmp_path / "home-server"), serving(model=str(mllama), guard=GuardPolicy(mode="off")) as s:
        here, there = two_runs(run_cli, monkeypatch, tmp_path, s.url, [*job, "--model", str(mllama), "--threads", "1"],
                               job)
        assert s.batch_sizes  # decoded by the server's scheduler
    assert here.exit_code == there.exit_code == 0, there.stderr
    local, remote = (json.loads((tmp_path / d / "r.json").read_text()) for d in ("out-local", "out-client"))
    assert timeless(remote) == timeless(local) and remote["model"]["engine"] == "mllama"


def test_an_unreachable_server_is_one_line_and_exit_1(run_cli: Any, chart: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once it is closed
    result = run_cli("ask", str(chart), "-q", "?", "--server", f"127.0.0.1:{port}")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"llamadoc: error: cannot reach the llamadoc server at http://127.0.0.1:{port}")
    assert len(result.stderr.strip().splitlines()) == 1
    assert run_cli("ask", str(chart), "-q", "?", "--server", "ftp://x").exit_code == 2


def test_what_the_server_refuses(run_cli: Any, text_model: Path, mmproj: Path, guard_model: Path, chart: Path,
                                 tmp_path: Path) -> None:
    with offline_home(tmp_path / "home-server"), serving(model=str(text_model), mmproj=str(mmproj), api_key="k" * 16,
                                                         guard=GuardPolicy(model=str(guard_model))) as s:
        keyless = run_cli("ask", str(chart), "-q", "?", "--server", s.url)
        assert keyless.exit_code == 2 and "refused the API key" in keyless.stderr and "LLAMADOC_API_KEY" in keyless.stderr
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("LLAMADOC_API_KEY", "k" * 16)
            unscreened = run_cli("ask", str(chart), "-q", "?", "--server", s.url, "--guard", "off")
            assert unscreened.exit_code == 2 and "this server screens every request" in unscreened.stderr
            other = run_cli("ask", str(chart), "-q", "?", "--server", s.url, "--model", "qwen2.5-vl:7b")
            assert other.exit_code == 2 and f"serves {text_model}" in other.stderr
            fine = run_cli("ask", str(chart), "-q", "?", "--server", s.url, "--max-tokens", "4", "--format", "json")
            assert fine.exit_code in (0, 3) and json.loads(fine.stdout)["model"]["path"] == str(text_model)


def test_a_server_without_a_guard(run_cli: Any, text_model: Path, mmproj: Path, chart: Path, tmp_path: Path) -> None:
    with offline_home(tmp_path / "home-server"), serving(model=str(text_model), mmproj=str(mmproj),
                                                         guard=GuardPolicy(mode="off")) as s:
        screened = run_cli("ask", str(chart), "-q", "?", "--server", s.url)
        assert screened.exit_code == 2 and "runs without a guard" in screened.stderr
        assert run_cli("ask", str(chart), "-q", "?", "--server", s.url, "--guard", "off", "--max-tokens", "3"
                       ).exit_code == 0
