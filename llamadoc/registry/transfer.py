"""What a user sees of a transfer: a progress bar on stderr, only when it is a terminal, and sizes."""

from __future__ import annotations

import sys
from typing import Any, Protocol


class Bar(Protocol):
    def advance(self, n: int) -> None: ...

    def set_total(self, total: int) -> None: ...

    def close(self) -> None: ...


class _NoBar:
    def advance(self, n: int) -> None:
        pass

    def set_total(self, total: int) -> None:
        pass

    def close(self) -> None:
        pass


class _RichBar:
    def __init__(self, label: str, total: int | None, done: int, unit: str) -> None:
        # Imported here: rich's progress machinery is only needed while a download runs.
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        counts: tuple[ProgressColumn, ...] = (
            (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(), TextColumn(unit))
        )
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            *counts,
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._progress.start()
        self._task: Any = self._progress.add_task(label, total=total, completed=done)

    def advance(self, n: int) -> None:
        self._progress.advance(self._task, n)

    def set_total(self, total: int) -> None:
        self._progress.update(self._task, total=total)

    def close(self) -> None:
        self._progress.stop()


def progress_bar(label: str, total: int | None, done: int = 0, unit: str = "bytes") -> Bar:
    """A bar for one transfer (or a count of ``unit``); nothing at all when stderr is a pipe or a file."""
    if not sys.stderr.isatty():
        return _NoBar()
    return _RichBar(label, total, done, unit)


def human_size(n: int | None) -> str:
    """Decimal units, as Ollama and the Hugging Face Hub print them: 4.7 GB."""
    if n is None:
        return "?"
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
