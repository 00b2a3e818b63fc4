"""The Ray face on a real local Ray instance (in-process, shared by this module) with the
tiny generated models: the same results as a local run, a killed model worker, re-runs,
bad inputs, URIs, and the CLI's options."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llamadoc.batch.options import RunOptions
from llamadoc.codec import to_dict
from llamadoc.errors import ExitCode, GuardError, UsageError
from llamadoc.guard import GuardPolicy
from llamadoc.inputs.raster import RasterOptions
from llamadoc.outputs.report import Report
from llamadoc.outputs.writer import OutputSpec
from llamadoc.ray import Cluster, run_batch
from llamadoc.reader import Events, Reader
from llamadoc.results import DocumentResult
from llamadoc.tasks import Ask, Describe, Extract, Task
from tests.conftest import make_image, make_pdf

ray = pytest.importorskip("ray")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
OPTIONS = RunOptions(raster=RasterOptions(dpi=30), max_tokens=8)


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    """One small local Ray instance for the module: Ray takes seconds to start."""
    import logging

    ray.init(num_cpus=2, object_store_memory=150 * 2**20, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    yield
    ray.shutdown()


def mixed_folder(root: Path) -> Path:
    """Documents of every kind a batch meets: pages, an image, a copy, and broken ones."""
    docs = root / "docs"
    (docs / "sub").mkdir(parents=True)
    make_pdf(docs / "two.pdf", ["Invoice 7", "Total 70.00"])
    make_pdf(docs / "sub" / "one.pdf", ["Report"], image_page=1)
    make_image(docs / "chart.png")
    shutil.copy(docs / "chart.png", docs / "copy.png")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.7 cut short")
    make_pdf(docs / "locked.pdf", ["secret"], password="pw")
    return docs


def comparable(doc: DocumentResult) -> dict[str, Any]:
    """A result without what differs from run to run: timings, and where a verdict came from."""
    body = to_dict(doc)
    body.pop("timings_ms")
    for page in body["pages"]:
        page.pop("timings_ms")
        for verdict in [*page["guard_in"], *([page["guard_out"]] if page["guard_out"] else [])]:
            verdict.pop("elapsed_ms"), verdict.pop("cached")
    if body["status"] == "failed" and not body["pages"]:
        body.pop("model")  # a document that never opened: locally, whether the engine had loaded by then
    return body


def batch(reader: Reader, task: Task, docs: Path, out: Path, *, ray_run: bool, **kw: Any) -> tuple[Report, dict[str, Any]]:
    seen: dict[str, Any] = {}
    events = Events(on_document=lambda doc, _written, _problems: seen.__setitem__(doc.source, comparable(doc)))
    args = dict(output=OutputSpec(out, "json"), events=events, **kw)
    report = run_batch(reader, task, [str(docs), str(docs / "missing.pdf")], OPTIONS, **args) if ray_run \
        else reader.run_batch(task, [str(docs), str(docs / "missing.pdf")], OPTIONS, **args)
    return report, seen


@pytest.mark.parametrize("task, guard", [
    (Describe(), False),
    (Extract(schema={"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}), True),
    (Ask("What is the total?"), True),
], ids=["describe", "extract+guard", "ask+guard"])
def test_a_ray_batch_gives_the_local_results(ray_instance: None, text_model: Path, mmproj: Path, guard_model: Path,
                                             tmp_path: Path, task: Task, guard: bool) -> None:
    docs = mixed_folder(tmp_path)
    policy = GuardPolicy(mode="block", model=str(guard_model)) if guard else GuardPolicy(mode="off")
    with Reader(str(text_model), mmproj=str(mmproj), threads=1, guard=policy) as reader:
        ray_report, on_ray = batch(reader, task, docs, tmp_path / "ray", ray_run=True)
        local_report, local = batch(reader, task, docs, tmp_path / "local", ray_run=False)
    assert on_ray == local
    assert sorted(ray_report.summary()) == sorted(local_report.summary())  # problems come in the order they finish
    assert ray_report.exit_code == local_report.exit_code == ExitCode.FAILED  # the broken ones
    statuses = {Path(k).name: v["status"] for k, v in on_ray.items()}
    assert statuses["broken.pdf"] == statuses["locked.pdf"] == statuses["missing.pdf"] == "failed"
    assert on_ray[str(docs / "copy.png")]["duplicate_of"] == str(docs / "chart.png")
    written = sorted(p.relative_to(tmp_path / "ray").as_posix() for p in (tmp_path / "ray").rglob("*.json"))
    assert written == sorted(p.relative_to(tmp_path / "local").as_posix() for p in (tmp_path / "local").rglob("*.json"))


def test_a_rerun_on_ray_skips_what_a_local_run_finished(ray_instance: None, text_model: Path, mmproj: Path,
                                                       tmp_path: Path) -> None:
    docs = mixed_folder(tmp_path)
    out = tmp_path / "out"
    with Reader(str(text_model), mmproj=str(mmproj), threads=1, guard=GuardPolicy(mode="off")) as reader:
        batch(reader, Describe(), docs, out, ray_run=False)
        mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")
                  if ".llamadoc" not in p.parts and "\"status\": \"ok\"" in p.read_text()}
        report, seen = batch(reader, Describe(), docs, out, ray_run=True)
    # two.pdf, one.pdf, chart.png and its copy; the broken ones are tried again, and no worker is needed
    assert report.cached == 4 and "(4 from earlier runs)" in report.summary()[0]
    assert all(v["cached"] for k, v in seen.items() if v["status"] == "ok" and not v["duplicate_of"])
    assert len(mtimes) == 4 and {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # nothing finished is rewritten


def model_workers() -> list[int]:
    """The processes of this run's model workers: Ray titles them after the callable class."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"MapBatches(Answer)" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_a_killed_model_worker_loses_no_document_and_writes_none_twice(ray_instance: None, text_model: Path,
                                                                        mmproj: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(10):
        make_pdf(docs / f"doc{i:02d}.pdf", [f"Invoice {i}", f"Total {i}.00"])
    out = tmp_path / "out"
    writes: list[Path] = []
    killed: list[int] = []

    def finished(doc: DocumentResult, written: Path | None, _problems: list[str]) -> None:
        if written is not None:
            writes.append(written)
        if len(writes) == 3 and not killed:
            killed.extend(model_workers())
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    with Reader(str(text_model), mmproj=str(mmproj), threads=1, guard=GuardPolicy(mode="off")) as reader:
        report = run_batch(reader, Describe(), [str(docs)], OPTIONS, output=OutputSpec(out, "json"),
                           events=Events(on_document=finished))
        assert killed, "the kill should land mid-batch"
        assert report.exit_code == ExitCode.OK and report.documents == 10
        assert sorted(writes) == sorted(set(writes)) == sorted(out.glob("*.json"))  # each once
        assert all(json.loads(p.read_text())["status"] == "ok" for p in writes)
        again = run_batch(reader, Describe(), [str(docs)], OPTIONS, output=OutputSpec(out, "json"))
    assert again.cached == 10


def test_documents_by_uri_read_like_local_files(ray_instance: None, text_model: Path, mmproj: Path,
                                               tmp_path: Path) -> None:
    docs = mixed_folder(tmp_path)
    with Reader(str(text_model), mmproj=str(mmproj), threads=1, guard=GuardPolicy(mode="off")) as reader:
        seen: dict[str, DocumentResult] = {}
        report = run_batch(reader, Describe(), [docs.as_uri(), "file:///no/such/folder", "nosuch://bucket/x"],
                           OPTIONS, output=OutputSpec(tmp_path / "out", "json"), select=None,
                           events=Events(on_document=lambda d, _w, _p: seen.__setitem__(d.source, d)))
        _, local = batch(reader, Describe(), docs, tmp_path / "local", ray_run=False)
    by_uri = {k.removeprefix(docs.as_uri() + "/"): comparable(v) for k, v in seen.items()}
    for rel, mine in by_uri.items():
        if "://" in rel:
            continue
        theirs = local[str(docs / rel)]
        assert mine["status"] == theirs["status"]
        if mine["status"] == "ok":
            different = {"source", "duplicate_of"}
            assert {k: v for k, v in mine.items() if k not in different} == \
                   {k: v for k, v in theirs.items() if k not in different}
    assert len(by_uri) == report.documents == 8
    assert seen["file:///no/such/folder"].errors == ["file:///no/such/folder does not exist"]
    assert seen["nosuch://bucket/x"].errors[0].startswith("cannot list nosuch://bucket/x")
    assert (tmp_path / "out" / "sub" / "one.json").is_file()


def test_a_run_wide_error_on_a_worker_is_the_local_one(ray_instance: None, text_model: Path, mmproj: Path,
                                                      guard_model: Path, chart: Path) -> None:
    """A question the guard can never screen stops the run where the pages are prepared (on a
    Ray worker): with the local run's error and exit code, not Ray's."""
    task = Ask("why " * 5000)
    with Reader(str(text_model), mmproj=str(mmproj), threads=1,
                guard=GuardPolicy(mode="block", model=str(guard_model))) as reader:
        with pytest.raises(GuardError) as on_ray:
            run_batch(reader, task, [str(chart)], OPTIONS)
        with pytest.raises(GuardError) as local:
            reader.run_batch(task, [str(chart)], OPTIONS)
    assert str(on_ray.value) == str(local.value) and "cannot fit the guard's context" in str(local.value)


def test_cluster_options_are_checked_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Cluster.parse("local", "2-4", 0.5) == Cluster("local", (2, 4), 0.5)
    assert Cluster.parse("head.example:6379", "3", None) == Cluster("head.example:6379", (3, 3), 1.0)
    for bad in [("local", "4-2", None), ("local", "x", None), ("local", None, 0.0), ("two words", None, None),
                (None, "2", None), (None, None, 2.0), ("ray://head:10001", None, None)]:
        with pytest.raises(UsageError):
            Cluster.parse(*bad)
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda _name: None)
    with pytest.raises(UsageError, match=r"pip install 'llamadoc\[ray\]'"):
        Cluster.parse("local", None, None)


def test_the_cli_without_ray_names_the_extra(run_cli: Any, model_args: list[str], chart: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda _name: None)
    result = run_cli("describe", str(chart), *model_args, "--ray", "local")
    assert result.exit_code == 2
    assert result.stderr.strip() == ("llamadoc: error: --ray needs Ray, which is not installed "
                                     "(pip install 'llamadoc[ray]')")
    assert run_cli("describe", str(chart), *model_args, "--workers", "2").exit_code == 2


def test_help_and_the_cli_module_never_import_ray() -> None:
    code = ("import sys, llamadoc.cli.app\n"
            "try:\n    llamadoc.cli.app.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'ray' not in sys.modules and 'pyarrow' not in sys.modules, 'ray was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
