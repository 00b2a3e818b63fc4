"""A content-addressed store of small JSON records: guard verdicts, finished results.

One file per key (``root/ab/abcdef....json``), each written whole through a rename,
so a run killed at any moment leaves either the old record or the new one, and two
processes writing the same key agree because the key is the content's hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from llamadoc.render import write_atomic


def key(*parts: str) -> str:
    """A stable key from parts; the separator keeps ('ab', 'c') apart from ('a', 'bc')."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, k: str) -> Path:
        return self.root / k[:2] / f"{k}.json"

    def get(self, k: str) -> Any | None:
        try:
            return json.loads(self._path(k).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # absent, or unreadable: either way, compute it again

    def put(self, k: str, value: Any) -> None:
        try:
            write_atomic(self._path(k), json.dumps(value, ensure_ascii=False))
        except OSError:
            pass  # a cache we cannot write only costs time
