"""Turn arguments into documents: files, folders (recursive), globs, '-' for stdin, and
the attachments and members of the e-mails and archives among them.

A document's type is sniffed from its first bytes, never from its name. Arguments
that name nothing usable become failed sources (the batch goes on), not exceptions.
Labels are printable whatever the file system holds: a name that is not UTF-8 keeps
its bytes as escapes (``a\\xff.pdf``), and the file is still read by its real name.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import hashlib
import io
import stat
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, cast

from llamadoc.config import DEFAULT_STDIN_LIMIT
from llamadoc.errors import UsageError
from llamadoc.inputs import containers
from llamadoc.inputs.einvoice import root_kind
from llamadoc.inputs.sniff import HEAD, sniff

# Suffixes looked at when walking folders (and .xml files that hold an e-invoice); a file
# named on the command line is sniffed whatever its name.
DOCUMENT_SUFFIXES = frozenset({
    ".pdf", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".webp", ".bmp", ".heic", ".heif", ".avif",
    ".jp2", ".j2k", ".jpf", ".jpx", ".pnm", ".ppm", ".pgm", ".pbm",
})
# E-mails and archives: opened whatever --include says, since it chooses among what is inside.
CONTAINER_SUFFIXES = frozenset({".eml", ".msg", ".zip", ".tar", ".tgz", ".tar.gz"})
STDIN_LABEL = "<stdin>"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """One document to process, or an argument that named none (``error`` set)."""

    label: str  # what the user typed, or the path found in a folder; printable
    path: Path | None = None
    data: bytes | None = None  # content given in memory (the Python API)
    error: str | None = None
    rel: str = ""  # where its output goes below -o: the path below the folder given, or the name
    spool: BinaryIO | None = None  # a pipe's content, spooled to an unnamed temporary file

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        if self.spool is not None:
            self.spool.seek(0)
            return self.spool.read()
        assert self.path is not None
        return self.path.read_bytes()

    def sha256(self) -> str:
        digest = hashlib.sha256()
        if self.data is not None:
            digest.update(self.data)
            return digest.hexdigest()
        if self.spool is not None:
            self.spool.seek(0)
            stream: BinaryIO = self.spool
            for chunk in iter(lambda: stream.read(_CHUNK), b""):
                digest.update(chunk)
            return digest.hexdigest()
        assert self.path is not None
        with self.path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
        return digest.hexdigest()

    @property
    def shard_key(self) -> str:
        """What sharding hashes: the same whatever the spelling of the path given."""
        return self.rel or self.label


def printable(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 (surrogate escapes) become \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def collect(
    args: Sequence[str],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    stdin: BinaryIO | None = None,
    stdin_limit: int = DEFAULT_STDIN_LIMIT,
    spool_dir: Path | None = None,
    include_body: bool = False,
) -> list[Source]:
    """Expand arguments in order; folders recurse, globs expand, '-' reads stdin once.
    Pipes (stdin, or a FIFO such as ``<(curl ...)``) are spooled to an unnamed temporary
    file in ``spool_dir``, at most ``stdin_limit`` bytes. E-mails and archives give the
    documents inside them (an e-mail's own text too with ``include_body``)."""
    if list(args).count("-") > 1:
        raise UsageError("'-' (stdin) can be given once")
    sources: list[Source] = []
    for arg in args:
        sources.extend(_expand(arg, include, exclude, stdin, stdin_limit, spool_dir))
    return unpack(sources, include, exclude, include_body, spool_dir)


def _expand(arg: str, include: Sequence[str], exclude: Sequence[str], stdin: BinaryIO | None,
            limit: int, spool_dir: Path | None) -> Iterator[Source]:
    label = printable(arg)
    if arg == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        yield _spooled(STDIN_LABEL, "stdin", stream, limit, spool_dir)
        return
    path = Path(arg).expanduser()
    if path.is_dir():
        found = [p for p in _walk(path) if _selected(p, path, include, exclude)]
        if not found:
            kinds = ", ".join(sorted(s.lstrip(".") for s in DOCUMENT_SUFFIXES | CONTAINER_SUFFIXES))
            yield Source(label=label, error=f"folder {label} holds no documents ({kinds})")
        for p in found:
            yield Source(label=printable(str(p)), path=p, rel=printable(p.relative_to(path).as_posix()))
        return
    if path.is_file():
        yield Source(label=label, path=path, rel=printable(path.name))
        return
    kind = _special(path)
    if kind == "pipe":
        with path.open("rb") as fh:
            yield _spooled(label, printable(path.name), fh, limit, spool_dir)
        return
    if kind is not None:
        yield Source(label=label, error=f"{label} is a {kind}, not a document file")
        return
    if glob.has_magic(arg):
        matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
        files = [m for m in _flatten(matches) if _selected(m, Path("."), include, exclude)]
        if not files:
            yield Source(label=label, error=f"no documents match {label}")
        for m in files:
            yield Source(label=printable(str(m)), path=m, rel=printable(m.name))
        return
    yield Source(label=label, error=f"{label} does not exist")


def _special(path: Path) -> str | None:
    """'pipe' for a FIFO, the kind of any other non-regular file, None when nothing is there."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if stat.S_ISFIFO(mode):
        return "pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _spooled(label: str, rel: str, stream: BinaryIO, limit: int, spool_dir: Path | None) -> Source:
    """A pipe's content in an unnamed temporary file (gone with the process, even after
    kill -9), read up to ``limit`` bytes; past it, a failed source."""
    try:
        if spool_dir is not None:
            spool_dir.mkdir(parents=True, exist_ok=True)
        spool = tempfile.TemporaryFile(dir=spool_dir)
    except OSError:  # LLAMADOC_HOME read-only: the system's temporary folder will do
        spool = tempfile.TemporaryFile()
    size = 0
    try:
        while chunk := stream.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                spool.close()
                return Source(label=label, rel=rel, error=(
                    f"{label} holds more than {limit:,} bytes, the most llamadoc reads from a pipe "
                    "(save it to a file, or raise LLAMADOC_STDIN_LIMIT)"))
            spool.write(chunk)
    except OSError as err:
        spool.close()
        return Source(label=label, rel=rel, error=f"cannot keep {label} for reading: {err.strerror or err}")
    return Source(label=label, rel=rel, spool=spool)


@dataclass(frozen=True)
class Shard:
    """The i-th of n deterministic slices of a batch ('2/4')."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise UsageError(f"--shard {self.index}/{self.count}: i must be between 1 and n",
                             hint="e.g. --shard 1/4 ... --shard 4/4")

    @classmethod
    def parse(cls, spec: str) -> Shard:
        try:
            index, count = (int(x) for x in spec.split("/"))
        except ValueError:
            raise UsageError(f"--shard {spec!r} is not i/n", hint="e.g. --shard 1/4 ... --shard 4/4") from None
        return cls(index, count)

    def select(self, sources: Sequence[Source]) -> list[Source]:
        """This slice: by a hash of each source's path below the input given (not of how
        that input was spelled), so every process agrees, whatever the order of the list."""
        def slot(s: Source) -> int:
            return int.from_bytes(hashlib.sha1(s.shard_key.encode("utf-8")).digest()[:8], "big") % self.count

        return [s for s in sources if slot(s) == self.index - 1]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _flatten(paths: Iterable[Path]) -> Iterator[Path]:
    for p in paths:
        if p.is_dir():
            yield from _walk(p)
        elif p.is_file():
            yield p


def _walk(folder: Path) -> Iterator[Path]:
    """Documents below a folder, sorted, skipping hidden files and folders."""
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file() and (p.suffix.lower() in DOCUMENT_SUFFIXES or _container(p) or _e_invoice_xml(p)):
            yield p


def _container(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in CONTAINER_SUFFIXES)


def _e_invoice_xml(path: Path) -> bool:
    """An .xml file in a folder is a document when it is an e-invoice (a folder of them often
    holds other XML too: configuration, exports)."""
    if path.suffix.lower() != ".xml":
        return False
    try:
        with path.open("rb") as fh:
            return root_kind(fh.read(65536)) is not None
    except OSError:
        return True  # a document we cannot read fails as one, with the reason


def _selected(path: Path, root: Path, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """--include/--exclude patterns match the file name or its path below the root."""
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        rel = path.as_posix()
    names = (path.name, rel)
    if include and not _container(path) and not any(fnmatch.fnmatch(n, pat) for pat in include for n in names):
        return False
    return not any(fnmatch.fnmatch(n, pat) for pat in exclude for n in names)


# -- e-mails and archives --------------------------------------------------------------


def unpack(sources: Sequence[Source], include: Sequence[str] = (), exclude: Sequence[str] = (),
           include_body: bool = False, spool_dir: Path | None = None) -> list[Source]:
    """Every e-mail and archive among the sources replaced by the documents inside it (by
    content, whatever its name), labelled ``mail.eml#invoice.pdf`` and kept below -o as
    ``mail.eml/invoice.pdf``; --include/--exclude match a member's name, its path inside
    the container, or its label. Members wait in one unnamed temporary file."""
    spool = _Spool(spool_dir)
    found: list[Source] = []
    for source in sources:
        found.extend(_unpacked(source, include, exclude, include_body, spool))
    return found


def _unpacked(source: Source, include: Sequence[str], exclude: Sequence[str], include_body: bool,
              spool: _Spool) -> Iterator[Source]:
    try:
        with _opened(source) as fh:
            if source.error or sniff(fh.read(HEAD)) not in ("mail", "archive"):
                yield source
                return
            fh.seek(0)
            labels: set[str] = set()
            count = 0
            for member in containers.members(fh, include_body):
                label = _unique(source.label + "".join(f"#{name}" for name in member.path), labels)
                if not _member_selected(member.path, label, include, exclude):
                    continue
                count += 1
                rel = "/".join((source.rel or printable(Path(source.label).name), *member.path))
                if member.error is not None:
                    yield Source(label=label, rel=rel, error=f"{label} {member.error}")
                else:
                    yield Source(label=label, rel=rel, spool=spool.add(member.data))
    except containers.Refused as err:
        yield Source(label=source.label, rel=source.rel, error=f"{source.label} {err}")
        return
    except OSError:
        yield source  # it fails when read, with the reason
        return
    if count == 0:
        what = "attachment or member" if include or exclude else "attachment or member that is a document"
        hint = "" if include_body else "; --include-body reads an e-mail's own text"
        yield Source(label=source.label, rel=source.rel, error=f"{source.label} holds no {what}{hint}")


def _opened(source: Source) -> contextlib.AbstractContextManager[BinaryIO]:
    if source.error:
        return contextlib.nullcontext(cast(BinaryIO, io.BytesIO()))
    if source.data is not None:
        return contextlib.nullcontext(cast(BinaryIO, io.BytesIO(source.data)))
    if source.spool is not None:
        source.spool.seek(0)
        return contextlib.nullcontext(source.spool)  # the source keeps it open
    assert source.path is not None
    return source.path.open("rb")


def _unique(label: str, taken: set[str]) -> str:
    """Two members of one name (a ZIP may hold them; a mail often does) get labels of their own."""
    stem, dot, suffix = label.rpartition("#")[2].rpartition(".")
    base = label[: len(label) - len(label.rpartition("#")[2])]
    candidate, n = label, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}{stem} ({n}).{suffix}" if dot else f"{label} ({n})"
    taken.add(candidate)
    return candidate


def _member_selected(path: tuple[str, ...], label: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """--include/--exclude on a member's name, its path in its container, or its label; an
    e-mail's own text is there because --include-body asked for it, so only --exclude applies."""
    names = (PurePosixPath(path[-1]).name, path[-1], label)
    if include and path[-1] != containers.BODY and not any(fnmatch.fnmatch(n, p) for p in include for n in names):
        return False
    return not any(fnmatch.fnmatch(n, p) for p in exclude for n in names)


class _Spool:
    """One unnamed temporary file for the members of all the e-mails and archives of a batch:
    one file descriptor however many members (a batch of 500 mails would run out of them
    with one file each), no memory held, and gone with the process, even after kill -9."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.file: BinaryIO | None = None
        self.end = 0
        self.lock = threading.Lock()  # members are read on the prefetch thread

    def add(self, data: bytes) -> BinaryIO:
        with self.lock:
            if self.file is None:
                if self.folder is not None:
                    self.folder.mkdir(parents=True, exist_ok=True)
                self.file = cast(BinaryIO, tempfile.TemporaryFile(dir=self.folder))
            self.file.seek(self.end)
            self.file.write(data)
            offset, self.end = self.end, self.end + len(data)
        return cast(BinaryIO, io.BufferedReader(_Window(self, offset, len(data))))

    def read(self, offset: int, size: int) -> bytes:
        with self.lock:
            assert self.file is not None
            self.file.seek(offset)
            return self.file.read(size)


class _Window(io.RawIOBase):
    """One member's bytes in the spool, as a file of its own."""

    def __init__(self, spool: _Spool, offset: int, size: int) -> None:
        self.spool, self.offset, self.size, self.position = spool, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer: Any) -> int:
        data = self.spool.read(self.offset + self.position, max(0, min(len(buffer), self.size - self.position)))
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)
