"""Names below -o: mirrored, safe, and never clashing, the same in every shard."""

from __future__ import annotations

from pathlib import Path

from llamadoc.inputs.sources import Source
from llamadoc.outputs.writer import output_names


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
