"""The Ray face on a cluster of processes: a head and a worker node (`ray start`), and the
CLI as a driver that connects to them, is killed, and resumes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_pdf
from tests.test_batch import folder_of_documents

pytest.importorskip("ray")


def ray_executable() -> str:
    """The `ray` installed with this Python: beside sys.executable, so a virtual environment's
    python run without activating it finds its own; PATH only when the install put it elsewhere."""
    beside = Path(sys.executable).parent / "ray"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("ray")
    if found is None:
        pytest.skip(f"no `ray` executable beside {sys.executable} or on PATH: pip install 'llamadoc[ray]' there")
    return found


def _started(log: Path, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while "Ray runtime started" not in (log.read_text() if log.exists() else ""):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, str]]:
    """A head node with one CPU and a worker node with one: a batch needs both (one CPU
    prepares pages, the other holds the model worker). Each `ray start --block` leads
    its own process group, so the teardown ends exactly these processes."""
    ray = ray_executable()
    temp = Path(tempfile.mkdtemp(prefix="ldray", dir="/tmp"))  # short: Ray's sockets live below it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"RAY_AUTH_MODE": "token"}  # the nodes and the driver share ~/.ray's token
    common = ["--block", "--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]
    nodes = []
    try:
        for name, args in (("head", ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"]),
                           ("worker", [f"--address=127.0.0.1:{port}"])):
            log = temp / f"{name}.log"
            with log.open("wb") as out:
                nodes.append(subprocess.Popen([ray, "start", *common, *args], env=env, stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True))
            _started(log, nodes[-1], time.monotonic() + 120)
        yield env | {"ADDRESS": f"127.0.0.1:{port}"}
    finally:
        for node in reversed(nodes):
            os.killpg(node.pid, signal.SIGTERM)
        for node in reversed(nodes):
            try:
                node.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):  # the group is gone already
                os.killpg(node.pid, signal.SIGKILL)  # whatever of that group is still there
            node.wait()
        shutil.rmtree(temp, ignore_errors=True)


def cli(env: dict[str, str], docs: Path, out: Path, model_args: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "llamadoc", "describe", str(docs), *model_args, "--max-tokens", "8",
            "--dpi", "30", "-o", str(out), "--format", "json", *extra]


def results(out: Path) -> dict[str, Any]:
    """The files below -o without what differs from run to run."""
    found = {}
    for path in out.rglob("*.json"):
        if ".llamadoc" in path.parts:
            continue
        body = json.loads(path.read_text())
        body.pop("timings_ms")
        for page in body["pages"]:
            page.pop("timings_ms")
        if body["status"] == "failed" and not body["pages"]:
            body.pop("model")  # never opened: whether that worker had loaded its engine by then
        found[path.relative_to(out).as_posix()] = body
    return found


def test_a_batch_over_two_ray_nodes_equals_the_local_one(cluster: dict[str, str], model_args: list[str],
                                                         tmp_path: Path) -> None:
    docs = folder_of_documents(tmp_path, 5)
    (docs / "broken.pdf").write_bytes(b"%PDF-1.7 cut short")
    make_pdf(docs / "two.pdf", ["Page one", "Page two"])
    env = cluster | {"LLAMADOC_HOME": str(tmp_path / "home")}
    on_ray = subprocess.run(cli(env, docs, tmp_path / "ray", model_args, "--ray", cluster["ADDRESS"], "--workers", "1"),
                            env=env, capture_output=True, text=True, timeout=300)
    local = subprocess.run(cli(env, docs, tmp_path / "local", model_args), env=env, capture_output=True, text=True,
                           timeout=300)
    assert on_ray.returncode == local.returncode == 1, on_ray.stderr  # the broken one
    assert results(tmp_path / "ray") == results(tmp_path / "local")
    assert "7 documents: ok 6, partial 0, failed 1, blocked 0" in on_ray.stderr

    again = subprocess.run(cli(env, docs, tmp_path / "ray", model_args, "--ray", cluster["ADDRESS"]), env=env,
                           capture_output=True, text=True, timeout=300)
    assert "(6 from earlier runs)" in again.stderr
    assert [line for line in again.stderr.splitlines() if "wrote" in line and "broken" not in line] == []


@pytest.mark.slow
def test_a_killed_driver_loses_nothing_finished(cluster: dict[str, str], model_args: list[str],
                                               tmp_path: Path) -> None:
    docs = folder_of_documents(tmp_path, 16)
    out = tmp_path / "out"
    env = cluster | {"LLAMADOC_HOME": str(tmp_path / "home")}
    command = cli(env, docs, out, model_args, "--ray", cluster["ADDRESS"])
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(out.glob("*.json"))) < 3:
        assert first.poll() is None
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    assert 3 <= len(done) < 16, "the kill should land mid-batch"
    assert all(json.loads(p.read_text())["status"] == "ok" for p in out.glob("*.json"))  # whole, never half

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in out.glob("*.json")) == [f"doc{i:02d}.json" for i in range(16)]
    assert all((out / name).stat().st_mtime_ns == mtime for name, mtime in done.items())
    assert f"({len(done)} from earlier runs)" in second.stderr


def test_sigterm_stops_a_ray_batch_as_it_stops_a_local_one(cluster: dict[str, str], model_args: list[str],
                                                           tmp_path: Path) -> None:
    """Ray's core puts its own SIGTERM handler in the driver (a crash dump, exit 15): the CLI's is put back."""
    docs = folder_of_documents(tmp_path, 12)
    out = tmp_path / "out"
    env = cluster | {"LLAMADOC_HOME": str(tmp_path / "home")}
    run = subprocess.Popen(cli(env, docs, out, model_args, "--ray", cluster["ADDRESS"]), env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list(out.glob("*.json")):
        assert run.poll() is None
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr
    assert "interrupted; finished documents are kept" in stderr
