"""One remote file into place: resumable, verified against its sha256, never half-written.

Bytes go to <target>.partial under a file lock that every llamadoc process honours; a
rerun resumes it with a Range request; only bytes whose size and sha256 match are
renamed to <target>. Every failure becomes one DownloadError that says what to do.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from llamadoc import __version__
from llamadoc.errors import DownloadError, ModelError
from llamadoc.registry.transfer import Bar, human_size, progress_bar

Notify = Callable[[str], None]

CHUNK = 1 << 20
RETRIES = 3  # reconnections after a dropped connection, each resuming where the last stopped
RETRY_DELAY_S = 1.0
TIMEOUT_S = 60.0
USER_AGENT = f"llamadoc/{__version__}"
OFFLINE_HINT = "LLAMADOC_OFFLINE=1 uses downloaded files only"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class Remote:
    """Where a file comes from and what its bytes must be."""

    url: str
    label: str  # how messages name it
    sha256: str | None = None  # hex digest the bytes must have
    size: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # for url's host only: dropped on redirects
    hints: Mapping[int, str] = field(default_factory=dict)  # HTTP status -> what the user can do


class NotFound(DownloadError):
    """The server has no such model or file (HTTP 404): a model with another source tries that one."""


class _Dropped(Exception):
    """The transfer broke off after it had started: worth resuming."""


def partial_path(target: Path) -> Path:
    return target.with_name(target.name + ".partial")


def lock_path(target: Path) -> Path:
    return target.with_name(target.name + ".lock")


def fetch(remote: Remote, target: Path, notify: Notify = lambda _m: None) -> Path:
    """Download ``remote`` to ``target`` unless it is already there; resumes a previous attempt."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(err, target.parent) from None
    with locked(target, f"waiting for another llamadoc process that is downloading {remote.label}", notify):
        if target.is_file():
            return target  # another process finished it while we waited
        part = _Partial(partial_path(target))
        _transfer(remote, part, notify)
        _verify(remote, part)
        os.replace(part.path, target)
    return target


def get(url: str, label: str, headers: Mapping[str, str], hints: Mapping[int, str], limit: int = 4 << 20) -> bytes:
    """A small document (a manifest) in one request."""
    try:
        with _open(url, dict(headers), {}) as response:
            return response.read(limit)
    except urllib.error.HTTPError as err:
        raise http_error(err.code, label, hints) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise network_error(err, url, label) from None


def ensure_space(folder: Path, needed: int, label: str) -> None:
    """Refuse before downloading what cannot fit, rather than fill the disk and fail."""
    try:
        free = shutil.disk_usage(_existing(folder)).free
    except OSError:
        return  # unknown free space: the write itself will say if the disk fills up
    if free < needed:
        # The user's to change (free space, or another LLAMADOC_HOME), not a transfer to retry.
        raise ModelError(
            f"not enough disk space for {label}: it needs {human_size(needed)} in {folder}, "
            f"{human_size(free)} free",
            hint="free some space, or set LLAMADOC_HOME to a folder on a larger disk",
        )


@contextmanager
def locked(target: Path, waiting: str, notify: Notify) -> Iterator[None]:
    """Hold <target>.lock: one process at a time downloads, moves or deletes a file.

    The lock file goes away with the lock, so no ``*.lock`` is left beside the models.
    """
    path = lock_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path, waiting, notify)
    except OSError as err:
        raise write_error(err, target.parent) from None
    try:
        yield
    finally:
        _release(path, fd)


if sys.platform == "win32":
    import msvcrt

    def _acquire(path: Path, waiting: str, notify: Notify) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        told = False
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                return fd
            except OSError:
                if not told:
                    notify(waiting)
                    told = True
                time.sleep(0.2)

    def _release(path: Path, fd: int) -> None:
        os.close(fd)  # Windows refuses to delete an open file; the next holder or `models rm` does it
        try:
            path.unlink()
        except OSError:
            pass  # another process has it open: it deletes it when done

else:
    import fcntl

    def _acquire(path: Path, waiting: str, notify: Notify) -> int:
        told = False
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not told:
                    notify(waiting)
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            # The holder before us deleted the file it locked: a lock on that inode guards
            # nothing any more, since a newcomer creates a new file. Take the one at the path.
            held = os.fstat(fd)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                return fd
            os.close(fd)

    def _release(path: Path, fd: int) -> None:
        try:
            path.unlink()  # while still held, so that whoever waits on it sees it is gone and retries
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)


def http_error(status: int, label: str, hints: Mapping[int, str]) -> DownloadError:
    generic = {
        401: "the server wants credentials that llamadoc does not have",
        403: "the server refused access",
        404: "check the source in models.toml",
        429: "the server is limiting requests: wait a minute and run again",
    }
    hint = hints.get(status) or generic.get(status)
    if hint is None and status >= 500:
        hint = "the server failed: try again later"
    kind = NotFound if status == 404 else DownloadError
    return kind(f"cannot download {label}: HTTP {status}", hint=hint)


def network_error(err: BaseException, url: str, label: str) -> DownloadError:
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(reason, socket.gaierror):
        why = "its name does not resolve"
    elif isinstance(reason, ConnectionRefusedError):
        why = "connection refused"
    elif isinstance(reason, TimeoutError):
        why = "no answer in time"
    else:
        why = str(reason) or type(reason).__name__
    return DownloadError(
        f"cannot reach {urlsplit(url).netloc} to download {label}: {why}",
        hint=f"check the network connection and any HTTPS_PROXY; {OFFLINE_HINT}",
    )


class _Partial:
    """The bytes downloaded so far and their running sha256, kept in step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.digest = hashlib.sha256()
        self.size = 0
        if path.is_file():
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(CHUNK), b""):
                    self.digest.update(chunk)
                    self.size += len(chunk)

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)
        self.digest = hashlib.sha256()
        self.size = 0

    def append(self, fh: BinaryIO, chunk: bytes) -> None:
        try:
            fh.write(chunk)
        except OSError as err:
            raise write_error(err, self.path.parent) from None
        self.digest.update(chunk)
        self.size += len(chunk)


def _transfer(remote: Remote, part: _Partial, notify: Notify) -> None:
    if remote.size is not None and part.size > remote.size:
        part.reset()  # longer than the file can be: not a prefix of it
    if part.size:
        notify(f"resuming {remote.label} at {human_size(part.size)} of {human_size(remote.size)}")
    else:
        notify(f"downloading {remote.label} ({human_size(remote.size)})")
    if remote.size is not None:
        ensure_space(part.path.parent, remote.size - part.size, remote.label)
    bar = progress_bar(remote.label, remote.size, part.size)
    try:
        for attempt in range(RETRIES + 1):
            try:
                _stream(remote, part, bar)
                return
            except _Dropped as err:
                if attempt == RETRIES:
                    raise DownloadError(
                        f"the connection kept dropping while downloading {remote.label} ({err}); "
                        f"{human_size(part.size)} are kept",
                        hint="run the same command again: it resumes where it stopped",
                    ) from None
                notify(f"connection lost ({err}); resuming {remote.label} at {human_size(part.size)}")
                time.sleep(RETRY_DELAY_S * (attempt + 1))
    finally:
        bar.close()


def _stream(remote: Remote, part: _Partial, bar: Bar) -> None:
    headers = {"Accept-Encoding": "identity"}  # sizes and digests are of the bytes as stored
    if part.size:
        headers["Range"] = f"bytes={part.size}-"
    try:
        response = _open(remote.url, headers, remote.headers)
    except urllib.error.HTTPError as err:
        if err.code == 416 and part.size:
            if remote.size == part.size or _total(err.headers.get("Content-Range")) == part.size:
                return  # it was all there already
            part.reset()
            raise _Dropped("the server could not resume; starting over") from None
        if err.code >= 500 or err.code in (408, 429):
            raise _Dropped(f"HTTP {err.code}") from None
        raise http_error(err.code, remote.label, remote.hints) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise network_error(err, remote.url, remote.label) from None
    with response:
        start = 0
        if response.status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            start = int(match.group(1)) if match else -1
            if start != part.size:
                part.reset()
                raise _Dropped("the server resumed at the wrong offset; starting over")
        elif part.size:
            part.reset()  # the server ignored the Range header and sends everything
        length = response.headers.get("Content-Length")
        end = start + int(length) if length and length.isdigit() else remote.size
        if remote.size is not None and end is not None and end != remote.size:
            part.reset()
            raise DownloadError(
                f"the server sends {human_size(end)} for {remote.label}, not the {human_size(remote.size)} expected",
                hint="run the pull again; if it repeats, the source changed",
            )
        with part.path.open("ab") as fh:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as err:
                    raise _Dropped(str(err) or type(err).__name__) from None
                if not chunk:
                    break
                part.append(fh, chunk)
                bar.advance(len(chunk))
        if end is not None and part.size < end:
            raise _Dropped(f"closed after {human_size(part.size)} of {human_size(end)}")


def _verify(remote: Remote, part: _Partial) -> None:
    if remote.size is not None and part.size != remote.size:
        part.reset()
        raise DownloadError(
            f"{remote.label} arrived with {part.size} bytes instead of {remote.size}; the bad file was deleted",
            hint="run the pull again",
        )
    actual = part.digest.hexdigest()
    if remote.sha256 is not None and actual != remote.sha256:
        part.reset()
        raise DownloadError(
            f"{remote.label} failed verification: its sha256 is {actual[:12]}..., not {remote.sha256[:12]}...; "
            "the bad file was deleted",
            hint="run the pull again; if it fails the same way, the source or its sha256 in models.toml is wrong",
        )


def _open(url: str, headers: dict[str, str], private: Mapping[str, str]) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **headers})
    for key, value in private.items():
        # Never forwarded on a redirect: a CDN's signed URL must not see a registry token.
        request.add_unredirected_header(key, value)
    response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    return response


def _total(content_range: str | None) -> int | None:
    match = re.fullmatch(r"bytes \*/(\d+)", content_range or "")
    return int(match.group(1)) if match else None


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def write_error(err: OSError, folder: Path) -> DownloadError:
    if err.errno == errno.ENOSPC:
        return DownloadError(
            f"the disk is full: cannot write to {folder}",
            hint="free some space and run again (what was downloaded is kept), or set LLAMADOC_HOME to a larger disk",
        )
    return DownloadError(
        f"cannot write to {folder}: {err.strerror or err}",
        hint="check the folder's permissions, or set LLAMADOC_HOME to a folder you can write",
    )
