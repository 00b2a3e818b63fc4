"""Rendering results, as golden data (black's tests/data/cases): each folder of
tests/data/render holds a result document and what every output format makes of it.

- ``result.json``: the result, in the codec's form; also the expected ``--format json``
  output (for stdout and for files), so reading it back and writing it again must give it
  byte for byte.
- ``file.txt``, ``file.md``, ``file.jsonl``: what ``-o`` writes with ``--format text``,
  ``md`` and ``jsonl``, and what stdout shows for one document; an empty ``file.txt``
  means no file is written.
- ``stdout-several.txt``: text on stdout when the batch has several documents.
- ``stdout-per-page.txt``, ``stdout-per-page.md``: ``ask --per-page`` on stdout.

A new case is a folder with its result.json; ``LLAMADOC_REGENERATE_GOLDEN=1`` writes the
rest (tests/golden.py), to be read before it is committed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamadoc.codec import from_dict
from llamadoc.outputs import render
from llamadoc.results import DocumentResult, Status
from tests import golden

CASES = Path(__file__).parent / "data" / "render"
FOLDERS = sorted(p for p in CASES.iterdir() if p.is_dir())


def renderings(doc: DocumentResult) -> dict[str, str]:
    """Every output of a result that is not already result.json, by its golden file's name."""
    out = {
        "file.txt": render.render(doc, "text"),
        "file.md": render.render(doc, "md"),
        "file.jsonl": render.render(doc, "jsonl"),
        "stdout-several.txt": render.for_stdout(doc, "text", several=True),
    }
    if doc.task == "ask":  # --per-page is an option of ask only
        out["stdout-per-page.txt"] = render.for_stdout(doc, "text", several=False, per_page=True)
        out["stdout-per-page.md"] = render.for_stdout(doc, "md", several=False, per_page=True)
    return out


@pytest.mark.parametrize("case", FOLDERS, ids=[p.name for p in FOLDERS])
def test_a_result_renders_as_its_golden_files(case: Path) -> None:
    text = (case / "result.json").read_bytes().decode("utf-8")
    doc = from_dict(json.loads(text))
    golden.check(case / "result.json", render.to_json(doc))  # the JSON form, read back and written again
    golden.check_folder(case, renderings(doc), keep=frozenset({"result.json"}))
    # One document on stdout is what -o writes for it; JSON and JSONL never change on stdout.
    for fmt in render.FORMATS:
        assert render.for_stdout(doc, fmt, several=False) == render.render(doc, fmt)
    for fmt in ("json", "jsonl"):
        assert render.for_stdout(doc, fmt, several=True, per_page=True) == render.render(doc, fmt)
    assert render.for_stdout(doc, "md", several=True) == render.render(doc, "md")


def test_the_cases_cover_every_task_and_status() -> None:
    docs = [from_dict(json.loads((case / "result.json").read_text(encoding="utf-8"))) for case in FOLDERS]
    assert {d.task for d in docs} == {"ask", "describe", "extract"}
    assert {d.status for d in docs} == set(Status)
    assert any(d.page_count > 1 for d in docs) and any(d.embedded for d in docs)
    assert any(d.cached and d.duplicate_of for d in docs)
    assert {p.status for d in docs for p in d.pages} == set(Status)
