"""One thread drives the vision engine for every request: continuous batching where the engine can
(mllama: a request joins the decoding batch at its next step), one request at a time elsewhere.

Requests wait in a bounded queue; a full one is refused at once (the routes answer 503 with
Retry-After) rather than piling up work no client may still want. A request whose client went
away is dropped from the queue, or from the batch at the next step, freeing its row.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from llamadoc.engines.base import GenerationRequest, GenerationResponse, VisionEngine
from llamadoc.errors import EngineError, LlamadocError
from llamadoc.models.remote import ConcurrentBatch

if TYPE_CHECKING:
    from llamadoc.engines.mllama.scheduler import Scheduler


class Busy(Exception):
    """The queue is full: try again later."""


class Cancelled(LlamadocError):
    """The request's client went away before its answer was ready."""


@runtime_checkable
class Stepwise(Protocol):
    """An engine that decodes step by step, so requests can join a batch under way (MllamaEngine)."""

    def scheduler(self) -> Scheduler: ...

    def item(self, request: GenerationRequest) -> Any: ...

    def response(self, completion: Any, elapsed_ms: float) -> GenerationResponse: ...


@dataclass
class Ticket:
    """One request: its text reaches ``on_text`` as it is decoded, then ``on_done`` gets the answer
    or the error (both called on the engine's thread)."""

    request: GenerationRequest
    on_text: Callable[[str], None] = lambda _t: None
    on_done: Callable[[GenerationResponse | LlamadocError], None] = lambda _r: None
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued: float = field(default_factory=time.perf_counter)


class Batcher:
    """The engine's thread and its queue. ``load`` gives the engine (loading it on first need)."""

    def __init__(self, load: Callable[[], VisionEngine], max_queue: int) -> None:
        self._load, self.max_queue = load, max_queue
        self._waiting: deque[Ticket] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._active = 0  # tickets the engine is working on
        self.scheduler: Scheduler | None = None  # the current one (continuous batching), for tests and /api/ps

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._waiting and not self._active

    def submit(self, ticket: Ticket) -> None:
        with self._cond:
            if len(self._waiting) >= self.max_queue:
                raise Busy(f"{len(self._waiting)} requests are waiting already")
            self._waiting.append(ticket)
            if self._thread is None:
                self._stop = False
                self._thread = threading.Thread(target=self._run, name="llamadoc-engine", daemon=True)
                self._thread.start()
            self._cond.notify()

    def release(self) -> None:
        """Stop the engine's thread (when idle, before the engine is unloaded); the next request
        starts it again."""
        with self._cond:
            thread, self._stop = self._thread, True
            self._cond.notify()
        if thread is not None:
            thread.join()
        with self._cond:
            self._thread, self.scheduler = None, None

    # -- the engine's thread -------------------------------------------------------------

    def _next(self, free: int, busy: bool) -> list[Ticket]:
        """Up to ``free`` waiting tickets; waits for one while the engine has nothing to do."""
        with self._cond:
            while not self._waiting and not busy and not self._stop:
                self._cond.wait()
            taken: list[Ticket] = []
            while self._waiting and len(taken) < free:
                t = self._waiting.popleft()
                if t.cancelled.is_set():
                    t.on_done(Cancelled("the client went away"))
                else:
                    taken.append(t)
            self._active += len(taken)
            return taken

    def _done(self, ticket: Ticket, outcome: GenerationResponse | LlamadocError) -> None:
        with self._cond:
            self._active -= 1
        ticket.on_done(outcome)

    def _run(self) -> None:
        while not self._stop:
            try:
                engine = self._load()
            except LlamadocError as err:  # the model cannot load: every waiting request hears why
                for t in self._next(len(self._waiting) or 1, False):
                    self._done(t, err)
                continue
            if isinstance(engine, Stepwise):
                self._continuous(engine)
            else:
                self._in_turn(engine)

    def _in_turn(self, engine: VisionEngine) -> None:
        while not self._stop:
            for t in self._next(1, False):
                started = time.perf_counter()
                try:
                    response = engine.generate(t.request)
                except LlamadocError as err:
                    self._done(t, err)
                    continue
                except Exception as err:  # a bug: logged, and the request answered, not left hanging
                    self._done(t, _bug(err))
                    continue
                response.timings_ms.setdefault("model", round((time.perf_counter() - started) * 1000, 2))
                t.on_text(response.text)
                self._done(t, response)

    def _continuous(self, engine: Stepwise) -> None:
        scheduler = self.scheduler = engine.scheduler()
        running: dict[int, tuple[Ticket, Any]] = {}  # by row
        while not self._stop or running:
            for t in self._next(scheduler.free, scheduler.busy) if not self._stop else []:
                try:
                    r = scheduler.add(engine.item(t.request), t.on_text)
                except LlamadocError as err:
                    self._done(t, err)
                    continue
                except Exception as err:
                    self._done(t, _bug(err))
                    continue
                if r.finish is not None:
                    self._finish(engine, scheduler, t, r)
                else:
                    running[r.seq.row] = (t, r)
            for row, (t, r) in list(running.items()):
                if t.cancelled.is_set():
                    scheduler.cancel(r)
                    del running[row]
                    self._done(t, Cancelled("the client went away"))
            try:
                ended = scheduler.step()
            except Exception as err:  # the step failed for every row: each request hears it
                failure = err if isinstance(err, LlamadocError) else _bug(err)
                for t, r in running.values():
                    scheduler.cancel(r)
                    self._done(t, failure)
                running.clear()
                continue
            for r in ended:
                t, _ = running.pop(r.seq.row)
                self._finish(engine, scheduler, t, r)

    def _finish(self, engine: Stepwise, scheduler: Scheduler, t: Ticket, r: Any) -> None:
        elapsed = (time.perf_counter() - r.started) * 1000
        self._done(t, engine.response(scheduler.completion(r), elapsed))


def _bug(err: Exception) -> EngineError:
    traceback.print_exception(err, file=sys.stderr)
    return EngineError(f"internal error: {type(err).__name__}: {err}")


class BatchedEngine(ConcurrentBatch):
    """The batcher as a VisionEngine, for pipelines run inside the server (the document routes):
    their pages join the same batches as every other request."""

    def __init__(self, batcher: Batcher, engine: VisionEngine, cancelled: threading.Event | None = None) -> None:
        super().__init__()
        self._batcher = batcher
        self._cancelled = cancelled or threading.Event()  # the job's: set, its pages leave the queue and batch
        self.name, self.max_images, self.max_batch = engine.name, engine.max_images, engine.max_batch
        self.supports_schema, self.gpu_layers, self.device = engine.supports_schema, engine.gpu_layers, engine.device

    def _generate(self, request: GenerationRequest) -> GenerationResponse:
        done = threading.Event()
        outcome: list[GenerationResponse | LlamadocError] = []

        def finished(result: GenerationResponse | LlamadocError) -> None:
            outcome.append(result)
            done.set()

        ticket = Ticket(request, on_done=finished, cancelled=self._cancelled)
        while True:
            if self._cancelled.is_set():
                raise Cancelled("the client went away")
            try:
                self._batcher.submit(ticket)
                break
            except Busy:
                time.sleep(0.5)  # a document's pages wait their turn rather than fail
        while not done.wait(0.5):
            if self._cancelled.is_set():  # the engine drops the ticket when it reaches it
                raise Cancelled("the client went away")
        if isinstance(outcome[0], LlamadocError):
            raise outcome[0]
        return outcome[0]

    def close(self) -> None:
        pass  # the server's engine outlives the pipelines that use it
