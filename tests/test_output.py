"""The -o folder: names mirrored, safe, never clashing and the same in every shard; and what a
result with nothing to show does to the file an earlier run wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamadoc.inputs.sources import Source
from llamadoc.outputs.writer import OutputSpec, WriteFailed, Writer, output_names
from llamadoc.results import DocumentResult, Status


def names(*rels: str, labels: tuple[str, ...] = ()) -> list[str]:
    sources = [Source(label=labels[i] if labels else f"in/{rel}", path=Path(f"/data/{i}/{rel}"), rel=rel)
               for i, rel in enumerate(rels)]
    found = output_names(sources, ".json")
    return [found[s.label] for s in sources]


def test_names_mirror_the_inputs() -> None:
    assert names("a.pdf", "sub/b.png", "mail.eml#x.pdf") == ["a.json", "sub/b.json", "mail.eml#x.json"]


def test_a_pdf_and_its_xml_keep_their_suffixes() -> None:
    assert names("invoice.pdf", "invoice.xml", "other.pdf") == ["invoice.pdf.json", "invoice.xml.json", "other.json"]


def test_the_same_path_under_two_inputs_gets_a_tag_from_the_real_path() -> None:
    first, second = names("a.pdf", "a.pdf", labels=("one/a.pdf", "two/a.pdf"))
    assert first != second and first.startswith("a-") and first.endswith(".json")
    assert names("a.pdf", "a.pdf", labels=("one/a.pdf", "two/a.pdf")) == [first, second]  # deterministic


def test_a_name_that_is_also_a_folder_is_tagged() -> None:
    a, b = names("a.pdf", "a.json/b.pdf")
    assert b == "a.json/b.json" and a.startswith("a-") and a != "a.json"


def test_names_stay_below_the_output_folder() -> None:
    assert names("../../evil.pdf", "/abs/x.pdf", "..") == ["evil.json", "abs/x.json", "document.json"]


def test_a_result_with_nothing_to_show_removes_only_what_it_may(tmp_path: Path) -> None:
    writer = Writer(OutputSpec(tmp_path, "text"), {"a.pdf": "a.txt", "b.pdf": "b.txt"})
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text("an earlier answer\n")
    left = DocumentResult(source="b.pdf", task="ask", status=Status.SKIPPED, skipped_reason="another run has it")
    assert writer.write(left) is None and (tmp_path / "b.txt").is_file()  # that run will write it
    failed = DocumentResult(source="a.pdf", task="ask", status=Status.FAILED, errors=["a.pdf does not open"])
    assert writer.write(failed) is None and not (tmp_path / "a.txt").exists()
    (tmp_path / "a.txt").mkdir()  # something the writer cannot take away: this document's write failure
    with pytest.raises(WriteFailed, match=r"cannot write .*a\.txt: an earlier result is left there"):
        writer.write(failed)
