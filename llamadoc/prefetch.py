"""The worker thread ahead of the model: open, hash, rasterise, and screen each page.

It hands the model thread a stream of small items through a bounded queue, so the
model never waits for PyMuPDF (or for the guard's input check) and memory stays
bounded however long the batch. A document it cannot open becomes a DocFailed item,
not an exception.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from llamadoc import einvoice
from llamadoc.einvoice import EInvoice
from llamadoc.errors import DocumentError
from llamadoc.guard import Guard
from llamadoc.quality import is_blank
from llamadoc.raster import Document, RasterOptions, open_document
from llamadoc.results import Page, Verdict
from llamadoc.sources import Source
from llamadoc.tasks import Ask, Extract, Task
from llamadoc.verify import embedded_fields


@dataclass
class DocStart:
    source: Source
    sha256: str
    page_count: int
    skipped: dict[int, str]  # pages not worth the model, and why
    invoice: EInvoice | None = None  # an embedded e-invoice, read exactly
    invoice_name: str | None = None
    use_invoice: bool = False  # --embedded prefer and it fits: no page goes to the model
    notes: list[str] = field(default_factory=list)


@dataclass
class DocFailed:
    source: Source
    sha256: str | None
    error: str


@dataclass
class Known:
    """A document whose result exists: in the store from an earlier run, or earlier
    in this run (the same bytes under another name)."""

    source: Source
    sha256: str
    stored: dict[str, Any] | None  # the stored result; None: a duplicate within this run


@dataclass
class PageReady:
    page: Page
    raster_ms: float
    guard_in: list[Verdict] = field(default_factory=list)  # checked ahead of the model
    guard_ms: float = 0.0


@dataclass
class PageSkipped:
    index: int
    error: str = ""  # set: the page failed; empty: skipped for ``reason``
    reason: str = ""


@dataclass
class Crash:
    error: BaseException


DOC_END = object()
ALL_DONE = object()


@dataclass
class Prefetcher:
    task: Task
    raster: RasterOptions
    embedded: str = "prefer"
    all_pages: bool = False
    guard: Guard | None = None
    lookup: Callable[[str], dict[str, Any] | None] = lambda _sha: None  # finished results by hash
    _seen: set[str] = field(default_factory=set)

    def run(self, sources: Iterable[Source], out: queue.Queue[Any], stop: threading.Event) -> None:
        def put(item: Any) -> None:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        try:
            for source in sources:
                if stop.is_set():
                    return
                self._document(source, put)
            put(ALL_DONE)
        except BaseException as err:  # a bug: hand it to the model thread to raise
            put(Crash(err))

    def _document(self, source: Source, put: Callable[[Any], None]) -> None:
        sha256 = None
        try:
            if source.error:
                raise DocumentError(source.error)
            sha256 = source.sha256()
            if sha256 in self._seen:
                put(Known(source, sha256, None))
                return
            self._seen.add(sha256)
            stored = self.lookup(sha256)
            if stored is not None:
                put(Known(source, sha256, stored))
                return
            with open_document(source, self.raster) as doc:
                indices = doc.selected()
                start = self._embedded(DocStart(source, sha256, doc.page_count, self._plan(doc, indices)), doc)
                put(start)
                for index in [] if start.use_invoice else indices:
                    if index not in start.skipped:
                        put(self._page(doc, index))
                put(DOC_END)
        except OSError as err:
            put(DocFailed(source, sha256, f"cannot read {source.label}: {err.strerror or err}"))
        except DocumentError as err:
            put(DocFailed(source, sha256, str(err)))

    def _page(self, doc: Document, index: int) -> PageReady | PageSkipped:
        started = time.perf_counter()
        try:
            page = next(doc.pages([index]))
        except DocumentError as err:
            return PageSkipped(index, error=str(err))
        if page.text is None and is_blank(page.image):
            return PageSkipped(index, reason="blank page")  # models invent text for blank pages
        raster_ms = (time.perf_counter() - started) * 1000
        if self.guard is None:
            return PageReady(page, raster_ms)
        # The input check runs here, so the guard judges the next page while the
        # vision model answers this one.
        started = time.perf_counter()
        verdicts = self.guard.check_input(self.task.prompt(doc.page_count), page)
        return PageReady(page, raster_ms, verdicts, (time.perf_counter() - started) * 1000)

    def _plan(self, doc: Document, indices: list[int]) -> dict[int, str]:
        """Pages the text layer shows cannot matter to the question (ask only)."""
        if not isinstance(self.task, Ask) or self.all_pages or len(indices) < 2 or doc.kind != "pdf":
            return {}
        task = self.task
        skip = {
            i: "its text layer shares no word with the question and it has no pictures"
            for i in indices
            if not task.relevant(*doc.page_info(i))
        }
        return {} if len(skip) == len(indices) else skip  # nothing to prefer: read them all

    def _embedded(self, start: DocStart, doc: Document) -> DocStart:
        """Look for an e-invoice in the PDF's attachments (extract only)."""
        if not isinstance(self.task, Extract) or self.embedded == "ignore":
            return start
        found = einvoice.find(doc.embedded_files())
        if found is None:
            return start
        start.invoice_name = found[0]
        try:
            start.invoice = einvoice.parse(found[1], found[0])
        except DocumentError as err:
            start.notes.append(f"the embedded e-invoice cannot be used ({err}); the pages were read instead")
            return start
        if self.embedded == "prefer":
            fields, why_not = embedded_fields(self.task, start.invoice)
            start.use_invoice = fields is not None
            if why_not:
                start.notes.append(f"the embedded e-invoice {found[0]} was not used: {why_not}")
        return start
