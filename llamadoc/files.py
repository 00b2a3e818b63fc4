"""Files written whole or not at all, and the temporary files of runs that were killed.

A file is written to a temporary file beside it, then renamed over it: a reader (or a
crash) never sees half a file, and a finished file is only ever replaced whole. The
temporary name carries the writer's host and process, so a later run can tell the
leftovers of a killed run (kill -9 leaves them) from the work of a live one.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

_HOST = hashlib.sha1(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:8]
# .NAME.<host>-<pid>.<random>.part; older versions wrote .NAME.<random>.part.
_TEMP = re.compile(r"\..+?\.(?:(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.)?[^.]+\.part")
STALE_AFTER_S = 3600.0  # a temporary file this old is nobody's work in progress, wherever it came from


def _umask() -> int:
    # Read once: os.umask can only be read by setting it, which is not thread-safe later on.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()  # what a plain open() would give the file


def write_atomic(path: Path, text: str | bytes, tmp_dir: Path | None = None) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename. The temporary file
    is beside it, or in ``tmp_dir`` (on the same file system: a store keeps its own, so
    sweeping it does not mean listing every record). The file gets the mode a plain
    ``open()`` would give it (mkstemp's are 0600)."""
    folder = tmp_dir or path.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp(path, text, folder)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_together(files: dict[Path, bytes]) -> None:
    """Write several files that belong together (an export's two tables): every temporary
    file is written before the first is renamed, so a full disk or a folder in the way
    leaves the old set as it was, not half of a new one."""
    done: list[str] = []
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            done.append(_temp(path, data, path.parent))
        for path in files:  # what a rename would fail on, found before the first rename
            if path.is_dir():
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        for tmp, path in zip(done, files, strict=True):
            os.replace(tmp, path)
    except BaseException:
        for tmp in done:
            Path(tmp).unlink(missing_ok=True)
        raise


def _temp(path: Path, data: str | bytes, folder: Path) -> str:
    """A temporary file in ``folder`` holding ``data``, synced, with a plain file's mode."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fchmod(fh.fileno(), _MODE)
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def sweep_temp(folders: Iterable[Path], recursive: bool = True) -> int:
    """Remove the temporary files killed runs left in ``folders``: those of a process of
    this host that no longer runs, and any older than an hour. Returns how many."""
    removed = 0
    now = time.time()
    for folder in folders:
        if not folder.is_dir():
            continue
        candidates = folder.rglob(".*.part") if recursive else folder.glob(".*.part")
        for path in candidates:
            match = _TEMP.fullmatch(path.name)
            if match is None or not path.is_file():
                continue
            try:
                stale = _dead(match.group("host"), match.group("pid")) or now - path.stat().st_mtime > STALE_AFTER_S
                if stale:
                    path.unlink()
                    removed += 1
            except OSError:
                continue  # gone already, or not ours to remove
    return removed


def _dead(host: str | None, pid: str | None) -> bool:
    if host != _HOST or pid is None:
        return False  # another machine's (a shared output folder): only age tells
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False
