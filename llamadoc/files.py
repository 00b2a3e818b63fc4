"""Files written whole or not at all, and the temporary files of runs that were killed.

A file is written to a temporary file beside it, then renamed over it: a reader (or a
crash) never sees half a file, and a finished file is only ever replaced whole. The
temporary name carries the writer's host and process, so a later run can tell the
leftovers of a killed run (kill -9 leaves them) from the work of a live one.
"""

from __future__ import annotations

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


def write_atomic(path: Path, text: str, tmp_dir: Path | None = None) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename. The temporary file
    is beside it, or in ``tmp_dir`` (on the same file system: a store keeps its own, so
    sweeping it does not mean listing every record). The file gets the mode a plain
    ``open()`` would give it (mkstemp's are 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = tmp_dir or path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fchmod(fh.fileno(), _MODE)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
