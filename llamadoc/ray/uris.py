"""Documents named by URI (s3://, gs://, file://, ...), read through pyarrow's file systems.

A cluster's workers rarely share the driver's disk, but they reach the same object
store: a URI source is listed and hashed by the driver and read again by the worker
that prepares it. Which schemes work is pyarrow's affair (S3 and GCS need their
credentials set up as pyarrow expects); a URI that cannot be listed or read fails as
data, like a missing local file.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from llamadoc.inputs.sources import DOCUMENT_SUFFIXES, Source
from llamadoc.reader import Reader, Selection

_CHUNK = 1 << 20


def is_uri(arg: str | Path) -> bool:
    return isinstance(arg, str) and "://" in arg


@dataclass(frozen=True)
class UriSource(Source):
    """A document in an object store or any file system pyarrow reaches by URI."""

    uri: str = ""

    def read_bytes(self) -> bytes:
        fs, path = _filesystem(self.uri)
        with fs.open_input_stream(path) as stream:
            data: bytes = stream.read()
        return data

    def sha256(self) -> str:
        digest = hashlib.sha256()
        fs, path = _filesystem(self.uri)
        with fs.open_input_stream(path) as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()


def expand(reader: Reader, documents: Sequence[Any], select: Selection,
           stdin: BinaryIO | None) -> Sequence[Any]:
    """The documents with each URI listed (a folder-like prefix: every document below it);
    unchanged when none is a URI, so a plain batch lists its sources exactly as a local run."""
    if not any(is_uri(d) for d in documents if not isinstance(d, Source)):
        return documents
    sources: list[Source] = []
    for arg in documents:
        if isinstance(arg, Source):
            sources.append(arg)
        elif is_uri(arg):
            sources.extend(_listed(arg, select))
        else:
            sources.extend(reader.sources([arg], select, stdin))
    return sources


def _listed(uri: str, select: Selection) -> list[Source]:
    from pyarrow.fs import FileSelector, FileType

    try:
        fs, root = _filesystem(uri)
        info = fs.get_file_info(root)
        if info.type == FileType.File:
            return [UriSource(label=uri, uri=uri, rel=posixpath.basename(root))]
        if info.type != FileType.Directory:
            return [Source(label=uri, error=f"{uri} does not exist")]
        found = sorted((i.path for i in fs.get_file_info(FileSelector(root, recursive=True))
                        if i.type == FileType.File), key=str)
    except (OSError, ValueError) as err:  # pyarrow's errors for unknown schemes, missing buckets, credentials
        return [Source(label=uri, error=f"cannot list {uri}: {err}")]
    base = uri.rstrip("/")
    sources: list[Source] = []
    for path in found:
        rel = posixpath.relpath(path, root)
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # hidden, as a local folder walk skips them
        if posixpath.splitext(rel)[1].lower() not in DOCUMENT_SUFFIXES or not _chosen(rel, select):
            continue
        sources.append(UriSource(label=f"{base}/{rel}", uri=f"{base}/{rel}", rel=rel))
    return sources or [Source(label=uri, error=f"{uri} holds no documents")]


def _chosen(rel: str, select: Selection) -> bool:
    """--include/--exclude on the name or the path below the URI, as for a local folder."""
    names = (posixpath.basename(rel), rel)
    if select.include and not any(fnmatch.fnmatch(n, p) for p in select.include for n in names):
        return False
    return not any(fnmatch.fnmatch(n, p) for p in select.exclude for n in names)


@functools.cache
def _bucket(root: str) -> Any:
    """One file system per bucket and process: pyarrow resolves an S3 bucket's region over the network."""
    from pyarrow.fs import FileSystem

    fs, _ = FileSystem.from_uri(root)
    return fs


def _filesystem(uri: str) -> tuple[Any, str]:  # a pyarrow FileSystem and its path
    from pyarrow.fs import FileSystem

    scheme, _, rest = uri.partition("://")
    if scheme in ("s3", "gs", "gcs"):  # pyarrow names their objects bucket/key
        return _bucket(f"{scheme}://{rest.split('/', 1)[0]}"), rest.split("?", 1)[0]
    fs, path = FileSystem.from_uri(uri)
    return fs, str(path)
