"""The work ahead of the model: hash and admit each document (Gate), then open, plan,
rasterise and screen its pages (Preparer).

Locally both run on one worker thread (Prefetcher) that hands the model thread a stream
of small items through a bounded queue, so the model never waits for PyMuPDF (or for
the guard's input check) and memory stays bounded however long the batch. On Ray the
driver admits and CPU workers prepare. A document that cannot be opened becomes a
DocFailed item, not an exception.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from llamadoc.errors import DocumentError
from llamadoc.evidence.quality import is_blank
from llamadoc.guard import Guard
from llamadoc.inputs import ocr
from llamadoc.inputs.raster import Document, RasterOptions, open_document
from llamadoc.inputs.sources import Source
from llamadoc.results import DocumentResult, Page, Verdict
from llamadoc.tasks import Plan, Task

# The note a document gets when its scanned pages could not be read for word boxes (the batch
# says it once on stderr: every value of those pages goes without evidence).
NO_OCR = "no word boxes for pages without a text layer"


@dataclass
class DocStart:
    source: Source
    sha256: str
    page_count: int
    plan: Plan


@dataclass
class DocFailed:
    source: Source
    sha256: str | None
    error: str


@dataclass
class Known:
    """A document whose result exists: in the store from an earlier run (``stored``), or
    earlier in this run (the same bytes under another name: ``stored`` is None)."""

    source: Source
    sha256: str
    stored: DocumentResult | None


@dataclass
class Held:
    """A document another run on the same output is working on: left to it."""

    source: Source
    sha256: str


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
class Admitted:
    """A document that needs work: nobody has its result, and this run holds its claim."""

    source: Source
    sha256: str


@dataclass
class Gate:
    """Which documents need work: hash each, and set aside duplicates, documents the store
    already has and documents another run is working on. The local prefetcher and Ray's
    driver both decide here."""

    lookup: Callable[[str], DocumentResult | None] = lambda _sha: None  # finished results by hash
    claim: Callable[[str], bool] = lambda _sha: True  # False: another run is doing this document
    _seen: set[str] = field(default_factory=set)
    _busy: set[str] = field(default_factory=set)  # hashes another run holds: their copies are left to it too

    def admit(self, source: Source) -> Admitted | Known | Held | DocFailed:
        sha256 = None
        try:
            if source.error:
                raise DocumentError(source.error)
            sha256 = source.sha256()
        except OSError as err:
            return DocFailed(source, sha256, f"cannot read {source.label}: {err.strerror or err}")
        except DocumentError as err:
            return DocFailed(source, sha256, str(err))
        if sha256 in self._busy:
            return Held(source, sha256)
        if sha256 in self._seen:
            return Known(source, sha256, None)
        self._seen.add(sha256)
        stored = self.lookup(sha256)
        if stored is None and not self.claim(sha256):
            self._busy.add(sha256)
            return Held(source, sha256)
        if stored is None:
            stored = self.lookup(sha256)  # finished by another run while we waited for its lock
        if stored is not None:
            return Known(source, sha256, stored)
        return Admitted(source, sha256)


@dataclass
class Preparer:
    """One admitted document made ready for the model: opened, planned, rasterised, and each
    page screened by the guard. Yields DocStart, its pages (PageReady or PageSkipped), then
    DOC_END; or DocFailed when the document cannot be opened."""

    task: Task
    raster: RasterOptions
    guard: Guard | None = None
    _guard_checked: bool = False

    def prepare(self, source: Source, sha256: str) -> Iterator[DocStart | PageReady | PageSkipped | DocFailed | object]:
        try:
            with open_document(source, self.raster) as doc:
                indices = doc.selected()
                plan = self.task.plan(doc, indices)
                yield DocStart(source, sha256, doc.page_count, plan)
                for index in [] if plan.answered else indices:
                    if index not in plan.skipped:
                        yield self._page(doc, index, plan)
                yield DOC_END
        except OSError as err:
            yield DocFailed(source, sha256, f"cannot read {source.label}: {err.strerror or err}")
        except DocumentError as err:
            yield DocFailed(source, sha256, str(err))

    def _page(self, doc: Document, index: int, plan: Plan) -> PageReady | PageSkipped:
        started = time.perf_counter()
        try:
            page = next(doc.pages([index]))
        except DocumentError as err:
            return PageSkipped(index, error=str(err))
        if page.text is None and is_blank(page.image):
            return PageSkipped(index, reason="blank page")  # models invent text for blank pages
        raster_ms = (time.perf_counter() - started) * 1000
        if plan.words:
            self._words(doc, page, plan)
        if self.guard is None:
            return PageReady(page, raster_ms)
        if not self._guard_checked:  # once, before the first page: a prompt that can never fit stops the run
            self.guard.check_fits([self.task.prompt(1), self.task.prompt(2)])
            self._guard_checked = True
        # The input check runs here, so the guard judges the next page while the
        # vision model answers this one.
        started = time.perf_counter()
        verdicts = self.guard.check_input(self.task.prompt(doc.page_count), page)
        return PageReady(page, raster_ms, verdicts, (time.perf_counter() - started) * 1000)

    @staticmethod
    def _words(doc: Document, page: Page, plan: Plan) -> None:
        """The page's word boxes: its text layer's, else OCR's (here, ahead of the model)."""
        started = time.perf_counter()
        try:
            page.words = doc.words(page.index)
            if page.words is None and page.text is None:
                why_not = ocr.unavailable()
                if why_not is None:
                    page.words = doc.read_words(page.index)
                elif why_not not in plan.notes:
                    plan.notes.append(f"{NO_OCR}: {why_not}")
        except (DocumentError, RuntimeError) as err:  # MuPDF's and Tesseract's complaints
            plan.notes.append(f"page {page.index}: no word boxes ({err})")
        page.words_ms = (time.perf_counter() - started) * 1000


@dataclass
class Prefetcher:
    """The local run's thread ahead of the model: admits each document, then prepares it."""

    task: Task
    raster: RasterOptions
    guard: Guard | None = None
    lookup: Callable[[str], DocumentResult | None] = lambda _sha: None  # finished results by hash
    claim: Callable[[str], bool] = lambda _sha: True  # False: another run is doing this document

    def run(self, sources: Iterable[Source], out: queue.Queue[Any], stop: threading.Event) -> None:
        def put(item: Any) -> None:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        gate = Gate(self.lookup, self.claim)
        preparer = Preparer(self.task, self.raster, self.guard)
        try:
            for source in sources:
                if stop.is_set():
                    return
                item = gate.admit(source)
                if not isinstance(item, Admitted):
                    put(item)
                    continue
                for ready in preparer.prepare(item.source, item.sha256):
                    put(ready)
            put(ALL_DONE)
        except BaseException as err:  # a bug, or a run-wide error: the model thread raises it
            put(Crash(err))
