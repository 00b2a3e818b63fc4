"""First bytes -> format and kind: every format llamadoc reads, written here, and look-alikes it must not take."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from llamadoc.inputs.sniff import signature, sniff


def _saved(fmt: str, **options: object) -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 20, 30)).save(buf, fmt, **options)  # type: ignore[arg-type]
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "options", "name"),
    [("PNG", {}, "PNG"), ("JPEG", {}, "JPEG"), ("TIFF", {}, "TIFF"), ("TIFF", {"big_tiff": True}, "BigTIFF"),
     ("GIF", {}, "GIF"), ("WEBP", {}, "WebP"), ("BMP", {}, "BMP"), ("HEIF", {}, "HEIF"), ("AVIF", {}, "AVIF"),
     ("JPEG2000", {}, "JPEG 2000"), ("JPEG2000", {"no_jp2": True}, "JPEG 2000"), ("PPM", {}, "PNM")],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_every_image_format_read(fmt: str, options: dict[str, object], name: str) -> None:
    head = _saved(fmt, **options)[:4096]
    assert signature(head) == name and sniff(head) == "image"


def test_documents_and_containers() -> None:
    assert sniff(b"%PDF-1.7\n...") == "pdf"
    assert sniff(b"junk before\n%PDF-1.4") == "pdf"  # PDF allows leading junk
    assert sniff(b"\xef\xbb\xbf<?xml version='1.0'?><Invoice/>") == "xml"
    assert sniff(b"<rsm:CrossIndustryInvoice xmlns:rsm='urn:x'>") == "xml"
    assert sniff(b"PK\x03\x04....") == "archive"
    assert sniff(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1") == "mail"  # OLE2: an Outlook .msg, or refused later
    mail = b"Return-Path: <a@b.example>\r\nReceived: from x\r\n\tby y\r\nFrom: A <a@b.example>\r\nSubject: Invoice\r\n\r\nHi"
    assert signature(mail) == "E-mail"
    assert signature(b"From - Mon Jan 1 00:00:00 2026\nFrom: a@b.example\nTo: c@d.example\n") == "E-mail"


@pytest.mark.parametrize(
    "head",
    [b"hello, world", b"Note: not a mail\nTo do: nothing\n", b"BMW invoice, 3 pages", b"<!DOCTYPE html><html>",
     b"<html><body>hi</body></html>", b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", b"P7 is not PNM",
     b"\x1f\x8b\x08\x00" + b"\x00" * 40, b""],
    ids=["text", "colon-lines", "bm-text", "html", "html-bare", "mp4", "p7", "broken-gzip", "empty"],
)
def test_look_alikes_are_nothing(head: bytes) -> None:
    assert signature(head) is None
