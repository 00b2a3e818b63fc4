"""Sequences the stages over documents and pages, on the calling thread.

sources -> pages (prefetch.py, a worker thread) -> guard(in) -> analyze -> validate
-> guard(out) -> results. Pages of several documents go to the engine together when
it decodes a batch of sequences at once; results still come out whole, one document
at a time, in the order the documents were given. The model's half (ModelStep) and
the store's (Finished) are their own classes, which Ray's workers and driver run
too. What a task does with a page is the task's (tasks/); this module never asks
which task it runs. Failures of a page or a document become data in its result; only
bugs raise. Engines load on first need: a batch whose documents all come from the
store loads none.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from llamadoc import engines, interrupt
from llamadoc.batch.options import RunOptions
from llamadoc.batch.prefetch import (
    ALL_DONE,
    DOC_END,
    Crash,
    DocFailed,
    DocStart,
    Held,
    Known,
    PageReady,
    PageSkipped,
    Prefetcher,
)
from llamadoc.codec import ForeignResult, from_dict, to_dict
from llamadoc.engines.base import GenerationRequest, GenerationResponse, VisionEngine
from llamadoc.errors import LlamadocError, UsageError
from llamadoc.guard import Guard
from llamadoc.inputs.sources import Source
from llamadoc.models.base import EngineNeeds, Models
from llamadoc.results import Check, DocumentResult, PageResult, Status, Verdict
from llamadoc.store import RunIdentity, Store
from llamadoc.tasks import FollowUpAnswer, PageReply, Task

# The engine's own split of a call's time, copied into each page's timings beside raster and model.
ENGINE_TIMINGS = ("vision_encode", "prefill", "decode")
HELD = "another llamadoc run on the same output is working on it"


@dataclass
class DocState:
    """A document on its way through: its pages so far, and whether more may come."""

    item: DocStart | DocFailed | Known | Held
    pages: dict[int, PageResult] = field(default_factory=dict)
    replies: dict[int, PageReply] = field(default_factory=dict)
    ended: bool = False
    in_flight: int = 0  # pages waiting in the batch
    started: float = field(default_factory=time.perf_counter)


@dataclass
class _Work:
    """One page in a batch."""

    doc: DocState
    start: DocStart
    ready: PageReady
    result: PageResult
    prompt: str
    response: GenerationResponse | None = None
    reply: PageReply | None = None


class Finished:
    """The result store as a run sees it: finished results by document hash, under the
    run's identity. The local pipeline and Ray's driver both look up and keep here."""

    def __init__(self, store: Store | None, identity: RunIdentity, force: bool = False) -> None:
        self.store = store
        self.identity = identity
        self.force = force  # redo documents the store already has

    def lookup(self, sha256: str) -> DocumentResult | None:
        if self.store is None or self.force:
            return None
        stored = self.store.get(self.identity.key(sha256))
        if stored is None:
            return None
        try:
            return from_dict(stored)
        except ForeignResult:
            self.store.refuse()  # another version's, or damaged: a miss, done again and replaced
            return None

    def keep(self, doc: DocumentResult) -> None:
        """Store a document this run read (not a failed one: the next run tries it again)."""
        if self.store is not None and doc.sha256 and doc.status not in (Status.FAILED, Status.SKIPPED):
            self.store.put(self.identity.key(doc.sha256), to_dict(doc))


class Pipeline:
    def __init__(
        self,
        models: Models,
        task: Task,
        options: RunOptions,
        *,
        identity: RunIdentity | None = None,
        guard: Guard | None = None,
        store: Store | None = None,
        force: bool = False,
        claim: Callable[[str], bool] = lambda _sha: True,
        on_page: Callable[[PageResult], None] = lambda _p: None,
    ) -> None:
        self.task = task
        self.options = options
        self.guard = guard
        self.identity = identity or RunIdentity(task.name, recorded_options(task, options, guard))
        self.results = Finished(store, self.identity, force)  # for resuming, keyed by the identity and the hash
        self.claim = claim
        self.step = ModelStep(models, task, options, identity=self.identity, guard=guard, on_page=on_page)
        # Pages answered together: the engine's own max_batch, read once it has loaded (a batch
        # whose documents all come from the store never loads it). Until then, prefetching is bounded by this.
        self.batch = 1
        self._finished: dict[str, DocumentResult] = {}  # by hash, for duplicates

    def run(self, sources: Iterable[Source]) -> Iterator[DocumentResult]:
        """Results document by document, as each finishes, in the order given."""
        items: queue.Queue[object] = queue.Queue(maxsize=_ahead(self.batch))
        stop = threading.Event()
        prefetcher = Prefetcher(task=self.task, raster=self.options.raster, guard=self.guard,
                                lookup=self.results.lookup, claim=self.claim)
        worker = threading.Thread(target=prefetcher.run, args=(sources, items, stop), daemon=True)
        worker.start()
        docs: deque[DocState] = deque()
        batch: list[tuple[DocState, PageReady]] = []
        try:
            while True:
                try:
                    # Take what is ready; when nothing is, run the batch gathered so far
                    # rather than keep the engine waiting for a full one.
                    item = items.get_nowait() if batch else items.get()
                except queue.Empty:
                    self.step.answer(batch)
                    batch = []
                    yield from self._finished_docs(docs)
                    continue
                if item is ALL_DONE:
                    break
                if isinstance(item, Crash):
                    raise item.error
                if isinstance(item, DocStart | DocFailed | Known | Held):
                    docs.append(DocState(item, ended=not isinstance(item, DocStart)))
                elif item is DOC_END:
                    docs[-1].ended = True
                elif isinstance(item, PageSkipped):
                    docs[-1].pages[item.index] = skipped_page(item)
                elif isinstance(item, PageReady):
                    if self.batch != self.step.engine().max_batch:  # loads the engine for the first page
                        self.batch = self.step.engine().max_batch
                        _widen(items, _ahead(self.batch))
                    docs[-1].in_flight += 1
                    batch.append((docs[-1], item))
                    if len(batch) >= self.batch:
                        self.step.answer(batch)
                        batch = []
                yield from self._finished_docs(docs)
            self.step.answer(batch)
            yield from self._finished_docs(docs)
        finally:
            stop.set()
            worker.join(timeout=5)

    def _finished_docs(self, docs: deque[DocState]) -> Iterator[DocumentResult]:
        while docs and docs[0].ended and not docs[0].in_flight:
            state = docs.popleft()
            if isinstance(state.item, Known):
                doc = known_result(state.item, self._finished)
            else:
                doc = self.step.finish(state)
                self.results.keep(doc)
            if doc.sha256 and doc.status is not Status.SKIPPED:
                self._finished.setdefault(doc.sha256, doc)
            yield doc


class ModelStep:
    """The model's half of a document's way: answer pages in batches (any documents), check
    and screen each answer, and finish documents (combine, follow-up calls, status). The
    local Pipeline and Ray's model workers both run it."""

    def __init__(
        self,
        models: Models,
        task: Task,
        options: RunOptions,
        *,
        identity: RunIdentity,
        guard: Guard | None = None,
        on_page: Callable[[PageResult], None] = lambda _p: None,
    ) -> None:
        self.models = models
        self.task = task
        self.options = options
        self.needs = engine_needs(task, options)
        self._engine: VisionEngine | None = None
        self.identity = identity
        self.guard = guard
        self.block = guard is not None and guard.policy.mode == "block"
        self.on_page = on_page
        self._follow_up_ms = 0.0  # the current document's follow-up calls

    def engine(self) -> VisionEngine:
        """The vision engine, loaded on the first call, once it is known the task can run on it."""
        if self._engine is None:
            if self.task.schema is not None:
                # Checked before the model loads: exit 2 once rather than every page failed with it.
                engines.check_grammar(self.task.schema)
            engine = self.models.vision_engine(self.needs)
            if self.task.schema is not None and not engine.supports_schema:
                raise UsageError(f"the {engine.name} engine cannot decode under a JSON Schema",
                                 hint="pick a model on the mtmd or mllama engine for extract")
            self._engine = engine
        return self._engine

    # -- pages ---------------------------------------------------------------------

    def answer(self, batch: Sequence[tuple[DocState, PageReady]]) -> None:
        """Screen, answer, check and screen again a batch of pages (any documents)."""
        work = []
        for doc, ready in batch:
            result = _new_page(ready)
            if self.guard is not None and self._held_back(result, ready.guard_in, "the input"):
                self._done(doc, result, None, ready)
                continue
            assert isinstance(doc.item, DocStart)
            work.append(_Work(doc, doc.item, ready, result, self.task.prompt(doc.item.page_count)))
        self._answer(work, [w.prompt for w in work])
        # One re-ask that shows the model its mistake, then a recorded failure.
        again = [w for w in work if w.reply is not None and w.reply.retry]
        for w in again:
            w.result.warnings.append(f"the first answer was asked again: {w.reply.error}")  # type: ignore[union-attr]
        self._answer(again, [self.task.prompt(w.start.page_count, previous=w.reply) for w in again])
        for w in work:
            self._done(w.doc, w.result, self._finish_page(w), w.ready)
        interrupt.check()  # a Ctrl-C that landed inside llama.cpp stops the run here

    def _answer(self, work: Sequence[_Work], prompts: Sequence[str]) -> None:
        """Model calls for a batch: together when the engine can, one at a time if one fails."""
        if not work:
            return
        engine = self.engine()
        requests = [self._request(p, w.ready) for w, p in zip(work, prompts, strict=True)]
        try:
            responses: list[GenerationResponse | LlamadocError] = (
                list(engine.generate_batch(requests)) if len(requests) > 1 else [engine.generate(requests[0])]
            )
        except LlamadocError as err:
            if len(requests) == 1:
                responses = [err]
            else:  # find the page at fault: the others still get their answers
                responses = [self._one(engine, r) for r in requests]
        for w, response in zip(work, responses, strict=True):
            if isinstance(response, LlamadocError):
                w.result.status = Status.FAILED
                w.result.errors.append(str(response))
                w.response = w.reply = None
                continue
            _record(w.result, response)
            w.response, w.reply = response, self.task.read(response.text)

    @staticmethod
    def _one(engine: VisionEngine, request: GenerationRequest) -> GenerationResponse | LlamadocError:
        try:
            return engine.generate(request)
        except LlamadocError as err:
            return err

    def _request(self, prompt: str, ready: PageReady | None) -> GenerationRequest:
        return GenerationRequest(
            prompt=prompt,
            images=(ready.page.image,) if ready is not None else (),
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
        result.checks.extend(reply.checks)
        if reply.cut:
            result.status = Status.PARTIAL
            result.checks.append(Check(name="repetition", status="fail", detail=f"cut: {reply.cut}"))
        if reply.error:
            result.status = Status.FAILED
            result.errors.append(reply.error)
        if response.finish_reason == "length":
            result.warnings.append(f"the answer reached --max-tokens ({self.options.max_tokens}) and may be cut short")
        if self.guard is not None:
            started = time.perf_counter()
            said = json.dumps(reply.fields, ensure_ascii=False) if reply.fields is not None else reply.answer or ""
            result.guard_out = self.guard.check_output(w.prompt, said)
            result.timings_ms["guard_out"] = round((time.perf_counter() - started) * 1000, 2)
            if self._held_back(result, [result.guard_out], "the answer"):
                result.answer = result.fields = None  # never printed, never written
                return None
        return reply

    def _done(self, doc: DocState, result: PageResult, reply: PageReply | None, ready: PageReady) -> None:
        doc.pages[result.index] = result
        if reply is not None:
            doc.replies[result.index] = reply
        doc.in_flight -= 1
        ready.page.image.close()  # drop the pixels as soon as the model is done with them
        self.on_page(result)

    def _held_back(self, result: PageResult, verdicts: list[Verdict], what: str) -> bool:
        """Apply the policy to a page's verdicts: True when the page stops here."""
        assert self.guard is not None
        problem = self._guard_problem(verdicts, what)
        if problem is None:
            return False
        unjudged, message = problem
        if not self.block:
            result.warnings.append(message if unjudged else f"{message}; flagged")
            return False
        # Unjudged is not safe: withhold, and say why.
        result.status = Status.FAILED if unjudged else Status.BLOCKED
        result.errors.append(message if unjudged else f"{message}; withheld")
        return True

    def _guard_problem(self, verdicts: Sequence[Verdict], what: str) -> tuple[bool, str] | None:
        """(unjudged, message) when the verdicts stop or flag content, else None."""
        assert self.guard is not None
        failure = self.guard.failed(verdicts)
        if failure:
            return True, failure
        if self.guard.unsafe(verdicts):
            codes = sorted({c for v in verdicts if v.safe is False for c in v.categories})
            return False, f"{what} was judged unsafe ({', '.join(codes) or 'above the threshold'})"
        return None

    def _follow_up(self, prompt: str) -> FollowUpAnswer:
        """A model call after the pages (ask: combining their answers), screened like a page's."""
        started = time.perf_counter()
        try:
            text = self.engine().generate(self._request(prompt, None)).text
        except LlamadocError as err:
            return FollowUpAnswer(text=None, problem=str(err))
        finally:
            self._follow_up_ms += (time.perf_counter() - started) * 1000
        if self.guard is None or not text.strip():
            return FollowUpAnswer(text=text)
        verdict = self.guard.check_output(self.task.prompt(1), text)
        problem = self._guard_problem([verdict], "the combined answer")
        if problem is not None and self.block:
            return FollowUpAnswer(text=None, verdict=verdict, problem=problem[1])
        return FollowUpAnswer(text=text, verdict=verdict, problem=problem[1] if problem else None)

    # -- documents -------------------------------------------------------------------

    def finish(self, state: DocState) -> DocumentResult:
        """The result of a document whose pages are all done (or that was never read)."""
        item = state.item
        assert not isinstance(item, Known)  # the pipeline's: a stored result or an earlier one
        doc = DocumentResult(
            source=item.source.label, task=self.task.name, sha256=item.sha256,
            options=dict(self.identity.options), guard_model=self.guard.name if self.guard else None,
        )
        if isinstance(item, Held):
            doc.status, doc.skipped_reason = Status.SKIPPED, HELD
            return doc
        doc.model = self.models.info()
        if isinstance(item, DocFailed):
            doc.errors = [item.error]
            doc.status = document_status(doc, opened=False)
            return doc
        doc.page_count = item.page_count
        skipped = {i: PageResult(index=i, status=Status.SKIPPED, skipped_reason=why)
                   for i, why in item.plan.skipped.items()}
        pages = skipped | state.pages
        doc.pages = [pages[i] for i in sorted(pages)]
        doc.warnings.extend(item.plan.notes)
        usable = {i: r for i, r in state.replies.items() if pages[i].status in (Status.OK, Status.PARTIAL)}
        self._follow_up_ms = 0.0
        self.task.combine(doc, usable, item.plan, self._follow_up)
        if self._follow_up_ms:
            doc.timings_ms["combine"] = round(self._follow_up_ms, 2)
        doc.model = self.models.info()  # a follow-up call may have been the first to load it
        doc.status = document_status(doc)
        if doc.status is Status.FAILED and not doc.errors:
            doc.errors = [f"page {p.index}: {e}" for p in doc.pages for e in p.errors][:5]
        doc.timings_ms["total"] = round((time.perf_counter() - state.started) * 1000, 2)
        return doc


def known_result(item: Known, finished: dict[str, DocumentResult]) -> DocumentResult:
    """A document whose result exists: from the store, or read earlier in this run (``finished``, by hash)."""
    if item.stored is not None:
        return replace(item.stored, source=item.source.label, cached=True)
    first = finished[item.sha256]
    return replace(first, source=item.source.label, duplicate_of=first.source)


def _ahead(batch: int) -> int:
    """Items prepared ahead of the model: enough to fill the next batch, few enough to bound memory."""
    return 2 * batch + 2


def _widen(items: queue.Queue[object], size: int) -> None:
    with items.mutex:
        items.maxsize = size
        items.not_full.notify_all()


def engine_needs(task: Task, options: RunOptions) -> EngineNeeds:
    """What the engine's context must hold for this run: a page of its pixel budget, the task's
    prompt (bytes bound the tokens of any byte-level tokenizer; a schema can be thousands of
    tokens) and an answer of its --max-tokens."""
    prompt = max(1024, len(task.prompt(2).encode("utf-8")) + 256)
    return EngineNeeds(prompt_tokens=prompt, max_tokens=options.max_tokens, max_pixels=options.raster.budget)


def recorded_options(task: Task, options: RunOptions, guard: Guard | None) -> dict[str, object]:
    """Every option that shapes an answer, as each result records it (and the store keys it)."""
    policy = guard.policy.recorded() if guard else {"guard": "off"}
    return task.options() | options.recorded() | policy


def document_status(doc: DocumentResult, opened: bool = True) -> Status:
    """The one place a document's status is decided, from its pages' statuses.

    ok: every page read answered; partial: some did; failed/blocked: none did; failed
    when it could not be opened; blocked (or failed) when the answer combined from its
    pages was withheld."""
    if not opened:
        return Status.FAILED
    statuses = {p.status for p in doc.pages if p.status is not Status.SKIPPED}
    if not statuses <= {Status.OK}:
        if statuses & {Status.OK, Status.PARTIAL}:  # some page gave a (possibly cut) answer
            return Status.PARTIAL
        return Status.FAILED if Status.FAILED in statuses else Status.BLOCKED
    if doc.guard_out is not None and doc.answer is None:
        return Status.BLOCKED if doc.guard_out.safe is False else Status.FAILED
    return Status.OK


def _new_page(ready: PageReady) -> PageResult:
    page = ready.page
    result = PageResult(
        index=page.index, width=page.image.width, height=page.image.height, dpi=page.dpi,
        text_layer_chars=len(page.text or ""), text_layer=page.text, guard_in=ready.guard_in,
    )
    result.timings_ms["raster"] = round(ready.raster_ms, 2)
    if ready.guard_in:
        result.timings_ms["guard_in"] = round(ready.guard_ms, 2)
    if page.words is not None:  # for the task's evidence; "ocr" when they had to be read off the image
        result.words, result.words_source = page.words, page.words.source
        result.timings_ms["ocr" if page.words.source == "ocr" else "words"] = round(page.words_ms, 2)
    return result


def skipped_page(item: PageSkipped) -> PageResult:
    if item.error:
        return PageResult(index=item.index, status=Status.FAILED, errors=[item.error])
    return PageResult(index=item.index, status=Status.SKIPPED, skipped_reason=item.reason)


def _record(result: PageResult, response: GenerationResponse) -> None:
    """Add a model call's tokens and time to the page (a re-ask adds to the first, and its token
    probabilities replace the first's: they belong to the answer kept)."""
    result.logprobs = response.logprobs
    for kind, value in (("prompt", response.prompt_tokens), ("completion", response.completion_tokens)):
        result.tokens[kind] = result.tokens.get(kind, 0) + value
    for name in ("model", *ENGINE_TIMINGS):
        if name in response.timings_ms:
            result.timings_ms[name] = round(result.timings_ms.get(name, 0.0) + response.timings_ms[name], 2)
