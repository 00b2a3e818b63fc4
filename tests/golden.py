"""Golden files: expected output kept as data, compared byte for byte.

``LLAMADOC_REGENERATE_GOLDEN=1`` writes them instead of comparing (review the diff before
committing it); test_golden_switch.py fails while the switch is on, so CI never runs with it.
"""

from __future__ import annotations

import os
from pathlib import Path

SWITCH = "LLAMADOC_REGENERATE_GOLDEN"
REGENERATE = os.environ.get(SWITCH, "") not in ("", "0")


def check(path: Path, actual: str) -> None:
    """``actual`` is what ``path`` holds; with the switch on, it becomes what it holds."""
    if REGENERATE:
        path.write_bytes(actual.encode("utf-8"))
        return
    assert path.is_file(), f"{path} is missing: run with {SWITCH}=1 to write it, then review it"
    expected = path.read_bytes().decode("utf-8")  # bytes: no newline translation hides a difference
    assert actual == expected, f"{path} is not what the code renders now ({SWITCH}=1 rewrites it)"


def check_folder(folder: Path, expected: dict[str, str], keep: frozenset[str] = frozenset()) -> None:
    """Every file of ``expected`` holds its text, and the folder holds no other file (a
    rendering that is no longer made is stale), ``keep`` (the inputs) aside."""
    for name, text in expected.items():
        check(folder / name, text)
    stale = sorted(p.name for p in folder.iterdir() if p.name not in expected and p.name not in keep)
    if REGENERATE:
        for name in stale:
            (folder / name).unlink()
        return
    assert not stale, f"{folder} holds files nothing renders: {', '.join(stale)} ({SWITCH}=1 removes them)"
