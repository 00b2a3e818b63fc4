"""The -o folder: one file per document, written atomically, never stale, never clashing.

- Names mirror the inputs below -o; two inputs that would share a name, or a name that
  is also a folder of another's (``a.json`` beside ``a.json/b.json``), get a suffix
  from the source's real path, so every shard of a batch names files alike.
- A file is written unless it already holds exactly this result: a re-run with other
  options replaces the earlier answer; a re-run with the same ones leaves it alone; a
  result with nothing to show in the format (a failure in text) removes it.
- The result store lives in ``OUT/.llamadoc/``, so any machine that sees OUT resumes
  the batch, and per-document locks there let two runs on one OUT share the work.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from types import TracebackType

from llamadoc.errors import OutputError, WriteFailed
from llamadoc.files import sweep_temp, write_atomic
from llamadoc.inputs.sources import Source
from llamadoc.outputs import render
from llamadoc.results import DocumentResult, Status

STATE_DIR = ".llamadoc"  # inside OUT: the result store and the locks of the runs writing there


@dataclass(frozen=True)
class OutputSpec:
    """Where results go: ``dir`` (one file per document) or nowhere (the caller prints them)."""

    dir: Path | None = None
    format: str = "json"

    def __post_init__(self) -> None:
        if self.format not in render.FORMATS:
            raise OutputError(f"--format {self.format!r} is not one of {', '.join(render.FORMATS)}")

    @property
    def state(self) -> Path | None:
        return self.dir / STATE_DIR if self.dir is not None else None


def output_names(sources: Sequence[Source], extension: str) -> dict[str, str]:
    """label -> file name below -o, over the whole batch (so shards agree).

    Names that would clash keep their source's suffix (``invoice.pdf.json`` beside
    ``invoice.xml.json``, the usual XRechnung pair); those that still clash, and a name
    that is also a folder of another's, get a tag from the source's real path."""
    paths = {s.label: _safe(s.rel or Path(s.label).name) for s in sources if not s.error}
    plain = {label: str(p.with_suffix(extension)) for label, p in paths.items()}
    taken = Counter(plain.values())
    names = {label: plain[label] if taken[plain[label]] == 1 else f"{p}{extension}" for label, p in paths.items()}
    taken = Counter(names.values())
    folders = {str(parent) for n in names.values() for parent in PurePosixPath(n).parents if str(parent) != "."}
    by_label = {s.label: s for s in sources}
    for label, name in names.items():
        if taken[name] > 1 or name in folders:
            s = by_label[label]
            real = os.path.realpath(s.path) if s.path is not None else s.label  # not the spelling given
            tag = hashlib.sha1(real.encode("utf-8", "surrogateescape")).hexdigest()[:8]
            stem = PurePosixPath(plain[label])
            names[label] = str(stem.with_name(f"{stem.stem}-{tag}{extension}"))
    return names


def _safe(rel: str) -> PurePosixPath:
    """A relative path that stays below -o: no root, no '..', no empty parts."""
    parts = [p for p in PurePosixPath(rel).parts if p not in ("", ".", "..", "/")]
    return PurePosixPath(*parts) if parts else PurePosixPath("document")


class Writer:
    """Result files below ``spec.dir``, atomically, only when they would change."""

    def __init__(self, spec: OutputSpec, names: dict[str, str]) -> None:
        assert spec.dir is not None
        self.dir = spec.dir
        self.format = spec.format
        self.names = names

    @staticmethod
    def check(folder: Path) -> None:
        """Before any model loads: the folder exists or can be made, and takes files. The
        temporary files killed runs left there are removed."""
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"-o {folder} is a file, not a folder", hint="name a folder for the results")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".llamadoc-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise OutputError(f"-o {folder} cannot be written ({err.strerror or err})",
                              hint="choose a folder you can write to") from None
        sweep_temp([folder])

    def write(self, doc: DocumentResult) -> Path | None:
        """The file written, or None when there is nothing to write or it already holds
        this result. WriteFailed when the disk refuses it."""
        if doc.status is Status.SKIPPED:
            return None  # another run is working on it
        name = self.names.get(doc.source)
        if name is None:
            return None  # an argument that named no document (missing, a device): reported, no file
        path = self.dir / name
        text = render.render(doc, self.format)
        if not text:
            # Nothing to write (text and Markdown of a failure, a withheld answer), and never an
            # empty file that looks finished; nor an earlier run's file, which this run did not get.
            try:
                path.unlink(missing_ok=True)
            except OSError as err:
                raise WriteFailed(path, f"an earlier result is left there ({err.strerror or err})") from None
            return None
        if self._holds(path, text, doc):
            return None
        try:
            write_atomic(path, text)
        except OSError as err:
            raise WriteFailed(path, err.strerror or str(err)) from None
        return path

    def _holds(self, path: Path, text: str, doc: DocumentResult) -> bool:
        """The file is this result already (as the run that finished it wrote it)."""
        try:
            if not path.is_file() or path.stat().st_size > 4 * len(text.encode("utf-8")) + 4096:
                return False
            current = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return False
        if current == text:
            return True
        return doc.cached and current == render.render(replace(doc, cached=False), self.format)


class Claims:
    """Per-document locks in OUT/.llamadoc/locks, so two runs on one OUT split the work.

    A lock is an OS file lock (gone with its process, even after kill -9); a document
    whose lock another run holds is left to that run."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._held: dict[str, object] = {}

    def claim(self, sha256: str) -> bool:
        if self.folder is None:
            return True
        from filelock import FileLock, Timeout  # imported here: only batches with -o take locks

        if sha256 in self._held:
            return True
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.folder / f"{sha256}.lock", timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            return False
        except OSError:
            return True  # a folder without locks: the work may be done twice, never lost
        self._held[sha256] = lock
        return True

    def release(self, sha256: str | None) -> None:
        lock = self._held.pop(sha256, None) if sha256 else None
        if lock is None:
            return
        path = Path(lock.lock_file)  # type: ignore[attr-defined]
        path.unlink(missing_ok=True)  # while held: a run that opened it already waits on the old file
        lock.release()  # type: ignore[attr-defined]

    def __enter__(self) -> Claims:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        for sha256 in list(self._held):
            self.release(sha256)
