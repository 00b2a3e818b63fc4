"""Sequences the stages over documents and pages.

sources -> pages -> analyze -> validate -> results. Opening, hashing and
rasterising run ahead of the model on a worker thread (a small bounded queue), so
the model never waits for PyMuPDF and memory stays bounded whatever the batch.
Failures of a page or a document become data in its result; only bugs raise.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from llamadoc.engines.base import GenerationRequest, GenerationResponse, Sampling, VisionEngine
from llamadoc.errors import DocumentError, LlamadocError
from llamadoc.raster import RasterOptions, open_document
from llamadoc.render import from_dict, to_dict
from llamadoc import einvoice
from llamadoc.einvoice import EInvoice
from llamadoc.guard import Guard
from llamadoc.quality import cut_runaway, is_blank
from llamadoc.results import Check, DocumentResult, ModelInfo, Page, PageResult, Status, Verdict
from llamadoc.sources import Source
from llamadoc.store import Store, key
from llamadoc.tasks import Ask, Extract, PageReply, Task, merge_fields, schema_error
from llamadoc.verify import embedded_fields, extraction_checks

PREFETCH_PAGES = 2  # pages rasterised ahead of the model


@dataclass(frozen=True)
class RunOptions:
    raster: RasterOptions = field(default_factory=RasterOptions)
    max_tokens: int = 1024
    sampling: Sampling = field(default_factory=Sampling)
    all_pages: bool = False  # ask: read pages whose text layer shows they cannot matter
    embedded: str = "prefer"  # extract: an embedded e-invoice is read (prefer), checked against (compare), or not

    def recorded(self) -> dict[str, Any]:
        """The options that shape an answer, as the result document records them."""
        return {
            "dpi": self.raster.dpi,
            "max_pixels": self.raster.max_pixels,
            "pages": self.raster.pages,
            "max_tokens": self.max_tokens,
            "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p,
            "seed": self.sampling.seed,
            "all_pages": self.all_pages,
            "embedded": self.embedded,
        }


# What the rasterising thread hands to the model thread.
@dataclass
class _DocStart:
    source: Source
    sha256: str
    page_count: int
    skipped: dict[int, str]
    invoice: EInvoice | None = None  # an embedded e-invoice, read exactly
    invoice_name: str | None = None
    use_invoice: bool = False  # --embedded prefer and it fits: no page goes to the model
    notes: list[str] = field(default_factory=list)


@dataclass
class _DocFailed:
    source: Source
    sha256: str | None
    error: str


@dataclass
class _PageReady:
    page: Page
    raster_ms: float
    guard_in: list[Verdict] = field(default_factory=list)  # checked ahead of the model
    guard_ms: float = 0.0


@dataclass
class _PageFailed:
    index: int
    error: str
    skipped: str | None = None  # not a failure: a page not worth the model (the reason)


@dataclass
class _Known:
    """A document whose result exists: in the store from an earlier run, or earlier
    in this run (the same bytes under another name)."""

    source: Source
    sha256: str
    stored: dict[str, Any] | None  # the stored result; None: a duplicate within this run


@dataclass
class _Crash:
    error: BaseException


_DOC_END = object()
_ALL_DONE = object()


class Pipeline:
    def __init__(
        self,
        engine: VisionEngine,
        task: Task,
        options: RunOptions,
        model: ModelInfo,
        guard: Guard | None = None,
        store: Store | None = None,
        store_key: str = "",
        force: bool = False,
        on_page: Callable[[PageResult], None] = lambda _p: None,
    ) -> None:
        self.engine = engine
        self.task = task
        self.options = options
        self.model = model
        self.guard = guard
        self.block = guard is not None and guard.policy.mode == "block"
        self.store = store  # finished results, for resuming; keyed by store_key + document hash
        self.store_key = store_key
        self.force = force  # redo documents the store already has
        self.on_page = on_page
        self._seen: set[str] = set()  # document hashes met by the rasterising thread
        self._finished: dict[str, DocumentResult] = {}  # by hash, for duplicates

    # -- the rasterising side (worker thread) ---------------------------------

    def _produce(self, sources: Iterable[Source], out: queue.Queue[Any], stop: threading.Event) -> None:
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
                self._produce_one(source, put)
            put(_ALL_DONE)
        except BaseException as err:  # a bug: hand it to the main thread to raise
            put(_Crash(err))

    def _produce_one(self, source: Source, put: Any) -> None:
        sha256 = None
        try:
            if source.error:
                raise DocumentError(source.error)
            sha256 = source.sha256()
            if sha256 in self._seen:
                put(_Known(source, sha256, None))
                return
            self._seen.add(sha256)
            stored = self.store.get(key(self.store_key, sha256)) if self.store and not self.force else None
            if stored is not None:
                put(_Known(source, sha256, stored))
                return
            with open_document(source, self.options.raster) as doc:
                indices = doc.selected()
                start = self._embedded(_DocStart(source, sha256, doc.page_count, self._plan(doc, indices)), doc)
                put(start)
                for index in [] if start.use_invoice else indices:
                    if index in start.skipped:
                        continue
                    started = time.perf_counter()
                    try:
                        page = next(doc.pages([index]))
                    except DocumentError as err:
                        put(_PageFailed(index, str(err)))
                        continue
                    if page.text is None and is_blank(page.image):
                        put(_PageFailed(index, "", skipped="blank page"))  # models invent text for blanks
                        continue
                    raster_ms = (time.perf_counter() - started) * 1000
                    put(self._screen(page, doc.page_count, raster_ms))
                put(_DOC_END)
        except OSError as err:
            put(_DocFailed(source, sha256, f"cannot read {source.label}: {err.strerror or err}"))
        except DocumentError as err:
            put(_DocFailed(source, sha256, str(err)))

    def _embedded(self, start: _DocStart, doc: Any) -> _DocStart:
        """Look for an e-invoice in the PDF's attachments (extract only)."""
        if not isinstance(self.task, Extract) or self.options.embedded == "ignore":
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
        if self.options.embedded == "prefer":
            fields, why_not = embedded_fields(self.task, start.invoice)
            start.use_invoice = fields is not None
            if why_not:
                start.notes.append(f"the embedded e-invoice {found[0]} was not used: {why_not}")
        return start

    def _screen(self, page: Page, page_count: int, raster_ms: float) -> _PageReady:
        """The input check runs here, on the rasterising thread, so the guard judges the
        next page while the vision model answers this one."""
        if self.guard is None:
            return _PageReady(page, raster_ms)
        started = time.perf_counter()
        verdicts = self.guard.check_input(self.task.prompt(page_count), page)
        return _PageReady(page, raster_ms, verdicts, (time.perf_counter() - started) * 1000)

    def _plan(self, doc: Any, indices: list[int]) -> dict[int, str]:
        """Pages the text layer shows cannot matter to the question (ask only)."""
        if not isinstance(self.task, Ask) or self.options.all_pages or len(indices) < 2 or doc.kind != "pdf":
            return {}
        task = self.task
        skip = {
            i: "its text layer shares no word with the question and it has no pictures"
            for i in indices
            if not task.relevant(*doc.page_info(i))
        }
        return {} if len(skip) == len(indices) else skip  # nothing to prefer: read them all

    # -- the model side (calling thread) ---------------------------------------

    def run(self, sources: Iterable[Source]) -> Iterator[DocumentResult]:
        """Results document by document, as each finishes."""
        items: queue.Queue[Any] = queue.Queue(maxsize=PREFETCH_PAGES)
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(sources, items, stop), daemon=True)
        worker.start()
        try:
            while (item := items.get()) is not _ALL_DONE:
                if isinstance(item, _Crash):
                    raise item.error
                if isinstance(item, _Known):
                    doc = self._known(item)
                elif isinstance(item, _DocFailed):
                    doc = self._failed(item)
                else:
                    doc = self._document(item, items)
                    if self.store is not None and doc.status is not Status.FAILED:
                        self.store.put(key(self.store_key, doc.sha256 or ""), to_dict(doc))
                if doc.sha256:
                    self._finished.setdefault(doc.sha256, doc)
                yield doc
        finally:
            stop.set()
            worker.join(timeout=5)

    def _known(self, item: _Known) -> DocumentResult:
        if item.stored is not None:
            return replace(from_dict(item.stored), source=item.source.label, cached=True)
        first = self._finished[item.sha256]
        return replace(first, source=item.source.label, duplicate_of=first.source)

    def _failed(self, item: _DocFailed) -> DocumentResult:
        return DocumentResult(
            source=item.source.label, task=self.task.name, sha256=item.sha256, model=self.model,
            options=self._options(), status=Status.FAILED, errors=[item.error],
        )

    def _options(self) -> dict[str, Any]:
        guard = self.guard.policy.recorded() if self.guard else {"guard": "off"}
        return self.task.options() | self.options.recorded() | guard

    def _document(self, start: _DocStart, items: queue.Queue[Any]) -> DocumentResult:
        doc = DocumentResult(
            source=start.source.label, task=self.task.name, sha256=start.sha256,
            page_count=start.page_count, model=self.model, options=self._options(),
            guard_model=self.guard.name if self.guard else None,
        )
        started = time.perf_counter()
        pages: dict[int, PageResult] = {
            i: PageResult(index=i, status=Status.SKIPPED, skipped_reason=why) for i, why in start.skipped.items()
        }
        replies: dict[int, PageReply] = {}
        while (item := items.get()) is not _DOC_END:
            if isinstance(item, _Crash):
                raise item.error
            if isinstance(item, _PageFailed):
                if item.skipped:
                    pages[item.index] = PageResult(index=item.index, status=Status.SKIPPED, skipped_reason=item.skipped)
                else:
                    pages[item.index] = PageResult(index=item.index, status=Status.FAILED, errors=[item.error])
                continue
            result, reply = self._page(item, start.page_count)
            result.timings_ms["raster"] = round(item.raster_ms, 2)
            pages[item.page.index] = result
            self.on_page(result)
            if reply is not None:
                replies[item.page.index] = reply
            item.page.image.close()  # drop pixels as soon as the model is done with them
        doc.pages = [pages[i] for i in sorted(pages)]
        doc.errors.extend(start.notes)
        self._combine(doc, replies)
        if isinstance(self.task, Extract):
            if start.use_invoice and start.invoice is not None:
                doc.fields, doc.embedded = start.invoice.to_fields(), start.invoice_name
            doc.checks.extend(
                extraction_checks(doc, self.task, start.invoice, compare=self.options.embedded != "ignore")
            )
        doc.status = document_status(doc.pages)
        if doc.status is Status.OK and doc.guard_out is not None and doc.answer is None:
            doc.status = Status.BLOCKED if doc.guard_out.safe is False else Status.FAILED
        if doc.status is Status.FAILED and not doc.errors:
            doc.errors = [f"page {p.index}: {e}" for p in doc.pages for e in p.errors][:5]
        doc.timings_ms["total"] = round((time.perf_counter() - started) * 1000, 2)
        return doc

    def _generate(self, prompt: str, page: Page | None) -> GenerationResponse:
        return self.engine.generate(
            GenerationRequest(
                prompt=prompt,
                images=(page.image,) if page is not None else (),
                schema=self.task.schema,
                max_tokens=self.options.max_tokens,
                sampling=self.options.sampling,
            )
        )

    def _page(self, item: _PageReady, page_count: int) -> tuple[PageResult, PageReply | None]:
        page = item.page
        result = PageResult(
            index=page.index, width=page.image.width, height=page.image.height, dpi=page.dpi,
            text_layer_chars=len(page.text or ""), text_layer=page.text, guard_in=item.guard_in,
        )
        if self.guard is not None:
            result.timings_ms["guard_in"] = round(item.guard_ms, 2)
            if self._held_back(result, item.guard_in, "the input"):
                return result, None
        prompt = self.task.prompt(page_count)
        try:
            response = self._generate(prompt, page)
            if not isinstance(self.task, Extract):  # JSON that loops fails its schema and is re-asked
                text, runaway = cut_runaway(response.text)
                if runaway:
                    response = replace(response, text=text)
                    result.status = Status.PARTIAL
                    result.checks.append(Check(name="repetition", status="fail", detail=f"cut: {runaway}"))
            reply = self.task.read(response.text)
            if isinstance(self.task, Extract) and reply.error:
                # One re-ask that shows the model its mistake, then a recorded failure.
                self._record(result, response)
                result.errors.append(f"first answer did not match the schema: {reply.error}")
                response = self._generate(self.task.prompt(page_count, previous_error=reply.error), page)
                reply = self.task.read(response.text)
        except LlamadocError as err:
            result.status = Status.FAILED
            result.errors.append(str(err))
            return result, None
        self._record(result, response)
        result.answer = reply.answer
        result.fields = reply.fields
        if isinstance(self.task, Extract):
            result.checks.append(_schema_check(reply.error))
        if reply.error:
            result.status = Status.FAILED
            result.errors.append(reply.error)
        if response.finish_reason == "length":
            result.errors.append(f"the answer reached --max-tokens ({self.options.max_tokens}) and may be cut short")
        if self.guard is not None:
            started = time.perf_counter()
            said = json.dumps(reply.fields, ensure_ascii=False) if reply.fields is not None else reply.answer or ""
            result.guard_out = self.guard.check_output(prompt, said)
            result.timings_ms["guard_out"] = round((time.perf_counter() - started) * 1000, 2)
            if self._held_back(result, [result.guard_out], "the answer"):
                result.answer = result.fields = None  # never printed, never written
                return result, None
        return result, reply

    def _held_back(self, result: PageResult, verdicts: list[Verdict], what: str) -> bool:
        """Apply the policy to a page's verdicts: True when the page stops here."""
        assert self.guard is not None
        failure = self.guard.failed(verdicts)
        if failure:
            result.errors.append(failure)
            if self.block:  # unjudged is not safe: withhold, and say why
                result.status = Status.FAILED
                return True
        if self.guard.unsafe(verdicts):
            codes = sorted({c for v in verdicts if v.safe is False for c in v.categories})
            reason = f"{what} was judged unsafe ({', '.join(codes) or 'above the threshold'})"
            if self.block:
                result.status = Status.BLOCKED
                result.errors.append(f"{reason}; withheld")
                return True
            result.errors.append(f"{reason}; flagged")
        return False

    @staticmethod
    def _record(result: PageResult, response: GenerationResponse) -> None:
        """Add a model call's tokens and time to the page (a re-ask adds to the first)."""
        for kind, value in (("prompt", response.prompt_tokens), ("completion", response.completion_tokens)):
            result.tokens[kind] = result.tokens.get(kind, 0) + value
        model_ms = response.timings_ms.get("model", 0.0)
        result.timings_ms["model"] = round(result.timings_ms.get("model", 0.0) + model_ms, 2)

    def _combine(self, doc: DocumentResult, replies: dict[int, PageReply]) -> None:
        """Fold page replies into the document's answer or record."""
        status = {p.index: p.status for p in doc.pages}
        ok = {i: r for i, r in replies.items() if status[i] is Status.OK}
        if isinstance(self.task, Extract):
            records = [(i, r.fields) for i, r in sorted(ok.items()) if r.fields is not None]
            if records:
                doc.fields, doc.field_pages = merge_fields(records)
                doc.checks.append(_schema_check(schema_error(doc.fields, self.task.schema)))
            return
        if not isinstance(self.task, Ask):
            return
        found = [(i, r.answer or "") for i, r in sorted(ok.items()) if r.found]
        doc.cited_pages = [i for i, _ in found]
        if not found:
            doc.answer = "The pages read do not answer this question." if ok else None
        elif len(found) == 1:
            doc.answer = found[0][1]
        else:
            started = time.perf_counter()
            try:
                response = self._generate(self.task.combine_prompt(found), None)
                doc.answer = response.text.strip()
            except LlamadocError as err:
                doc.errors.append(f"combining the page answers failed: {err}")
                doc.answer = "\n".join(f"(page {i}) {a}" for i, a in found)
            doc.timings_ms["combine"] = round((time.perf_counter() - started) * 1000, 2)
            if self.guard is not None and doc.answer:
                doc.guard_out = self.guard.check_output(self.task.prompt(1), doc.answer)
                problem = doc.guard_out.error or (
                    f"judged unsafe ({', '.join(doc.guard_out.categories) or 'above the threshold'})"
                    if doc.guard_out.safe is False else None
                )
                if problem and self.block:
                    doc.answer = None
                    doc.errors.append(f"the combined answer was withheld: {problem}")


def _schema_check(error: str | None) -> Check:
    return Check(name="schema", status="fail" if error else "pass", detail=error or "")


def document_status(pages: list[PageResult]) -> Status:
    """ok: every page read answered; partial: some did; failed/blocked: none did."""
    statuses = {p.status for p in pages if p.status is not Status.SKIPPED}
    if statuses <= {Status.OK}:
        return Status.OK
    if statuses & {Status.OK, Status.PARTIAL}:  # some page gave a (possibly cut) answer
        return Status.PARTIAL
    return Status.FAILED if Status.FAILED in statuses else Status.BLOCKED
