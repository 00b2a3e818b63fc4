"""Progress on stderr while a batch runs: documents, pages, pages/s, ETA.

Shown only when stderr is a terminal, so logs and pipes stay clean.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

from llamadoc.results import DocumentResult, PageResult


class Progress:
    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.documents = 0
        self.pages = 0
        self.started = time.perf_counter()
        self._bar: Any = None

    def __enter__(self) -> Progress:
        return self

    def start(self, documents: int) -> None:
        """The bar appears once the batch knows how many documents it holds."""
        self.documents = documents
        self.started = time.perf_counter()
        if self.enabled and self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[pages]} pages, {task.fields[rate]} pages/s"), TimeRemainingColumn(),
                console=Console(stderr=True), transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("documents", total=self.documents, pages=0, rate="-")

    def page(self, _result: PageResult) -> None:
        self.pages += 1
        if self._bar is not None:
            rate = self.pages / max(time.perf_counter() - self.started, 1e-9)
            self._bar.update(self._task, pages=self.pages, rate=f"{rate:.2f}")

    def document(self, _doc: DocumentResult) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def print(self, message: str) -> None:
        """A line above the bar (or plain, without one)."""
        if self._bar is not None:
            self._bar.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=sys.stderr, flush=True)

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()
