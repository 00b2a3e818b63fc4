"""Arguments -> sources: files, folders, globs, stdin; content sniffing; patterns."""

from __future__ import annotations

import io
from pathlib import Path

from llamadoc.inputs.sources import collect
from tests.conftest import make_image, make_pdf


def test_folder_recurses_sorted_and_skips_hidden(tmp_path: Path) -> None:
    make_pdf(tmp_path / "b.pdf", ["b"])
    (tmp_path / "sub").mkdir()
    make_image(tmp_path / "sub" / "a.png")
    (tmp_path / ".hidden").mkdir()
    make_image(tmp_path / ".hidden" / "x.png")
    (tmp_path / "notes.txt").write_text("not a document")
    labels = [Path(s.label).relative_to(tmp_path).as_posix() for s in collect([str(tmp_path)])]
    assert labels == ["b.pdf", "sub/a.png"]


def test_include_exclude_patterns(tmp_path: Path) -> None:
    make_pdf(tmp_path / "inv-1.pdf", ["1"])
    make_pdf(tmp_path / "inv-2.pdf", ["2"])
    make_image(tmp_path / "logo.png")
    only = collect([str(tmp_path)], include=["inv-*"], exclude=["*-2.pdf"])
    assert [Path(s.label).name for s in only] == ["inv-1.pdf"]


def test_glob_and_missing_and_empty_folder(tmp_path: Path) -> None:
    make_image(tmp_path / "x.png")
    make_image(tmp_path / "y.png")
    (tmp_path / "empty").mkdir()
    sources = collect([str(tmp_path / "*.png"), str(tmp_path / "nope.pdf"), str(tmp_path / "empty"),
                       str(tmp_path / "*.tiff")])
    assert [Path(s.label).name for s in sources[:2]] == ["x.png", "y.png"]
    assert "does not exist" in (sources[2].error or "")
    assert "holds no documents" in (sources[3].error or "")
    assert "no documents match" in (sources[4].error or "")


def test_stdin_is_read_once(tmp_path: Path) -> None:
    data = make_image(tmp_path / "x.png").read_bytes()
    [source] = collect(["-"], stdin=io.BytesIO(data))
    assert source.label == "<stdin>" and source.read_bytes() == data
    assert len(source.sha256()) == 64


def test_folders_take_xml_files_that_are_e_invoices(tmp_path: Path) -> None:
    from tests.documents import cii_xml, ubl_xml

    (tmp_path / "a-rechnung.xml").write_bytes(ubl_xml())
    (tmp_path / "b-factur-x.XML").write_bytes(cii_xml())
    (tmp_path / "config.xml").write_bytes(b"<?xml version='1.0'?><settings><a>1</a></settings>")
    (tmp_path / "broken.xml").write_bytes(b"<not xml")
    assert [Path(s.label).name for s in collect([str(tmp_path)])] == ["a-rechnung.xml", "b-factur-x.XML"]
