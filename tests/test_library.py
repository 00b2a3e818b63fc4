"""The library core from Python: Reader.run_batch does what the CLI does, and options check themselves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamadoc.batch.options import RunOptions
from llamadoc.engines.base import Sampling
from llamadoc.errors import ExitCode, OutputError, UsageError
from llamadoc.guard import GuardPolicy
from llamadoc.inputs.raster import RasterOptions
from llamadoc.inputs.sources import Shard
from llamadoc.outputs.report import Report
from llamadoc.outputs.writer import OutputSpec
from llamadoc.reader import Events, Reader, Selection
from llamadoc.results import DocumentResult, Status
from llamadoc.tasks import Ask, Extract
from tests.conftest import make_image, make_pdf


def tiny_reader(text_model: Path, mmproj: Path) -> Reader:
    return Reader(str(text_model), mmproj=str(mmproj), threads=1, guard=GuardPolicy(mode="off"))


def test_run_batch_writes_reports_and_resumes(text_model: Path, mmproj: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(4):
        make_pdf(docs / f"inv{i}.pdf", [f"Invoice {i}"])
    make_image(docs / "logo.png")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 cut")
    out = tmp_path / "out"
    options = RunOptions(raster=RasterOptions(dpi=30), max_tokens=4)
    seen: list[tuple[str, Path | None]] = []
    events = Events(on_document=lambda doc, written, problems: seen.append((Path(doc.source).name, written)))
    with tiny_reader(text_model, mmproj) as reader:
        report = reader.run_batch(Ask("What is the invoice number?"), [docs], options,
                                  output=OutputSpec(out, "json"), select=Selection(include=("*.pdf",)),
                                  events=events)
        assert isinstance(report, Report)
        assert (report.counts[Status.OK], report.counts[Status.FAILED]) == (4, 1)
        assert report.exit_code is ExitCode.FAILED
        assert report.failures and "broken.pdf" in report.failures[0]
        assert sorted(name for name, _ in seen) == ["broken.pdf", "inv0.pdf", "inv1.pdf", "inv2.pdf", "inv3.pdf"]
        assert sorted(p.name for p in out.glob("*.json")) == ["broken.json", "inv0.json", "inv1.json", "inv2.json",
                                                               "inv3.json"]
        doc = json.loads((out / "inv0.json").read_text())
        assert doc["schema_version"] == 3 and doc["options"]["question"] == "What is the invoice number?"

        again = reader.run_batch(Ask("What is the invoice number?"), [docs], options,
                                 output=OutputSpec(out, "json"), select=Selection(include=("inv*.pdf",)))
        assert again.cached == 4 and again.exit_code is ExitCode.OK


def test_run_batch_shards_and_streams_without_files(text_model: Path, mmproj: Path, tmp_path: Path) -> None:
    paths = [make_pdf(tmp_path / f"d{i}.pdf", [f"Page {i}"]) for i in range(6)]
    got: list[DocumentResult] = []
    with tiny_reader(text_model, mmproj) as reader:
        for i in (1, 2):
            report = reader.run_batch(Ask("?"), paths, RunOptions(raster=RasterOptions(dpi=20), max_tokens=2),
                                      select=Selection(shard=Shard(i, 2)),
                                      events=Events(on_document=lambda doc, written, _p: got.append(doc)))
            assert report.exit_code is ExitCode.OK
    assert sorted(d.source for d in got) == sorted(str(p) for p in paths)  # every document once


def test_extract_from_python_with_a_schema_dict(text_model: Path, mmproj: Path, chart: Path) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    with tiny_reader(text_model, mmproj) as reader:
        [doc] = reader.extract(chart, schema=schema, max_tokens=16)
    assert doc.status is Status.OK and isinstance((doc.fields or {}).get("ok"), bool)
    assert doc.options["schema"] == "<dict>" and doc.model is not None and doc.model.device == "CPU"


def test_a_later_run_that_needs_more_context_gets_it(text_model: Path, mmproj: Path, chart: Path) -> None:
    with tiny_reader(text_model, mmproj) as reader:
        reader.describe(chart, max_tokens=1)
        first = reader.models.loaded
        assert first is not None
        small = first.n_ctx
        reader.describe(chart, max_tokens=1)  # needs no more: the same engine
        assert reader.models.loaded is first
        reader.describe(chart, max_tokens=3000)
        assert reader.models.loaded is not None and reader.models.loaded.n_ctx > small  # (up to the trained context)
        grown = reader.models.loaded
        reader.describe(chart, max_tokens=1)  # less again: kept
        assert reader.models.loaded is grown


@pytest.mark.parametrize("make, message", [
    (lambda: GuardPolicy(mode="blok"), "--guard 'blok' is not one of block, flag, off"),
    (lambda: GuardPolicy(threshold=2.0), "--guard-threshold must be between 0 and 1"),
    (lambda: GuardPolicy(categories=("S99",)), "names unknown categories S99"),
    (lambda: RasterOptions(dpi=0.0), "--dpi 0 is out of range"),
    (lambda: RasterOptions(max_pixels=10), "--max-pixels 10 is too small"),
    (lambda: RasterOptions(pages="x"), "--pages 'x' is not a page list"),
    (lambda: RunOptions(max_tokens=0), "--max-tokens must be at least 1"),
    (lambda: RunOptions(sampling=Sampling(top_p=0.0)), "--top-p must be above 0"),
    (lambda: Shard(3, 2), "--shard 3/2: i must be between 1 and n"),
    (lambda: Shard.parse("half"), "--shard 'half' is not i/n"),
    (lambda: Extract(schema={"type": "object"}, embedded="maybe"), "--embedded 'maybe' is not one of"),
    (lambda: Extract(schema={"type": "array"}), "the schema must describe an object"),
    (lambda: Extract(schema={"type": "object", "properties": {"a.b": {}}}), "the property 'a.b' holds '.'"),
    (lambda: Ask("  "), "the question is empty"),
    (lambda: Reader(models=object(), model="m.gguf", ctx=8192), "takes no model, ctx"),  # type: ignore[arg-type]
])
def test_options_check_themselves_with_the_clis_messages(make: object, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        make()  # type: ignore[operator]


def test_output_spec_checks_its_format() -> None:
    with pytest.raises(OutputError, match="--format 'xml' is not one of text, json, jsonl, md"):
        OutputSpec(Path("out"), "xml")


def test_sources_given_as_they_are_keep_their_place_among_paths(text_model: Path, mmproj: Path,
                                                               tmp_path: Path) -> None:
    from llamadoc.inputs.sources import Source

    a, b = make_image(tmp_path / "a.png"), make_image(tmp_path / "b.png")
    given = Source(label="in-memory.png", data=make_image(tmp_path / "m.png").read_bytes())
    reader = tiny_reader(text_model, mmproj)
    assert [s.label for s in reader.sources([str(a), given, str(b)])] == [str(a), "in-memory.png", str(b)]
    with pytest.raises(UsageError, match="can be given once"):
        reader.sources(["-", given, "-"])


def test_the_public_api_is_lazy_and_complete() -> None:
    """`import llamadoc` loads nothing heavy; every exported name resolves; the README's Python
    example imports from llamadoc only."""
    import re
    import subprocess
    import sys

    code = ("import sys, llamadoc; heavy = [m for m in ('llamadoc.reader', 'llama_cpp', 'fitz', 'numpy') "
            "if m in sys.modules]; print(heavy); [getattr(llamadoc, n) for n in llamadoc.__all__]")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = readme.split("## From Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    imports = re.findall(r"^(?:from|import) (\S+)", example, re.M)
    assert imports and all(m in ("llamadoc", "pathlib") for m in imports), imports
    names = re.findall(r"^from llamadoc import (.+)$", example, re.M)[0].split(", ")
    import llamadoc

    assert set(names) <= set(llamadoc.__all__)


def test_all_names_what_the_package_exports() -> None:
    import llamadoc

    assert sorted(llamadoc.__all__) == sorted(llamadoc._MODULE)
