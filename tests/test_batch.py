"""Batches: resume after a kill, the result store, duplicates, shards, --fail-on."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import make_image, make_pdf


def folder_of_documents(root: Path, count: int) -> Path:
    docs = root / "docs"
    docs.mkdir()
    for i in range(count):
        make_pdf(docs / f"doc{i:02d}.pdf", [f"Invoice {i}", f"Total {i * 10}.00"])
    return docs


def test_a_killed_batch_resumes_and_writes_each_document_once(model_args: list[str], tmp_path: Path) -> None:
    docs = folder_of_documents(tmp_path, 24)
    out = tmp_path / "out"
    env = os.environ | {"LLAMADOC_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "llamadoc", "describe", str(docs), *model_args, "--max-tokens", "48",
           "--dpi", "30", "-o", str(out), "--format", "json"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(out.glob("*.json"))) < 3:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    assert 3 <= len(done) < 24, "the kill should land mid-batch"
    for p in out.glob("*.json"):
        json.loads(p.read_text())  # whatever was written is whole

    second = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    files = sorted(p.name for p in out.glob("*.json"))
    assert files == [f"doc{i:02d}.json" for i in range(24)]
    for name, mtime in done.items():
        assert (out / name).stat().st_mtime_ns == mtime  # finished documents are not redone
    assert f"({len(done)} from earlier runs)" in second.stderr
    assert all(json.loads((out / f).read_text())["status"] == "ok" for f in files)


def test_store_skips_finished_documents_unless_forced(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "a.pdf", ["one"])
    args = ["ask", str(pdf), "-q", "?", *model_args, "--max-tokens", "4", "--dpi", "30", "--format", "json"]
    first = json.loads(run_cli(*args).stdout)
    again = json.loads(run_cli(*args).stdout)
    assert not first["cached"] and again["cached"] and again["answer"] == first["answer"]
    assert not json.loads(run_cli(*args, "--force").stdout)["cached"]
    other = json.loads(run_cli(*args[:-2], "--max-tokens", "5", "--format", "json").stdout)
    assert not other["cached"]  # other options, other answer: not taken from the store


def test_identical_files_are_read_once(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    a = make_image(tmp_path / "a.png")
    b = tmp_path / "copy-of-a.png"
    shutil.copy(a, b)
    result = run_cli("ask", str(a), str(b), "-q", "?", *model_args, "--max-tokens", "4", "--format", "jsonl")
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert second["duplicate_of"] == str(a) and second["source"] == str(b)
    assert second["answer"] == first["answer"] and second["sha256"] == first["sha256"]


def test_shards_split_the_batch_without_clashing(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    docs = folder_of_documents(tmp_path, 7)
    out = tmp_path / "out"
    seen = []
    for i in (1, 2, 3):
        result = run_cli("ask", str(docs), "-q", "?", *model_args, "--max-tokens", "2", "--dpi", "20",
                         "--shard", f"{i}/3", "-o", str(out), "--format", "jsonl")
        assert result.exit_code == 0
        seen.append({line.split("wrote ")[1] for line in result.stderr.splitlines() if "wrote" in line})
    assert sum(len(s) for s in seen) == 7 and len(set().union(*seen)) == 7
    assert run_cli("ask", str(docs), "-q", "?", *model_args, "--shard", "4/3").exit_code == 2


def test_include_exclude_from_the_cli(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    docs = folder_of_documents(tmp_path, 3)
    make_image(docs / "logo.png")
    result = run_cli("ask", str(docs), "-q", "?", *model_args, "--max-tokens", "2", "--dpi", "20",
                     "--include", "*.pdf", "--exclude", "doc01*", "--format", "jsonl")
    assert [Path(json.loads(x)["source"]).name for x in result.stdout.splitlines()] == ["doc00.pdf", "doc02.pdf"]


def test_fail_on_decides_the_exit_code(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    good = make_image(tmp_path / "good.png")
    args = ["ask", str(good), str(tmp_path / "missing.png"), "-q", "?", *model_args, "--max-tokens", "2"]
    assert run_cli(*args).exit_code == 1
    chosen = run_cli(*args, "--fail-on", "blocked")
    assert chosen.exit_code == 0  # --fail-on chooses: failures were left out, and the summary says so
    assert "not counted in the exit code: failed (--fail-on blocked; add failed to count it)" in chosen.stderr
    bad = run_cli(*args, "--fail-on", "failed,typo")
    assert bad.exit_code == 2 and "unknown outcome typo" in bad.stderr
    quiet = run_cli(*args, "--quiet")
    assert quiet.exit_code == 1 and quiet.stderr == ""


def test_an_argument_that_names_no_document_fails_without_a_file(run_cli: Any, model_args: list[str],
                                                                 tmp_path: Path) -> None:
    good = make_image(tmp_path / "good.png")
    out = tmp_path / "out"
    result = run_cli("ask", str(good), str(tmp_path / "missing.png"), "-q", "?", *model_args, "--max-tokens", "2",
                     "-o", str(out), "--format", "json")
    assert result.exit_code == 1 and "missing.png does not exist" in result.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["good.json"]


def test_copies_of_a_document_another_run_holds_are_left_to_it(tmp_path: Path) -> None:
    from llamadoc.batch.options import RunOptions
    from llamadoc.batch.pipeline import Pipeline
    from llamadoc.inputs.raster import RasterOptions
    from llamadoc.inputs.sources import collect
    from llamadoc.results import Status
    from llamadoc.tasks import Describe
    from tests.fakes import ScriptedEngine, ScriptedModels

    a = make_image(tmp_path / "a.png")
    shutil.copy(a, tmp_path / "b.png")
    pipeline = Pipeline(ScriptedModels(ScriptedEngine(lambda _r, _n: "x")), Describe(),
                        RunOptions(raster=RasterOptions(dpi=20)), claim=lambda _sha: False)
    docs = list(pipeline.run(collect([str(a), str(tmp_path / "b.png")])))
    assert [d.status for d in docs] == [Status.SKIPPED, Status.SKIPPED]
