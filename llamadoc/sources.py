"""Turn command-line arguments into documents: files, folders (recursive), globs, '-' for stdin.

A document's type is sniffed from its first bytes, never from its name. Arguments
that name nothing usable become failed sources (the batch goes on), not exceptions.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from llamadoc.errors import UsageError

# Suffixes looked at when walking folders; a file named on the command line is
# sniffed whatever its name.
DOCUMENT_SUFFIXES = frozenset(
    {".pdf", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".webp", ".bmp"}
)
STDIN_LABEL = "<stdin>"


@dataclass(frozen=True)
class Source:
    """One document to process, or an argument that named none (``error`` set)."""

    label: str  # what the user typed, or the path found in a folder
    path: Path | None = None
    data: bytes | None = None  # stdin content
    error: str | None = None
    rel: str = ""  # where its output goes below -o: the path below the folder given, or the name

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    def sha256(self) -> str:
        digest = hashlib.sha256()
        if self.data is not None:
            digest.update(self.data)
        else:
            assert self.path is not None
            with self.path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        return digest.hexdigest()


def sniff(head: bytes) -> str | None:
    """The document kind from its first bytes: 'pdf', 'image', or None."""
    if head[:1024].find(b"%PDF-") != -1:  # PDF allows junk before the header
        return "pdf"
    signatures = (
        b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"GIF87a", b"GIF89a", b"BM",
    )
    if head.startswith(signatures) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    return None


def collect(
    args: Sequence[str],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    stdin: BinaryIO | None = None,
) -> list[Source]:
    """Expand arguments in order; folders recurse, globs expand, '-' reads stdin once."""
    sources: list[Source] = []
    for arg in args:
        sources.extend(_expand(arg, include, exclude, stdin))
    return sources


def _expand(arg: str, include: Sequence[str], exclude: Sequence[str], stdin: BinaryIO | None) -> Iterator[Source]:
    if arg == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        yield Source(label=STDIN_LABEL, data=stream.read(), rel="stdin")
        return
    path = Path(arg).expanduser()
    if path.is_dir():
        found = [p for p in _walk(path) if _selected(p, path, include, exclude)]
        if not found:
            kinds = ", ".join(sorted(s.lstrip(".") for s in DOCUMENT_SUFFIXES))
            yield Source(label=arg, error=f"folder {arg} holds no documents ({kinds})")
        for p in found:
            yield Source(label=str(p), path=p, rel=p.relative_to(path).as_posix())
        return
    if path.is_file():
        yield Source(label=arg, path=path, rel=path.name)
        return
    if glob.has_magic(arg):
        matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
        files = [m for m in _flatten(matches) if _selected(m, Path("."), include, exclude)]
        if not files:
            yield Source(label=arg, error=f"no documents match {arg}")
        for m in files:
            yield Source(label=str(m), path=m, rel=m.name)
        return
    yield Source(label=arg, error=f"{arg} does not exist")


def shard(sources: Sequence[Source], spec: str) -> list[Source]:
    """The i-th of n deterministic slices ('2/4'): by a hash of each source's label, so
    every process given the same arguments agrees, whatever the order of the list."""
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError:
        raise UsageError(f"--shard {spec!r} is not i/n", hint="e.g. --shard 1/4 ... --shard 4/4") from None
    if not 1 <= index <= count:
        raise UsageError(f"--shard {spec!r}: i must be between 1 and n")
    digest = (hashlib.sha1(s.label.encode("utf-8")).digest() for s in sources)
    return [s for s, d in zip(sources, digest, strict=True) if int.from_bytes(d[:8], "big") % count == index - 1]


def output_names(sources: Sequence[Source], extension: str) -> dict[str, str]:
    """label -> file name below -o. Sources that would share a name (a.pdf in two
    folders given) get a suffix from their label, so parallel shards never clash."""
    names: dict[str, str] = {}
    taken: dict[str, int] = {}
    for s in sources:
        base = str(Path(s.rel or Path(s.label).name).with_suffix(extension))
        taken[base] = taken.get(base, 0) + 1
    for s in sources:
        base = str(Path(s.rel or Path(s.label).name).with_suffix(extension))
        if taken[base] > 1:
            tag = hashlib.sha1(s.label.encode("utf-8")).hexdigest()[:8]
            base = str(Path(base).with_name(f"{Path(base).stem}-{tag}{extension}"))
        names[s.label] = base
    return names


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
        if p.is_file() and p.suffix.lower() in DOCUMENT_SUFFIXES:
            yield p


def _selected(path: Path, root: Path, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """--include/--exclude patterns match the file name or its path below the root."""
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        rel = path.as_posix()
    names = (path.name, rel)
    if include and not any(fnmatch.fnmatch(n, pat) for pat in include for n in names):
        return False
    return not any(fnmatch.fnmatch(n, pat) for pat in exclude for n in names)
