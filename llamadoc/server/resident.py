"""The models a server keeps loaded: this machine's models (models.local), shared by every
request, and unloaded after --keep-alive without a request, as Ollama does.

They resolve at start (a missing one stops `llamadoc serve` with exit 2), load on the first
request (or at start with --preload), and the guard screens every request. The document
routes run a Reader per job over the same models (``Batched``): its pipeline's pages join the
batcher's batches like any other request.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llamadoc import __version__, engines, registry
from llamadoc.config import DEFAULT_MAX_PIXELS, Settings, load_settings
from llamadoc.engines.base import VisionEngine
from llamadoc.guard import Guard, GuardPolicy
from llamadoc.models.base import EngineNeeds, Models, ModelSettings
from llamadoc.models.local import LocalModels
from llamadoc.results import ModelInfo
from llamadoc.server.batcher import BatchedEngine, Batcher
from llamadoc.server.options import ServeOptions


class Resident:
    def __init__(self, options: ServeOptions, notify: Callable[[str], None]) -> None:
        self.options = options
        self.models = LocalModels(ModelSettings(
            settings=load_settings(options.config), model=options.model, mmproj=options.mmproj,
            gpu_layers=options.gpu_layers, ctx=options.ctx, threads=options.threads, verbose=options.verbose,
            guard=options.guard), notify)
        self.models.prepare()  # resolve (and pull) now: a missing model stops the server before it listens
        # Every request shares one engine, sized for the longest answer a request may ask.
        self.needs = EngineNeeds(max_tokens=options.max_tokens)
        self.batcher = Batcher(self.engine, options.max_queue)
        self.keep_alive = options.keep_alive  # a request may change it, as Ollama's keep_alive does
        self._lock = threading.Lock()
        self._in_flight = 0
        self._last_used = time.monotonic()

    # -- names ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """What clients see the model called: its registry name or address, or for a model given
        as a path the file's name (a path on this machine is not the clients' business)."""
        r = self.models.resolve()
        return Path(r.name).name if registry.looks_like_path(r.name) else r.name

    def names(self) -> list[str]:
        """What a request may call the model: its name (and Ollama's name:latest when it has no
        tag), the path or address the server was started with, and the file."""
        r = self.models.resolve()
        names = [self.name, r.name, *([f"{r.name}:latest"] if ":" not in r.name else []), str(r.model_path)]
        if self.options.model:
            names.append(self.options.model)
        return list(dict.fromkeys(names))

    def serves(self, name: str) -> bool:
        return name in self.names()

    # -- loading ---------------------------------------------------------------------------

    def engine(self) -> VisionEngine:
        """The vision engine, loaded on first need (again after an unload)."""
        return self.models.vision_engine(self.needs)

    @property
    def max_pixels(self) -> int:
        """The pixel budget an image is fitted to: the model's own (models.toml)."""
        return self.models.resolve().max_pixels or DEFAULT_MAX_PIXELS

    @property
    def loaded_at(self) -> float | None:
        """Wall-clock time the vision engine loaded; None while it is not loaded."""
        return self.models.loaded_at

    @property
    def load_ms(self) -> float:
        """What the last load took."""
        return self.models.load_ms

    @property
    def guard(self) -> Guard | None:
        return self.models.guard()

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
        self.models.close()

    # -- what clients are told -----------------------------------------------------------

    def engine_info(self) -> dict[str, Any]:
        """/v1/engine/info: everything a remote Reader records of the models."""
        r, guard, loaded = self.models.resolve(), self.guard, self.models.loaded
        return {
            "version": __version__,
            "model": {"name": r.name, "names": self.names(), "path": str(r.model_path), "engine": r.engine,
                      "sha256": self.models.sha256(), "quantisation": r.spec.quantisation if r.spec else None,
                      "mmproj": str(r.mmproj_path) if r.mmproj_path else None, "max_pixels": r.max_pixels},
            "max_batch": (loaded or engines.vision_engine_class(r.engine)).max_batch,
            "guard": None if guard is None else {
                "name": guard.name, "identity": guard.identity, "mode": guard.policy.mode,
                "names": list(dict.fromkeys([guard.name, self.options.guard.model or guard.name]))},
        }

    def summary(self) -> registry.GgufSummary:
        return registry.gguf_summary(self.models.resolve().model_path)


class Batched:
    """The server's models as a Reader's (llamadoc.models.base.Models), for the document routes:
    the same models, with the engine's requests going through the batcher like every other.
    With ``cancelled``, a job's pages stop reaching the engine once it is set (its client went away)."""

    def __init__(self, models: Models, batcher: Batcher, needs: EngineNeeds,
                 cancelled: threading.Event | None = None) -> None:
        self._models, self._batcher, self._needs, self._cancelled = models, batcher, needs, cancelled

    @property
    def settings(self) -> Settings:
        return self._models.settings

    @property
    def policy(self) -> GuardPolicy:
        return self._models.policy

    def resolve(self) -> registry.ResolvedModel:
        return self._models.resolve()

    def sha256(self) -> str:
        return self._models.sha256()

    def vision_engine(self, needs: EngineNeeds) -> VisionEngine:
        # The server's engine is loaded for every request (self._needs), whatever one run asks.
        return BatchedEngine(self._batcher, self._models.vision_engine(self._needs), self._cancelled)

    def guard(self) -> Guard | None:
        return self._models.guard()

    def info(self) -> ModelInfo:
        return self._models.info()

    def close(self) -> None:
        """The server unloads its models on its own schedule (keep-alive), not when a route's run ends."""
