"""The models a server keeps loaded: one Reader's engines, shared by every request, and unloaded
after --keep-alive without a request, as Ollama does.

The Reader resolves the models at start (a missing one stops `llamadoc serve` with exit 2),
loads them on the first request (or at start with --preload), and its guard screens every
request. The document routes run a second Reader over the same engines (``Shared``): its
pipeline's pages join the batcher's batches like any other request.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llamadoc import __version__, registry
from llamadoc.engines.base import LoadOptions, VisionEngine
from llamadoc.guard import Guard, GuardPolicy
from llamadoc.reader import Reader
from llamadoc.server.batcher import BatchedEngine, Batcher
from llamadoc.server.options import ServeOptions


class Resident:
    def __init__(self, options: ServeOptions, notify: Callable[[str], None]) -> None:
        self.options = options
        self.reader = Reader(options.model, mmproj=options.mmproj, gpu_layers=options.gpu_layers, ctx=options.ctx,
                             max_tokens=options.max_tokens, threads=options.threads, verbose=options.verbose,
                             config=options.config, notify=notify, guard=options.guard)
        self.reader.prepare()  # resolve (and pull) now: a missing model stops the server before it listens
        self.batcher = Batcher(self.engine, options.max_queue)
        self.documents = Reader(settings=self.reader.settings, max_tokens=options.max_tokens, guard=options.guard,
                                models=Shared(self))
        self.keep_alive = options.keep_alive  # a request may change it, as Ollama's keep_alive does
        self._lock = threading.Lock()
        self._in_flight = 0
        self._last_used = time.monotonic()
        self.loaded_at: float | None = None  # wall-clock time the vision engine loaded
        self.load_ms = 0.0  # what the last load took

    # -- names ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """What clients see the model called: its registry name or address, or for a model given
        as a path the file's name (a path on this machine is not the clients' business)."""
        r = self.reader.resolved
        return Path(r.name).name if registry.looks_like_path(r.name) else r.name

    def names(self) -> list[str]:
        """What a request may call the model: its name (and Ollama's name:latest when it has no
        tag), the path or address the server was started with, and the file."""
        r = self.reader.resolved
        names = [self.name, r.name, *([f"{r.name}:latest"] if ":" not in r.name else []), str(r.model_path)]
        if self.options.model:
            names.append(self.options.model)
        return list(dict.fromkeys(names))

    def serves(self, name: str) -> bool:
        return name in self.names()

    # -- loading ---------------------------------------------------------------------------

    def engine(self) -> VisionEngine:
        """The vision engine, loaded on first need (again after an unload)."""
        with self._lock:
            loaded = self.loaded_at is not None
        started = time.perf_counter()
        engine = self.reader.vision_engine()
        if not loaded:
            with self._lock:
                if self.loaded_at is None:
                    self.loaded_at, self.load_ms = time.time(), (time.perf_counter() - started) * 1000
        return engine

    @property
    def guard(self) -> Guard | None:
        return self.reader.guard

    @contextlib.contextmanager
    def use(self) -> Iterator[None]:
        """Around every request: the models stay while one runs, and keep_alive counts from its end."""
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                self._last_used = time.monotonic()

    def set_keep_alive(self, seconds: float | None) -> None:
        """A request's keep_alive: how long the models stay after it (None: for good)."""
        with self._lock:
            self.keep_alive = seconds

    def expires_at(self) -> float | None:
        """Wall-clock time the models unload if nothing comes; None: never (or not loaded)."""
        with self._lock:
            if self.loaded_at is None or self.keep_alive is None:
                return None
            return time.time() + max(0.0, self._last_used + self.keep_alive - time.monotonic())

    def unload_if_idle(self) -> bool:
        """Unload when no request has come for keep_alive seconds; True when it did. A request that
        starts meanwhile waits in use() until the models are gone, then loads them again."""
        with self._lock:
            expired = (self.loaded_at is not None and self.keep_alive is not None and self._in_flight == 0
                       and time.monotonic() - self._last_used >= self.keep_alive)
            if not expired or not self.batcher.idle:
                return False
            self._unload()
            return True

    def close(self) -> None:
        with self._lock:
            self._unload()

    def _unload(self) -> None:
        self.batcher.release()
        self.reader.close()
        self.loaded_at = None

    # -- what clients are told -----------------------------------------------------------

    def engine_info(self) -> dict[str, Any]:
        """/v1/engine/info: everything a remote Reader records of the models."""
        r, guard = self.reader.resolved, self.guard
        return {
            "version": __version__,
            "model": {"name": r.name, "names": self.names(), "path": str(r.model_path), "engine": r.engine,
                      "sha256": self.reader.model_sha256, "quantisation": r.spec.quantisation if r.spec else None,
                      "mmproj": str(r.mmproj_path) if r.mmproj_path else None, "max_pixels": r.max_pixels},
            "max_batch": self.reader.engine.max_batch if self.loaded_at is not None else _batch(r.engine),
            "guard": None if guard is None else {
                "name": guard.name, "identity": guard.identity, "mode": guard.policy.mode,
                "names": list(dict.fromkeys([guard.name, self.options.guard.model or guard.name]))},
        }

    def summary(self) -> registry.GgufSummary:
        return registry.gguf_summary(self.reader.resolved.model_path)


def _batch(engine: str) -> int:
    from llamadoc import engines

    return engines.BATCH.get(engine, 1)


class Shared:
    """The server's models as a Reader's (llamadoc.reader.Models), for the document routes. With
    ``cancelled``, a job's pages stop reaching the engine once it is set (its client went away)."""

    def __init__(self, resident: Resident, cancelled: threading.Event | None = None) -> None:
        self._resident, self._cancelled = resident, cancelled

    def resolve(self) -> registry.ResolvedModel:
        return self._resident.reader.resolved

    def sha256(self) -> str:
        return self._resident.reader.model_sha256

    def vision_engine(self, options: LoadOptions, max_pixels: int) -> VisionEngine:
        return BatchedEngine(self._resident.batcher, self._resident.engine(), self._cancelled)

    def guard(self, policy: GuardPolicy) -> Guard:
        guard = self._resident.guard
        assert guard is not None  # the Reader asks only under a policy that screens
        return guard
