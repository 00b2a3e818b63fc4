"""sha256 of model files, remembered by path, size and mtime: hashing 5 GB takes a while."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from llamadoc.files import write_atomic

_CHUNK = 8 << 20


_NAMED_BY_DIGEST = re.compile(r"(?:sha256-)?([0-9a-f]{64})")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def file_sha256(path: Path, cache_dir: Path) -> str:
    """The file's sha256, from the cache when the file has not changed since it was hashed.

    Content-addressed stores name their blobs by their digest (Ollama's sha256-<hex>, the
    Hugging Face cache's blobs/<hex>), verified when written: the name is the answer, and
    the first run with a 7.8 GB model does not read it all again (`models verify` does).
    """
    named = _NAMED_BY_DIGEST.fullmatch(path.resolve().name)
    if named:
        return named.group(1)
    key = _key(path)
    known = _load(cache_dir)
    if key not in known:
        known[key] = _hash(path)
        _save(cache_dir, known)
    return known[key]


def known_sha256(path: Path, cache_dir: Path) -> str | None:
    """The file's sha256 when it is known without reading the file: its store name, or the cache."""
    named = _NAMED_BY_DIGEST.fullmatch(path.resolve().name)
    if named:
        return named.group(1)
    try:
        return _load(cache_dir).get(_key(path))
    except OSError:
        return None


def fresh_sha256(path: Path, cache_dir: Path) -> str:
    """The file's sha256 read anew (bit rot keeps size and mtime), then remembered."""
    digest = _hash(path)
    known = _load(cache_dir)
    known[_key(path)] = digest
    _save(cache_dir, known)
    return digest


def _key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load(cache_dir: Path) -> dict[str, str]:
    """The remembered digests; anything that is not a sha256 (a damaged or edited file) is forgotten."""
    try:
        known = json.loads((cache_dir / "file-hashes.json").read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(known, dict):
        return {}
    return {k: v for k, v in known.items() if isinstance(k, str) and isinstance(v, str) and _DIGEST.fullmatch(v)}


def _save(cache_dir: Path, known: dict[str, str]) -> None:
    try:
        write_atomic(cache_dir / "file-hashes.json", json.dumps(known))
    except OSError:
        pass  # a cache we cannot write only costs time (and leaves no temporary file behind)
