"""What a user sees of a transfer: a progress bar on stderr, only when it is a terminal, and sizes."""

from __future__ import annotations

import sys
from typing import Any, Protocol


class Bar(Protocol):
    def advance(self, n: int) -> None: ...

    def close(self) -> None: ...


class _NoBar:
    def advance(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class _RichBar:
    def __init__(self, label: str, total: int | None, done: int) -> None:
        # Imported here: rich's progress machinery is only needed while a download runs.
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._progress.start()
        self._task: Any = self._progress.add_task(label, total=total, completed=done)

    def advance(self, n: int) -> None:
        self._progress.advance(self._task, n)

    def close(self) -> None:
        self._progress.stop()


def progress_bar(label: str, total: int | None, done: int = 0) -> Bar:
    """A bar for one transfer; nothing at all when stderr is a pipe or a file."""
    if not sys.stderr.isatty():
        return _NoBar()
    return _RichBar(label, total, done)


def human_size(n: int | None) -> str:
    """Decimal units, as Ollama and the Hugging Face Hub print them: 4.7 GB."""
    if n is None:
        return "?"
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
