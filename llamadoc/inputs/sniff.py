"""What a file is, from its first bytes: never from its name.

``signature`` names the format ('PDF', 'HEIF', 'ZIP', ...), ``sniff`` the kind llamadoc
makes of it: a 'pdf' or an 'image' to rasterise, an 'xml' e-invoice, or a 'mail' or an
'archive' whose members are the documents.
"""

from __future__ import annotations

import re
import zlib

HEAD = 4096  # bytes enough for every signature below (a mail's first headers included)

# The formats Pillow decodes for us, as ``signature`` names them; the rest of what Pillow
# knows (PSD, ICO, TGA, ...) is refused by name.
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "BigTIFF", "GIF", "WebP", "BMP", "HEIF", "AVIF", "JPEG 2000", "PNM")
KINDS = {"PDF": "pdf", "XML": "xml", "E-mail": "mail", "Outlook message": "mail", "ZIP": "archive",
         "TAR": "archive"} | {name: "image" for name in IMAGE_FORMATS}

_PREFIXES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
    (b"II+\x00", "BigTIFF"), (b"MM\x00+", "BigTIFF"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"PK\x03\x04", "ZIP"), (b"PK\x05\x06", "ZIP"),  # an empty ZIP has only its end record
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "Outlook message"),  # OLE2; containers.py tells .msg from .doc
)
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"mif2"})
_BMP_HEADERS = frozenset({12, 40, 52, 56, 64, 108, 124})  # the sizes of the DIB headers there are
_PNM = re.compile(rb"P[1-6][ \t\r\n#]")
_XML = re.compile(rb"(\xef\xbb\xbf)?\s*<(\?xml[ \t\r\n]|[A-Za-z_][\w.:-]*[\s>/])")
_HEADER = re.compile(rb"([!-9;-~]+):")  # a header field's name (RFC 5322: printable, no colon)
_MAIL_HEADERS = frozenset({b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version",
                           b"received", b"return-path", b"delivered-to", b"reply-to", b"content-type"})


def signature(head: bytes) -> str | None:
    """The format the first bytes announce, or None for anything llamadoc does not know."""
    for prefix, name in _PREFIXES:
        if head.startswith(prefix):
            return name
    if _tar(head) or (head[:2] == b"\x1f\x8b" and _tar(_gunzip(head))):
        return "TAR"
    # PDF allows junk before its header: looked for after the signatures at fixed places, as a
    # ZIP or TAR that holds a PDF has one near its start.
    if head[:1024].find(b"%PDF-") != -1:
        return "PDF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADERS:
        return "BMP"
    if head[4:8] == b"ftyp":
        return _iso_image(head)
    if _PNM.match(head):
        return "PNM"
    if _is_mail(head):
        return "E-mail"
    if _XML.match(head) and not re.match(rb"(\xef\xbb\xbf)?\s*<(!doctype\s+)?html", head, re.IGNORECASE):
        return "XML"
    return None


def sniff(head: bytes) -> str | None:
    """The kind of document the first bytes announce: pdf, image, xml, mail, archive, or None."""
    name = signature(head)
    return KINDS[name] if name is not None else None


def _iso_image(head: bytes) -> str | None:
    """HEIF or AVIF from an ISO media file's ftyp box (which MP4 and MOV videos also open with)."""
    size = int.from_bytes(head[:4], "big")
    brands = {head[8:12]} | {head[i:i + 4] for i in range(16, min(size, len(head)) - 3, 4)}
    if head[8:12] in (b"avif", b"avis") or (head[8:12] not in _HEIF_BRANDS and brands & {b"avif", b"avis"}):
        return "AVIF"
    return "HEIF" if brands & _HEIF_BRANDS else None


def _tar(head: bytes) -> bool:
    return head[257:262] == b"ustar"


def _gunzip(head: bytes) -> bytes:
    """The start of a gzip stream's content, from as much of the stream as the head holds."""
    try:
        return zlib.decompressobj(wbits=31).decompress(head, 512)
    except zlib.error:
        return b""


def _is_mail(head: bytes) -> bool:
    """An RFC 822 message: its first lines are header fields, among them at least two that
    every mail has (a text file that opens with 'Note: ...' is not one)."""
    lines = head.split(b"\n")[:-1]  # complete lines only
    if lines and lines[0].startswith(b"From "):  # the separator line mbox tools leave on a saved mail
        lines = lines[1:]
    names = set()
    for line in lines[:80]:
        line = line.rstrip(b"\r")
        if not line:
            break  # the end of the headers
        if line[:1] in (b" ", b"\t"):
            continue  # a folded header's continuation
        match = _HEADER.match(line)
        if match is None:
            return False
        names.add(match.group(1).lower())
    return len(names & _MAIL_HEADERS) >= 2
