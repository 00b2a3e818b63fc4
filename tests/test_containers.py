"""E-mails and archives -> the documents inside: labels, output paths, filters, nesting, and
every guard (bombs, names that climb out, encrypted members, damage) failing as data."""

from __future__ import annotations

import email
import email.policy
import io
import os
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from llamadoc.inputs import containers
from llamadoc.inputs.raster import Document, RasterOptions
from llamadoc.inputs.sources import Source, collect
from tests.conftest import make_image, make_pdf
from tests.documents import cii_xml, make_mail, make_msg


@pytest.fixture
def pdfs(tmp_path: Path) -> list[bytes]:
    return [make_pdf(tmp_path / f"p{i}.pdf", [f"Invoice {i}"]).read_bytes() for i in range(3)]


def _zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _named(sources: list[Source], root: Path) -> list[tuple[str, str | None]]:
    """(label below root, error without the label) of each source."""
    out = []
    for s in sources:
        label = s.label.replace(f"{root}/", "")
        out.append((label, s.error.replace(s.label, "").strip() if s.error else None))
    return out


def test_an_e_mail_gives_its_attachments(tmp_path: Path, pdfs: list[bytes]) -> None:
    mail = tmp_path / "mail.eml"
    mail.write_bytes(make_mail([(f"invoice-{i}.pdf", p) for i, p in enumerate(pdfs)] + [("notes.txt", b"hi")]))
    sources = collect([str(mail)])
    assert [s.label for s in sources] == [f"{mail}#invoice-{i}.pdf" for i in range(3)]
    assert [s.rel for s in sources] == [f"mail.eml/invoice-{i}.pdf" for i in range(3)]
    assert [s.read_bytes() for s in sources] == pdfs  # exactly the attachments' bytes
    assert sources[1].sha256() == Source(label="x", data=pdfs[1]).sha256()


def test_the_body_is_a_document_only_when_asked(tmp_path: Path, pdfs: list[bytes]) -> None:
    mail = tmp_path / "mail.eml"
    mail.write_bytes(make_mail([("a.pdf", pdfs[0])], text="Dear customer, " * 30 + "Total due: 162.60 EUR by 3 December."))
    assert [s.label.rpartition("#")[2] for s in collect([str(mail)])] == ["a.pdf"]
    body, _ = collect([str(mail)], include_body=True)
    assert body.label == f"{mail}#body" and body.rel == "mail.eml/body"
    with Document(body, RasterOptions(dpi=40)) as doc:
        text = " ".join((next(doc.pages()).text or "").split())
    assert "Total due: 162.60 EUR by 3 December." in text  # long lines wrap, never run off the page
    assert "Invoices for October" in text and "billing@moulin.example" in text  # the headers too


def test_an_html_mail_body_is_its_text(tmp_path: Path) -> None:
    mail = tmp_path / "html.eml"
    html = "<html><head><style>p {color: red}</style></head><body><p>Amount <b>99.00</b></p><script>x()</script></body></html>"
    mail.write_bytes(make_mail([], text="", html=html))
    [body] = collect([str(mail)], include_body=True)
    with Document(body, RasterOptions(dpi=40)) as doc:
        text = next(doc.pages()).text or ""
    assert "Amount 99.00" in text and "color" not in text and "x()" not in text


def test_an_e_mail_without_documents_says_so(tmp_path: Path) -> None:
    mail = tmp_path / "hello.eml"
    mail.write_bytes(make_mail([("notes.txt", b"nothing here")]))
    [only] = collect([str(mail)])
    assert only.error == f"{mail} holds no attachment or member that is a document; --include-body reads an e-mail's own text"


def test_pictures_the_html_shows_are_not_attachments(tmp_path: Path, pdfs: list[bytes]) -> None:
    from email.message import EmailMessage

    logo = make_image(tmp_path / "logo.png").read_bytes()
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@b.example", "c@d.example", "Invoice"
    message.set_content("see attached")
    message.add_alternative('<p>Invoice</p><img src="cid:logo1">', subtype="html")
    message.get_payload()[1].add_related(logo, "image", "png", cid="<logo1>")
    message.add_attachment(pdfs[0], maintype="application", subtype="pdf", filename="invoice.pdf")
    message.add_attachment(logo, maintype="image", subtype="png", filename="receipt-photo.png")
    mail = tmp_path / "related.eml"
    mail.write_bytes(message.as_bytes())
    assert [s.label.rpartition("#")[2] for s in collect([str(mail)])] == ["invoice.pdf", "receipt-photo.png"]


def test_a_forwarded_mail_is_followed(tmp_path: Path, pdfs: list[bytes]) -> None:
    from email.message import EmailMessage

    inner = make_mail([("original.pdf", pdfs[0])], subject="Rechnung 42")
    outer = EmailMessage()
    outer["From"], outer["To"], outer["Subject"] = "boss@x.example", "me@x.example", "Fwd: Rechnung 42"
    outer.set_content("FYI")
    outer.add_attachment(email.message_from_bytes(inner, policy=email.policy.default))
    mail = tmp_path / "fwd.eml"
    mail.write_bytes(outer.as_bytes())
    [source] = collect([str(mail)])
    assert source.label == f"{mail}#Rechnung 42.eml#original.pdf" and source.read_bytes() == pdfs[0]


def test_archives_give_their_members_with_their_paths(tmp_path: Path, pdfs: list[bytes]) -> None:
    archive = _zip(tmp_path / "q3.zip", {"2026/10/a.pdf": pdfs[0], "2026/11/b.pdf": pdfs[1], "README.txt": b"x",
                                         "e/xrechnung.xml": cii_xml(), "other.xml": b"<settings/>"})
    sources = collect([str(archive)])
    assert _named(sources, tmp_path) == [("q3.zip#2026/10/a.pdf", None), ("q3.zip#2026/11/b.pdf", None),
                                         ("q3.zip#e/xrechnung.xml", None)]
    assert [s.rel for s in sources] == ["q3.zip/2026/10/a.pdf", "q3.zip/2026/11/b.pdf", "q3.zip/e/xrechnung.xml"]
    assert sources[2].read_bytes() == cii_xml()


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_tar_and_tar_gz(tmp_path: Path, pdfs: list[bytes], mode: str) -> None:
    path = tmp_path / ("scans.tar" if mode == "w" else "scans.tar.gz")
    with tarfile.open(path, mode) as archive:
        for name, data in (("a.pdf", pdfs[0]), ("sub/b.pdf", pdfs[1]), ("../../evil.pdf", pdfs[2])):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.pdf")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    sources = collect([str(path)])
    name = path.name
    assert _named(sources, tmp_path) == [
        (f"{name}#a.pdf", None), (f"{name}#sub/b.pdf", None),
        (f"{name}#../../evil.pdf", "has a name that climbs out of the archive ('..'); not read")]
    assert [s.read_bytes() for s in sources[:2]] == pdfs[:2]


def test_names_that_climb_out_fail_one_by_one(tmp_path: Path, pdfs: list[bytes]) -> None:
    archive = _zip(tmp_path / "evil.zip", {"../../evil.pdf": pdfs[0], "/etc/cron.d/x.pdf": pdfs[1],
                                           "C:/Windows/x.pdf": pdfs[1], "ok.pdf": pdfs[2]})
    got = _named(collect([str(archive)]), tmp_path)
    assert got == [
        ("evil.zip#../../evil.pdf", "has a name that climbs out of the archive ('..'); not read"),
        ("evil.zip#/etc/cron.d/x.pdf", "has an absolute name, which could write outside the archive's folder; not read"),
        ("evil.zip#C:/Windows/x.pdf", "has an absolute name, which could write outside the archive's folder; not read"),
        ("evil.zip#ok.pdf", None),
    ]


def test_an_encrypted_member_fails_alone(tmp_path: Path, pdfs: list[bytes]) -> None:
    path = _zip(tmp_path / "locked.zip", {"secret.pdf": b"\x00" * 64, "open.pdf": pdfs[0]})
    data = bytearray(path.read_bytes())  # zipfile writes no encrypted member: set the flag ZipCrypto and AES set
    data[6] |= 0x1  # the first local header's flags
    data[data.find(b"PK\x01\x02") + 8] |= 0x1  # and its central directory entry's
    path.write_bytes(bytes(data))
    got = _named(collect([str(path)]), tmp_path)
    assert got == [("locked.zip#secret.pdf", "is encrypted; llamadoc does not read encrypted members "
                                             "(unpack the archive with its password first)"), ("locked.zip#open.pdf", None)]


def test_a_zip_bomb_fails_as_data(tmp_path: Path, pdfs: list[bytes]) -> None:
    """20 MiB of a PDF's look-alike that packs 1000:1: refused once past the ratio, long before the end."""
    bomb = b"%PDF-1.4\n" + b"\x00" * (20 << 20)
    path = _zip(tmp_path / "bomb.zip", {"bomb.pdf": bomb, "fine.pdf": pdfs[0]})
    packed = zipfile.ZipFile(path).getinfo("bomb.pdf").compress_size
    got = _named(collect([str(path)]), tmp_path)
    assert got == [("bomb.zip#bomb.pdf", f"unpacks to more than 100 times its packed size of {packed:,} bytes, "
                                         "as a zip bomb does; not read"), ("bomb.zip#fine.pdf", None)]


def test_member_and_total_sizes_are_bounded(tmp_path: Path, pdfs: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    path = _zip(tmp_path / "big.zip", {"a.pdf": pdfs[0], "b.pdf": pdfs[1], "c.pdf": pdfs[2]}, zipfile.ZIP_STORED)
    monkeypatch.setattr(containers, "MAX_MEMBER", len(pdfs[0]) - 1)
    first = _named(collect([str(path)]), tmp_path)[0]
    assert first == ("big.zip#a.pdf", f"unpacks to {len(pdfs[0]):,} bytes, more than the {len(pdfs[0]) - 1:,} "
                                      "llamadoc unpacks of one member; not read")
    monkeypatch.setattr(containers, "MAX_MEMBER", 1 << 20)
    monkeypatch.setattr(containers, "MAX_TOTAL", len(pdfs[0]) + 10)
    assert _named(collect([str(path)]), tmp_path) == [
        ("big.zip#a.pdf", None),
        ("big.zip#b.pdf", f"is past the {len(pdfs[0]) + 10:,} bytes llamadoc unpacks of one container; it and the "
                          "rest were not read")]


def test_a_gzip_bomb_in_a_tar_stops_the_archive(tmp_path: Path) -> None:
    path = tmp_path / "bomb.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 30 << 20
        archive.addfile(info, io.BytesIO(bytes(info.size)))
        later = tarfile.TarInfo("later.pdf")
        later.size = 9
        archive.addfile(later, io.BytesIO(b"%PDF-1.4\n"))
    [only] = collect([str(path)])  # a stream: what follows the bomb cannot be reached without unpacking it
    assert only.error == (f"{path} unpacks to more than 100 times its packed size, as a compression bomb does; "
                          "the rest was not read")


def test_nesting_is_followed_to_a_bounded_depth(tmp_path: Path, pdfs: list[bytes]) -> None:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("deep.pdf", pdfs[0])
    data = inner.getvalue()
    for level in (3, 2):
        wrapped = io.BytesIO()
        with zipfile.ZipFile(wrapped, "w") as z:
            z.writestr(f"level{level + 1}.zip", data)
            z.writestr(f"at{level}.pdf", pdfs[level - 1])
        data = wrapped.getvalue()
    mail = tmp_path / "mail.eml"
    mail.write_bytes(make_mail([("level2.zip", data)]))
    got = _named(collect([str(mail)]), tmp_path)
    assert got == [("mail.eml#level2.zip#level3.zip#level4.zip", "is nested more than 3 containers deep; not opened"),
                   ("mail.eml#level2.zip#level3.zip#at3.pdf", None), ("mail.eml#level2.zip#at2.pdf", None)]


def test_damaged_and_foreign_containers(tmp_path: Path, pdfs: list[bytes]) -> None:
    good = _zip(tmp_path / "x.zip", {"a.pdf": pdfs[0]}).read_bytes()
    (tmp_path / "cut.zip").write_bytes(good[: len(good) // 2])
    _zip(tmp_path / "report.docx", {"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w/>",
                                    "word/media/image1.png": make_image(tmp_path / "i.png").read_bytes()})
    (tmp_path / "old.doc").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(2048))
    got = dict(_named(collect([str(tmp_path / n) for n in ("cut.zip", "report.docx", "old.doc")]), tmp_path))
    assert got["cut.zip"] is not None and got["cut.zip"].startswith("is a damaged ZIP archive (")
    assert got["report.docx"] == "is an Office or OpenDocument file, not a document llamadoc reads (save it as PDF first)"
    assert got["old.doc"] == "is a Microsoft Office file (OLE2), not a document llamadoc reads (save it as PDF first)"
    inside = _zip(tmp_path / "mixed.zip", {"report.docx": (tmp_path / "report.docx").read_bytes(),
                                           "old.doc": (tmp_path / "old.doc").read_bytes(), "a.pdf": pdfs[0]})
    assert _named(collect([str(inside)]), tmp_path) == [("mixed.zip#a.pdf", None)]  # not documents: left out


def test_include_and_exclude_match_members(tmp_path: Path, pdfs: list[bytes]) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "mail.eml").write_bytes(make_mail([("inv-1.pdf", pdfs[0]), ("inv-2.pdf", pdfs[1]),
                                                ("photo.png", make_image(tmp_path / "x.png").read_bytes())]))
    make_pdf(inbox / "inv-3.pdf", ["3"])
    labels = [s.label.replace(f"{inbox}/", "") for s in collect([str(inbox)], include=["inv-*"], exclude=["*-2.pdf"])]
    assert labels == ["inv-3.pdf", "mail.eml#inv-1.pdf"]  # the mail is opened whatever --include says
    assert [s.label.rpartition("#")[2] for s in collect([str(inbox)], exclude=["mail.eml"])] == [str(inbox / "inv-3.pdf")]
    with_body = collect([str(inbox / "mail.eml")], include=["*.png"], include_body=True)
    assert [s.label.rpartition("#")[2] for s in with_body] == ["body", "photo.png"]
    nothing = collect([str(inbox / "mail.eml")], include=["*.docx"])
    assert [s.error for s in nothing] == [f"{inbox / 'mail.eml'} holds no attachment or member; --include-body reads an e-mail's own text"]


def test_labels_are_unique_and_printable(tmp_path: Path, pdfs: list[bytes]) -> None:
    mail = tmp_path / "m.eml"
    mail.write_bytes(make_mail([("invoice.pdf", pdfs[0]), ("invoice.pdf", pdfs[1]), ("bad\x1b[2Jname.pdf", pdfs[2])]))
    assert [s.label.rpartition("#")[2] for s in collect([str(mail)])] == [
        "invoice.pdf", "invoice (2).pdf", "bad\\x1b[2Jname.pdf"]


def test_outlook_msg(tmp_path: Path, pdfs: list[bytes]) -> None:
    path = make_msg(tmp_path / "mail.msg", [("invoice.pdf", pdfs[0]), ("scan.png", make_image(tmp_path / "s.png").read_bytes()),
                                            ("sig.txt", b"--")], body="Total 162.60 EUR")
    sources = collect([str(path)], include_body=True)
    assert [s.label.rpartition("#")[2] for s in sources] == ["body", "invoice.pdf", "scan.png"]
    assert sources[1].read_bytes() == pdfs[0] and sources[2].rel == "mail.msg/scan.png"
    with Document(sources[0], RasterOptions(dpi=40)) as doc:
        text = next(doc.pages()).text or ""
    assert "Total 162.60 EUR" in text and "Invoices for October" in text


def test_msg_without_its_extra_says_how_to_get_it(tmp_path: Path, pdfs: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_msg(tmp_path / "mail.msg", [("invoice.pdf", pdfs[0])])
    monkeypatch.setitem(sys.modules, "extract_msg", None)  # as if it were not installed
    [only] = collect([str(path)])
    assert only.error == f"{path} is an Outlook message; reading .msg needs extract-msg: pip install 'llamadoc[msg]'"


def test_containers_from_stdin_and_bytes(tmp_path: Path, pdfs: list[bytes]) -> None:
    from llamadoc.reader import as_sources

    data = make_mail([("a.pdf", pdfs[0])])
    [piped] = collect(["-"], stdin=io.BytesIO(data))
    assert piped.label == "<stdin>#a.pdf" and piped.rel == "stdin/a.pdf" and piped.read_bytes() == pdfs[0]
    [given] = as_sources(data)
    assert given.label == "<bytes>#a.pdf"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts file descriptors through /proc")
def test_members_share_one_temporary_file(tmp_path: Path, pdfs: list[bytes]) -> None:
    archive = _zip(tmp_path / "many.zip", {f"{i:03}.pdf": pdfs[i % 3] + b"%" * i for i in range(300)})
    before = len(os.listdir("/proc/self/fd"))
    sources = collect([str(archive)])
    assert len(sources) == 300 and len(os.listdir("/proc/self/fd")) <= before + 1
    assert sources[299].read_bytes() == pdfs[299 % 3] + b"%" * 299 and sources[7].read_bytes() == pdfs[1] + b"%" * 7


def test_a_compressed_tar_counts_what_it_skips(tmp_path: Path, pdfs: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, data in (("a.pdf", pdfs[0]), ("video.bin", os.urandom(4096)), ("b.pdf", pdfs[1])):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    monkeypatch.setattr(containers, "MAX_TOTAL", len(pdfs[0]) + 4096 + 10)  # b.pdf is past it
    sources = collect([str(path)])
    assert [s.label.replace(f"{tmp_path}/", "") for s in sources] == ["big.tar.gz#a.pdf", "big.tar.gz"]
    assert sources[1].error == (f"{path} is past the {len(pdfs[0]) + 4106:,} bytes llamadoc unpacks of one container; "
                                "it and the rest were not read")
    assert sources[0].read_bytes() == pdfs[0]  # counted once, not once read and once passed
