"""E-mails (.eml, Outlook .msg) and archives (.zip, .tar, .tar.gz) -> the documents inside.

Attachments and members that are documents come out one at a time; e-mails and archives
inside them are followed to MAX_DEPTH. What guards against bombs is checked while
reading, not only against the sizes an archive claims: every member and the whole of
a container are bounded, and so is how far a member may unpack beyond its packed size.
A member that cannot be read safely (a name that climbs out of the archive, an encrypted
member, too large, a bomb) comes out as a failure with its reason; the others still come out.
"""

from __future__ import annotations

import email
import email.policy
import io
import logging
import re
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from functools import partial
from html.parser import HTMLParser
from typing import IO, Any

from llamadoc.inputs import textpage
from llamadoc.inputs.einvoice import root_kind
from llamadoc.inputs.sniff import signature, sniff

MAX_MEMBER = 256 << 20  # bytes one member may unpack to (and an e-mail may hold)
MAX_TOTAL = 1 << 30  # bytes all of one container given may unpack to, nested ones included
MAX_RATIO = 100  # unpacked:packed a member may reach past RATIO_FLOOR (Apache POI's zip-bomb default too)
RATIO_FLOOR = 1 << 20  # below this no ratio is suspicious: a page of text packs 100:1
MAX_DEPTH = 3  # e-mails and archives inside one another, the outer one counted
MAX_ENTRIES = 10_000  # entries looked at in one container
BODY = "body"  # the member name of an e-mail's own text (with include_body)

_CHUNK = 1 << 20
_HEAD = 65536  # read of a member before deciding whether it is a document: an e-invoice's root is in it


@dataclass(frozen=True)
class Member:
    """A document found inside a container, or why one could not be read (``error``)."""

    path: tuple[str, ...]  # names from the outer container in: ("docs.zip", "q3/invoice.pdf")
    data: bytes = b""
    error: str | None = None


class Refused(Exception):
    """A container (or member) that is not read, with the reason as its message."""


class _Foreign(Refused):
    """An Office file that is a ZIP or an OLE2 file inside: no container of documents. Refused
    when given; left out, as any other file that is no document, inside a container."""


class _Exhausted(Refused):
    """The container's budget is spent: nothing more of it is read."""


class _Budget:
    """What one container given may still unpack, nested ones included."""

    def __init__(self) -> None:
        self.left = MAX_TOTAL

    def spend(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise _Exhausted(f"is past the {MAX_TOTAL:,} bytes llamadoc unpacks of one container; it and the "
                             "rest were not read")


@dataclass(frozen=True)
class _Entry:
    """One entry of a container, before it is read: a stream, or why it cannot be read."""

    name: str
    open: Callable[[], IO[bytes]] | None = None
    packed: int | None = None  # its compressed size, where the format records one
    error: str | None = None
    counted: bool = False  # its format's reader counts its bytes (a compressed tar unpacks them read or not)


def members(stream: IO[bytes], include_body: bool = False) -> Iterator[Member]:
    """The documents inside a container (what sniff calls a 'mail' or an 'archive'), in order.
    Raises Refused when the container itself cannot be read."""
    budget = _Budget()
    yield from _inside(stream, (), budget, include_body, depth=1)


def _inside(stream: IO[bytes], path: tuple[str, ...], budget: _Budget, include_body: bool,
            depth: int) -> Iterator[Member]:
    kind = signature(stream.read(4096))
    stream.seek(0)
    entries = {"ZIP": _zip, "TAR": _tar, "E-mail": _eml, "Outlook message": _msg}[kind or ""]
    seen = 0
    for entry in entries(stream, include_body, budget):
        seen += 1
        where = (*path, entry.name)
        if seen > MAX_ENTRIES:
            yield Member(where, error=f"holds more than {MAX_ENTRIES:,} entries; the rest were not read")
            return
        try:
            if entry.error is not None:
                raise Refused(entry.error)
            assert entry.open is not None
            data = _read(entry, budget)
            if data is None:
                continue  # not a document: a signature, a text file, a logo
            if sniff(data[:4096]) in ("mail", "archive"):
                if depth >= MAX_DEPTH:
                    raise Refused(f"is nested more than {MAX_DEPTH} containers deep; not opened")
                yield from _inside(io.BytesIO(data), where, budget, include_body, depth + 1)
                continue
        except _Foreign:
            continue
        except Refused as err:
            yield Member(where, error=str(err))
            if isinstance(err, _Exhausted):
                return
            continue
        yield Member(where, data)


def _read(entry: _Entry, budget: _Budget) -> bytes | None:
    """An entry's bytes, within the limits; None when it is not a document (or a nested
    container) and so was not read past its first bytes."""
    assert entry.open is not None
    out = bytearray()
    try:
        with entry.open() as fh:
            while chunk := fh.read(_HEAD if not out else _CHUNK):
                if not out and not _document(chunk):
                    return None
                out += chunk
                if not entry.counted:
                    budget.spend(len(chunk))
                if len(out) > MAX_MEMBER:
                    raise Refused(f"unpacks to more than {MAX_MEMBER:,} bytes, the most llamadoc unpacks of one "
                                  "member; not read")
                if entry.packed is not None and len(out) > RATIO_FLOOR and len(out) > MAX_RATIO * entry.packed:
                    raise Refused(f"unpacks to more than {MAX_RATIO} times its packed size of {entry.packed:,} "
                                  "bytes, as a zip bomb does; not read")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, tarfile.TarError) as err:
        raise Refused(f"is damaged ({err})") from None
    except NotImplementedError as err:  # zipfile: Deflate64, an old implode
        raise Refused(f"cannot be unpacked ({err})") from None
    return bytes(out) if out else None


def _document(head: bytes) -> bool:
    kind = sniff(head)
    if kind == "xml":
        return root_kind(head) is not None  # other XML in a mail or an archive is no document
    return kind is not None


# -- ZIP and TAR -------------------------------------------------------------------------


def _zip(stream: IO[bytes], include_body: bool, budget: _Budget) -> Iterator[_Entry]:
    try:
        archive = zipfile.ZipFile(stream)
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise Refused(f"is a damaged ZIP archive ({err})") from None
    names = {i.filename for i in infos}
    if "[Content_Types].xml" in names or "mimetype" in names:  # a .docx, .xlsx, .odt or .epub: a zip inside
        raise _Foreign("is an Office or OpenDocument file, not a document llamadoc reads "
                      "(save it as PDF first)")
    for info in infos:
        if info.is_dir():
            continue
        member = _clean(info.filename)
        if (problem := _unsafe(info.filename)) is not None:
            yield _Entry(member, error=problem)
        elif info.flag_bits & 0x1:
            yield _Entry(member, error="is encrypted; llamadoc does not read encrypted members "
                                       "(unpack the archive with its password first)")
        elif info.file_size > MAX_MEMBER:
            yield _Entry(member, error=f"unpacks to {info.file_size:,} bytes, more than the {MAX_MEMBER:,} "
                                       "llamadoc unpacks of one member; not read")
        else:
            yield _Entry(member, open=partial(archive.open, info), packed=info.compress_size)


def _tar(stream: IO[bytes], include_body: bool, budget: _Budget) -> Iterator[_Entry]:
    """A plain tar is read by seeking past what is not wanted; a compressed one as a stream,
    where even skipping a member unpacks it, so every byte passed over counts too."""
    packed = _Counting(stream)
    compressed = stream.read(2) == b"\x1f\x8b"
    stream.seek(0)
    try:
        archive = tarfile.open(fileobj=packed, mode="r|gz" if compressed else "r:")
        for info in archive:
            if compressed:  # what was unpacked to reach this header, against what it was packed in
                if info.offset > RATIO_FLOOR and info.offset > MAX_RATIO * max(packed.count, 1):
                    raise Refused(f"unpacks to more than {MAX_RATIO} times its packed size, as a compression "
                                  "bomb does; the rest was not read")
            if not info.isfile():
                continue  # folders, links and devices: never followed, nothing to read
            if compressed:
                budget.spend(info.size)  # read or skipped, it is unpacked
            member = _clean(info.name)
            if (problem := _unsafe(info.name)) is not None:
                yield _Entry(member, error=problem)
            elif info.size > MAX_MEMBER:
                yield _Entry(member, error=f"unpacks to {info.size:,} bytes, more than the {MAX_MEMBER:,} "
                                           "llamadoc unpacks of one member; not read")
            else:
                yield _Entry(member, open=partial(_extracted, archive, info), counted=compressed)
    except (tarfile.TarError, zlib.error, EOFError, OSError) as err:
        raise Refused(f"is a damaged TAR archive ({err})") from None


class _Counting(io.RawIOBase):
    """A stream that counts the bytes read through it (a compressed tar's packed size so far)."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner = inner
        self.count = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self.inner.seekable()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.inner.seek(offset, whence)

    def tell(self) -> int:
        return self.inner.tell()

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)


def _extracted(archive: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    fh = archive.extractfile(info)
    assert fh is not None  # None only for what is not a regular file
    return fh


def _unsafe(name: str) -> str | None:
    """Why a member's name must not be used: it is absolute, or climbs out with '..'."""
    path = name.replace("\\", "/")
    if path.startswith("/") or re.match(r"[A-Za-z]:", path):
        return "has an absolute name, which could write outside the archive's folder; not read"
    if ".." in path.split("/"):
        return "has a name that climbs out of the archive ('..'); not read"
    return None


def _clean(name: str) -> str:
    """A name fit for a label: control characters (which could rewrite a terminal) escaped."""
    return "".join(f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" else c for c in name).strip() or "unnamed"


# -- e-mail ------------------------------------------------------------------------------


def _eml(stream: IO[bytes], include_body: bool, budget: _Budget) -> Iterator[_Entry]:
    data = stream.read(MAX_MEMBER + 1)
    if len(data) > MAX_MEMBER:
        raise Refused(f"holds more than {MAX_MEMBER:,} bytes, the most llamadoc reads of one e-mail")
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)  # what the default policy makes
    if include_body:
        yield _body(message)
    for number, part in enumerate(_attachments(message), start=1):
        filename = part.get_filename()
        if part.get_content_type() == "message/rfc822":  # a mail forwarded as an attachment
            inner = part.get_payload(0)
            raw = inner.as_bytes() if isinstance(inner, EmailMessage) else b""
            yield _bytes_entry(filename or f"{_subject(inner) or f'message-{number}'}.eml", raw)
            continue
        try:
            payload = part.get_payload(decode=True)
        except (ValueError, LookupError) as err:
            yield _Entry(_clean(filename or f"part-{number}"), error=f"cannot be decoded ({err})")
            continue
        yield _bytes_entry(filename or f"part-{number}", payload if isinstance(payload, bytes) else b"")


def _attachments(message: EmailMessage) -> Iterator[EmailMessage]:
    """Every part that is an attachment: not the text of the mail, and not the pictures its
    HTML shows (multipart/related parts with a Content-ID: logos, signatures)."""
    def walk(part: EmailMessage, related: bool) -> Iterator[EmailMessage]:
        if part.get_content_type() == "message/rfc822":  # a forwarded mail: a container of its own
            yield part
            return
        if part.is_multipart():
            inside = related or part.get_content_type() == "multipart/related"
            for child in part.iter_parts():
                yield from walk(child, inside)  # type: ignore[arg-type]  # parts of an EmailMessage are ones
            return
        disposition = part.get_content_disposition()
        if related and part["Content-ID"] and disposition != "attachment":
            return
        if disposition == "attachment" or part.get_filename() or part.get_content_maintype() != "text":
            yield part

    if message.get_content_type() == "message/rfc822":
        return iter(())
    return walk(message, False)


def _body(message: EmailMessage) -> _Entry:
    """The mail's own text as a readable page: its headers, then its plain text (or the text
    of its HTML, when the plain part is missing or empty)."""
    text = ""
    for kind in ("plain", "html"):
        part = message.get_body(preferencelist=(kind,))
        if isinstance(part, EmailMessage):
            try:
                content = part.get_content()
            except (LookupError, ValueError):  # an unknown charset: the bytes, as well as they decode
                content = part.get_payload(decode=True) or b""
            text = content if isinstance(content, str) else bytes(content).decode("utf-8", "replace")
            text = _html_text(text) if kind == "html" else text.strip()
            if text:
                break
    headers = [(k, str(message[k])) for k in ("From", "To", "Cc", "Date", "Subject") if message[k]]
    return _bytes_entry(BODY, textpage.render_html(textpage.mail_html(headers, text)))


def _subject(message: object) -> str | None:
    """A forwarded mail's subject, fit for a file name."""
    subject = message["Subject"] if isinstance(message, EmailMessage) else None
    if not subject:
        return None
    return re.sub(r"[^\w .,()-]+", "_", str(subject)).strip()[:80] or None


def _bytes_entry(name: str, data: bytes) -> _Entry:
    problem = _unsafe(name)
    if problem is not None:
        return _Entry(_clean(name), error=problem)
    return _Entry(_clean(name), open=lambda: io.BytesIO(data))


class _Text(HTMLParser):
    """The text of an HTML mail, a line per block, without its scripts and styles."""

    BLOCKS = frozenset({"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "table", "blockquote"})

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head"):
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")
        elif tag == "td":
            self.parts.append("  ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head"):
            self.hidden = max(0, self.hidden - 1)

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(re.sub(r"\s+", " ", data))


def _html_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    parser.close()
    return re.sub(r"\n\s*\n+", "\n\n", "".join(parser.parts)).strip()


# -- Outlook .msg ------------------------------------------------------------------------

# Outlook keeps every property in a stream named __substg1.0_...; Word and Excel files, also
# OLE2, have none. The names are UTF-16 in the OLE directory.
_MSG_STREAM = "__substg1.0_".encode("utf-16-le")


def is_outlook(data: bytes) -> bool:
    """An OLE2 file that is an Outlook item, not a .doc or .xls."""
    return _MSG_STREAM in data


def _msg(stream: IO[bytes], include_body: bool, budget: _Budget) -> Iterator[_Entry]:
    """An Outlook message (OLE2), through extract-msg: its attachments, its embedded messages
    (as .msg of their own), and with include_body its text."""
    data = stream.read(MAX_MEMBER + 1)
    if len(data) > MAX_MEMBER:
        raise Refused(f"holds more than {MAX_MEMBER:,} bytes, the most llamadoc reads of one e-mail")
    message = _open_msg(data)
    try:
        if include_body:
            headers = [(k, v) for k, v in (("From", message.sender), ("To", message.to), ("Cc", message.cc),
                                           ("Date", str(message.date or "")), ("Subject", message.subject)) if v]
            yield _bytes_entry(BODY, textpage.render_html(textpage.mail_html(headers, message.body or "")))
        for number, attachment in enumerate(message.attachments, start=1):
            filename = attachment.longFilename or attachment.shortFilename or attachment.displayName
            content = attachment.data
            if hasattr(content, "exportBytes"):  # an embedded message: follow it as a .msg of its own
                yield _bytes_entry(filename or f"message-{number}.msg", content.exportBytes())
            elif isinstance(content, bytes):
                yield _bytes_entry(filename or f"attachment-{number}", content)
    finally:
        message.close()


def _open_msg(data: bytes) -> Any:
    if not is_outlook(data):
        raise _Foreign("is a Microsoft Office file (OLE2), not a document llamadoc reads "
                      "(save it as PDF first)")
    try:
        import extract_msg  # imported here: an optional extra, and only .msg files need it
    except ImportError:
        raise Refused("is an Outlook message; reading .msg needs extract-msg: pip install 'llamadoc[msg]'") from None
    from extract_msg.exceptions import ExMsgBaseException

    # extract-msg logs what it repairs; a NullHandler keeps Python from printing it on stderr.
    logging.getLogger("extract_msg").addHandler(logging.NullHandler())
    try:
        message = extract_msg.openMsg(data, delayAttachments=False)
    except (ExMsgBaseException, OSError, ValueError) as err:
        raise Refused(f"is not an Outlook message that can be read ({err})") from None
    if not isinstance(message, extract_msg.Message):
        message.close()
        raise Refused("is an Outlook item, not an e-mail (no attachments to read)")
    return message
