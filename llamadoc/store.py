"""A content-addressed store of small JSON records (guard verdicts, finished results), and
the identity of a run, from which both a result's key and its recorded options come.

One file per key (``root/ab/abcdef....json``), each written whole through a rename, so
a run killed at any moment leaves either the old record or the new one, and two
processes writing the same key agree because the key is the content's hash. A record
that cannot be read is a miss: computed again and replaced, never a crash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamadoc.files import sweep_temp, write_atomic
from llamadoc.results import SCHEMA_VERSION

TMP = "tmp"  # where records are written before their rename: the one folder a sweep lists


def key(*parts: str) -> str:
    """A stable key from parts; the separator keeps ('ab', 'c') apart from ('a', 'bc')."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.unreadable = 0  # entries found but refused: another version's, cut short, edited
        self.write_error: str | None = None  # the first write that failed: resuming is off

    def _path(self, k: str) -> Path:
        return self.root / k[:2] / f"{k}.json"

    def get(self, k: str) -> Any | None:
        """The record, or None when absent or unreadable (either way: compute it again)."""
        try:
            text = self._path(k).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            self.unreadable += 1
            return None
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            self.unreadable += 1
            return None

    def refuse(self) -> None:
        """A record was read but did not fit what the caller expects: count it as unreadable."""
        self.unreadable += 1

    def put(self, k: str, value: Any) -> bool:
        """Store a record; False (and ``write_error`` set) when it cannot be written."""
        try:
            write_atomic(self._path(k), json.dumps(value, ensure_ascii=False), tmp_dir=self.root / TMP)
            return True
        except (OSError, ValueError) as err:  # a store we cannot write only costs time; say so once
            if self.write_error is None:
                reason = getattr(err, "strerror", None) or str(err)
                self.write_error = f"{self.root}: {reason}"
            return False

    def sweep(self) -> int:
        """Remove the temporary files of killed runs (older versions left them beside records)."""
        return sweep_temp([self.root / TMP], recursive=False)


@dataclass(frozen=True)
class RunIdentity:
    """What makes two results interchangeable: the model files, the task and every option
    that shapes an answer, and the guard. Each result records ``options``; the store keys
    results by ``key(document sha256)``: both come from here, so they cannot drift."""

    task: str
    options: Mapping[str, Any]  # task options | run options | guard policy
    model: str = ""  # the model file's sha256 (or its path when it has none)
    mmproj: str = ""
    guard: str = "off"  # the guard model file's identity

    def key(self, sha256: str) -> str:
        return key("result", str(SCHEMA_VERSION), self.task, self.model, self.mmproj, self.guard,
                   json.dumps(dict(self.options), sort_keys=True, ensure_ascii=False), sha256)
