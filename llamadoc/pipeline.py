"""Sequences the stages over documents and pages, on the calling thread.

sources -> pages (prefetch.py, a worker thread) -> guard(in) -> analyze -> validate
-> guard(out) -> results. Pages of several documents go to the engine together when
it decodes a batch of sequences at once (``engine.max_batch``); results still come
out whole, one document at a time, in the order the documents were given. Failures
of a page or a document become data in its result; only bugs raise.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from llamadoc.engines.base import GenerationRequest, GenerationResponse, Sampling, VisionEngine
from llamadoc.errors import LlamadocError
from llamadoc.guard import Guard
from llamadoc.prefetch import (
    ALL_DONE,
    DOC_END,
    Crash,
    DocFailed,
    DocStart,
    Known,
    PageReady,
    PageSkipped,
    Prefetcher,
)
from llamadoc.quality import cut_runaway
from llamadoc.raster import RasterOptions
from llamadoc.render import from_dict, to_dict
from llamadoc.results import Check, DocumentResult, ModelInfo, Page, PageResult, Status, Verdict
from llamadoc.sources import Source
from llamadoc.store import Store, key
from llamadoc.tasks import Ask, Extract, PageReply, Task, merge_fields, schema_error
from llamadoc.verify import extraction_checks


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


@dataclass
class _Doc:
    """A document on its way through: its pages so far, and whether more may come."""

    item: DocStart | DocFailed | Known
    pages: dict[int, PageResult] = field(default_factory=dict)
    replies: dict[int, PageReply] = field(default_factory=dict)
    ended: bool = False
    in_flight: int = 0  # pages waiting in the batch
    started: float = field(default_factory=time.perf_counter)


@dataclass
class _Work:
    """One page in a batch."""

    doc: _Doc
    ready: PageReady
    result: PageResult
    prompt: str
    response: GenerationResponse | None = None
    reply: PageReply | None = None


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
        self.batch = max(1, engine.max_batch)
        self._finished: dict[str, DocumentResult] = {}  # by hash, for duplicates

    def _lookup(self, sha256: str) -> dict[str, Any] | None:
        if self.store is None or self.force:
            return None
        stored = self.store.get(key(self.store_key, sha256))
        return stored if isinstance(stored, dict) else None

    def run(self, sources: Iterable[Source]) -> Iterator[DocumentResult]:
        """Results document by document, as each finishes, in the order given."""
        items: queue.Queue[Any] = queue.Queue(maxsize=2 * self.batch + 2)
        stop = threading.Event()
        prefetcher = Prefetcher(
            task=self.task, raster=self.options.raster, embedded=self.options.embedded,
            all_pages=self.options.all_pages, guard=self.guard, lookup=self._lookup,
        )
        worker = threading.Thread(target=prefetcher.run, args=(sources, items, stop), daemon=True)
        worker.start()
        docs: deque[_Doc] = deque()
        batch: list[tuple[_Doc, PageReady]] = []
        try:
            while True:
                try:
                    # Take what is ready; when nothing is, run the batch gathered so far
                    # rather than keep the engine waiting for a full one.
                    item = items.get_nowait() if batch else items.get()
                except queue.Empty:
                    self._run_batch(batch)
                    batch = []
                    yield from self._finished_docs(docs)
                    continue
                if item is ALL_DONE:
                    break
                if isinstance(item, Crash):
                    raise item.error
                if isinstance(item, DocStart | DocFailed | Known):
                    docs.append(_Doc(item, ended=not isinstance(item, DocStart)))
                elif item is DOC_END:
                    docs[-1].ended = True
                elif isinstance(item, PageSkipped):
                    docs[-1].pages[item.index] = _skipped(item)
                else:
                    docs[-1].in_flight += 1
                    batch.append((docs[-1], item))
                    if len(batch) >= self.batch:
                        self._run_batch(batch)
                        batch = []
                yield from self._finished_docs(docs)
            self._run_batch(batch)
            yield from self._finished_docs(docs)
        finally:
            stop.set()
            worker.join(timeout=5)

    def _finished_docs(self, docs: deque[_Doc]) -> Iterator[DocumentResult]:
        while docs and docs[0].ended and not docs[0].in_flight:
            doc = self._finish(docs.popleft())
            if doc.sha256:
                self._finished.setdefault(doc.sha256, doc)
            yield doc

    # -- pages ---------------------------------------------------------------------

    def _run_batch(self, batch: Sequence[tuple[_Doc, PageReady]]) -> None:
        """Screen, answer, check and screen again a batch of pages (any documents)."""
        work = []
        for doc, ready in batch:
            result = _new_page(ready)
            if self.guard is not None and self._held_back(result, ready.guard_in, "the input"):
                self._done(doc, result, None, ready)
                continue
            assert isinstance(doc.item, DocStart)
            work.append(_Work(doc, ready, result, self.task.prompt(doc.item.page_count)))
        self._answer(work, [w.prompt for w in work])
        if isinstance(self.task, Extract):
            # One re-ask that shows the model its mistake, then a recorded failure.
            again = [w for w in work if w.reply is not None and w.reply.error]
            for w in again:
                w.result.errors.append(f"first answer did not match the schema: {w.reply.error}")  # type: ignore[union-attr]
            self._answer(again, [
                self.task.prompt(w.doc.item.page_count, previous_error=w.reply.error)  # type: ignore[union-attr]
                for w in again
            ])
        for w in work:
            self._done(w.doc, w.result, self._finish_page(w), w.ready)

    def _answer(self, work: Sequence[_Work], prompts: Sequence[str]) -> None:
        """Model calls for a batch: together when the engine can, one at a time if one fails."""
        if not work:
            return
        requests = [self._request(p, w.ready.page) for w, p in zip(work, prompts, strict=True)]
        try:
            responses: list[GenerationResponse | LlamadocError] = (
                list(self.engine.generate_batch(requests)) if len(requests) > 1 else [self.engine.generate(requests[0])]
            )
        except LlamadocError as err:
            if len(requests) == 1:
                responses = [err]
            else:  # find the page at fault: the others still get their answers
                responses = [self._one(r) for r in requests]
        for w, response in zip(work, responses, strict=True):
            if isinstance(response, LlamadocError):
                w.result.status = Status.FAILED
                w.result.errors.append(str(response))
                w.response = w.reply = None
                continue
            _record(w.result, response)
            if not isinstance(self.task, Extract):  # JSON that loops fails its schema and is re-asked
                text, runaway = cut_runaway(response.text)
                if runaway:
                    response = replace(response, text=text)
                    w.result.status = Status.PARTIAL
                    w.result.checks.append(Check(name="repetition", status="fail", detail=f"cut: {runaway}"))
            w.response, w.reply = response, self.task.read(response.text)

    def _one(self, request: GenerationRequest) -> GenerationResponse | LlamadocError:
        try:
            return self.engine.generate(request)
        except LlamadocError as err:
            return err

    def _request(self, prompt: str, page: Page | None) -> GenerationRequest:
        return GenerationRequest(
            prompt=prompt,
            images=(page.image,) if page is not None else (),
            schema=self.task.schema,
            max_tokens=self.options.max_tokens,
            sampling=self.options.sampling,
        )

    def _finish_page(self, w: _Work) -> PageReply | None:
        """Record a page's reply, its checks, and the guard's verdict on it."""
        result, reply, response = w.result, w.reply, w.response
        if reply is None or response is None:
            return None
        result.answer, result.fields = reply.answer, reply.fields
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
            result.guard_out = self.guard.check_output(w.prompt, said)
            result.timings_ms["guard_out"] = round((time.perf_counter() - started) * 1000, 2)
            if self._held_back(result, [result.guard_out], "the answer"):
                result.answer = result.fields = None  # never printed, never written
                return None
        return reply

    def _done(self, doc: _Doc, result: PageResult, reply: PageReply | None, ready: PageReady) -> None:
        doc.pages[result.index] = result
        if reply is not None:
            doc.replies[result.index] = reply
        doc.in_flight -= 1
        ready.page.image.close()  # drop the pixels as soon as the model is done with them
        self.on_page(result)

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

    # -- documents -------------------------------------------------------------------

    def _finish(self, state: _Doc) -> DocumentResult:
        item = state.item
        if isinstance(item, Known):
            if item.stored is not None:
                return replace(from_dict(item.stored), source=item.source.label, cached=True)
            first = self._finished[item.sha256]
            return replace(first, source=item.source.label, duplicate_of=first.source)
        doc = DocumentResult(
            source=item.source.label, task=self.task.name, sha256=item.sha256, model=self.model,
            options=self._options(), guard_model=self.guard.name if self.guard else None,
        )
        if isinstance(item, DocFailed):
            doc.status, doc.errors = Status.FAILED, [item.error]
            return doc
        doc.page_count = item.page_count
        skipped = {i: PageResult(index=i, status=Status.SKIPPED, skipped_reason=why) for i, why in item.skipped.items()}
        pages = skipped | state.pages
        doc.pages = [pages[i] for i in sorted(pages)]
        doc.errors.extend(item.notes)
        self._combine(doc, state.replies)
        if isinstance(self.task, Extract):
            if item.use_invoice and item.invoice is not None:
                doc.fields, doc.embedded = item.invoice.to_fields(), item.invoice_name
            doc.checks.extend(
                extraction_checks(doc, self.task, item.invoice, compare=self.options.embedded != "ignore")
            )
        doc.status = document_status(doc.pages)
        if doc.status is Status.OK and doc.guard_out is not None and doc.answer is None:
            doc.status = Status.BLOCKED if doc.guard_out.safe is False else Status.FAILED
        if doc.status is Status.FAILED and not doc.errors:
            doc.errors = [f"page {p.index}: {e}" for p in doc.pages for e in p.errors][:5]
        doc.timings_ms["total"] = round((time.perf_counter() - state.started) * 1000, 2)
        if self.store is not None and doc.status is not Status.FAILED:
            self.store.put(key(self.store_key, item.sha256), to_dict(doc))
        return doc

    def _options(self) -> dict[str, Any]:
        guard = self.guard.policy.recorded() if self.guard else {"guard": "off"}
        return self.task.options() | self.options.recorded() | guard

    def _combine(self, doc: DocumentResult, replies: dict[int, PageReply]) -> None:
        """Fold page replies into the document's answer or record."""
        status = {p.index: p.status for p in doc.pages}
        usable = {i: r for i, r in replies.items() if status[i] in (Status.OK, Status.PARTIAL)}
        if isinstance(self.task, Extract):
            records = [(i, r.fields) for i, r in sorted(usable.items()) if r.fields is not None]
            if records:
                doc.fields, doc.field_pages = merge_fields(records)
                doc.checks.append(_schema_check(schema_error(doc.fields, self.task.schema)))
            return
        if not isinstance(self.task, Ask):
            return
        found = [(i, r.answer or "") for i, r in sorted(usable.items()) if r.found]
        doc.cited_pages = [i for i, _ in found]
        if not found:
            doc.answer = "The pages read do not answer this question." if usable else None
        elif len(found) == 1:
            doc.answer = found[0][1]
        else:
            self._combine_answers(doc, self.task, found)

    def _combine_answers(self, doc: DocumentResult, task: Ask, found: list[tuple[int, str]]) -> None:
        started = time.perf_counter()
        try:
            doc.answer = self.engine.generate(self._request(task.combine_prompt(found), None)).text.strip()
        except LlamadocError as err:
            doc.errors.append(f"combining the page answers failed: {err}")
            doc.answer = "\n".join(f"(page {i}) {a}" for i, a in found)
        doc.timings_ms["combine"] = round((time.perf_counter() - started) * 1000, 2)
        if self.guard is None or not doc.answer:
            return
        doc.guard_out = self.guard.check_output(task.prompt(1), doc.answer)
        problem = doc.guard_out.error or (
            f"judged unsafe ({', '.join(doc.guard_out.categories) or 'above the threshold'})"
            if doc.guard_out.safe is False else None
        )
        if problem and self.block:
            doc.answer = None
            doc.errors.append(f"the combined answer was withheld: {problem}")


def _new_page(ready: PageReady) -> PageResult:
    page = ready.page
    result = PageResult(
        index=page.index, width=page.image.width, height=page.image.height, dpi=page.dpi,
        text_layer_chars=len(page.text or ""), text_layer=page.text, guard_in=ready.guard_in,
    )
    result.timings_ms["raster"] = round(ready.raster_ms, 2)
    if ready.guard_in:
        result.timings_ms["guard_in"] = round(ready.guard_ms, 2)
    return result


def _skipped(item: PageSkipped) -> PageResult:
    if item.error:
        return PageResult(index=item.index, status=Status.FAILED, errors=[item.error])
    return PageResult(index=item.index, status=Status.SKIPPED, skipped_reason=item.reason)


def _record(result: PageResult, response: GenerationResponse) -> None:
    """Add a model call's tokens and time to the page (a re-ask adds to the first)."""
    for kind, value in (("prompt", response.prompt_tokens), ("completion", response.completion_tokens)):
        result.tokens[kind] = result.tokens.get(kind, 0) + value
    model_ms = response.timings_ms.get("model", 0.0)
    result.timings_ms["model"] = round(result.timings_ms.get("model", 0.0) + model_ms, 2)


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
