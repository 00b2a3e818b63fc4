"""This machine's models: resolved through the registry (pulled when missing and allowed), loaded
on the engine their file calls for when a page first needs them, held until closed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import astuple, replace

from llamadoc import engines, registry
from llamadoc.config import DEFAULT_MAX_PIXELS, Settings
from llamadoc.engines.base import GuardEngine, LoadOptions, VisionEngine
from llamadoc.errors import DownloadError, GuardError, LlamadocError
from llamadoc.guard import Guard, GuardPolicy
from llamadoc.models.base import EngineNeeds, ModelSettings, describe
from llamadoc.results import ModelInfo
from llamadoc.store import Store


class LocalModels:
    """The Models of a run on this machine (llamadoc.models.base.Models)."""

    def __init__(self, spec: ModelSettings, notify: Callable[[str], None] = lambda _m: None) -> None:
        self.spec = spec
        self._notify = notify
        self._lock = threading.RLock()
        self._resolved: registry.ResolvedModel | None = None
        self._sha256: str | None = None
        self._guard: Guard | None = None
        self._engine: VisionEngine | None = None
        self._sized: EngineNeeds | None = None  # what the loaded engine's context holds
        self.loaded_at: float | None = None  # wall-clock time the vision engine loaded
        self.load_ms = 0.0  # what that load took

    @property
    def settings(self) -> Settings:
        return self.spec.settings

    @property
    def policy(self) -> GuardPolicy:
        return self.spec.guard

    def resolve(self) -> registry.ResolvedModel:
        with self._lock:
            if self._resolved is None:
                self._resolved = registry.resolve(self.settings, self.spec.model, self.spec.mmproj,
                                                  pull_missing=self.spec.pull, notify=self._notify)
            return self._resolved

    def sha256(self) -> str:
        with self._lock:
            if self._sha256 is None:
                self._sha256 = registry.file_sha256(self.resolve().model_path, self.settings.cache_dir)
            return self._sha256

    def prepare(self) -> None:
        """Resolve the models now (a missing one fails before any document is read); load nothing."""
        self.resolve()
        self.guard()

    @property
    def loaded(self) -> VisionEngine | None:
        """The vision engine if it has loaded, without loading it."""
        return self._engine

    def vision_engine(self, needs: EngineNeeds) -> VisionEngine:
        """The engine, loaded on first need and held for the runs after it. Its context is sized
        for the run that loaded it; a later run that needs more (a larger --max-tokens, a larger
        page, a longer schema) loads it again, sized for both, rather than being cut short. The
        runs of one Reader follow each other, and the server asks with the same needs each time."""
        with self._lock:
            r = self.resolve()
            wanted = replace(needs, max_pixels=needs.max_pixels or r.max_pixels or DEFAULT_MAX_PIXELS)
            if self._engine is not None and self._sized is not None and not _covers(self._sized, wanted,
                                                                                   fixed_ctx=bool(self.spec.ctx)):
                wanted = EngineNeeds(*(max(a, b) for a, b in zip(astuple(self._sized), astuple(wanted), strict=True)))
                self._engine.close()
                self._engine = None
            if self._engine is None:
                options = LoadOptions(
                    model_path=str(r.model_path), mmproj_path=str(r.mmproj_path) if r.mmproj_path else None,
                    gpu_layers=self.spec.gpu_layers, n_ctx=self.spec.ctx, max_tokens=wanted.max_tokens,
                    prompt_tokens=wanted.prompt_tokens, threads=self.spec.threads, verbose=self.spec.verbose)
                started = time.perf_counter()
                assert wanted.max_pixels is not None
                self._engine = engines.load_vision_engine(r.engine, options, wanted.max_pixels)
                self._sized = wanted
                self.loaded_at, self.load_ms = time.time(), (time.perf_counter() - started) * 1000
            return self._engine

    def reload_vision(self, ctx: int) -> None:
        """Unload the vision engine so that it loads again with a context of ``ctx`` tokens (a
        server request's num_ctx, as Ollama's); the guard stays loaded."""
        with self._lock:
            self.spec = replace(self.spec, ctx=ctx)
            if self._engine is not None:
                self._engine.close()
                self._engine = None
                self.loaded_at = None

    def guard(self) -> Guard | None:
        if self.policy.mode == "off":
            return None
        with self._lock:
            if self._guard is None:
                self._guard = self._resolve_guard()
            return self._guard

    def _resolve_guard(self) -> Guard:
        name = self.policy.model or self.settings.default_guard
        try:
            resolved = registry.resolve_guard(self.settings, name, pull_missing=self.spec.pull, notify=self._notify)
        except DownloadError:
            raise  # a download that failed may work on a retry (exit 1), as for the vision model
        except LlamadocError as err:
            unscreened = "or --guard off to go unscreened"
            raise GuardError(
                f"the guard cannot run: {err.message}",
                hint=f"{err.hint}; {unscreened}" if err.hint
                else f"run `llamadoc models pull {name}`, pass --guard-model PATH, {unscreened}",
            ) from None
        options = LoadOptions(model_path=str(resolved.model_path), gpu_layers=self.spec.gpu_layers,
                              verbose=self.spec.verbose)

        def load() -> GuardEngine:
            try:
                return engines.load_guard_engine(resolved.engine, options, resolved.name)
            except LlamadocError as err:
                raise GuardError(f"the guard cannot run: {err.message}",
                                 hint="pass another --guard-model, or --guard off to go unscreened") from None

        stat = resolved.model_path.stat()
        return Guard(
            load=load, policy=self.policy, name=resolved.name,
            store=Store(self.settings.cache_dir / "guard"),
            identity=f"{resolved.model_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}",
        )

    def info(self) -> ModelInfo:
        return describe(self.resolve(), self.sha256(), self._engine)

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None
                self.loaded_at = None
            if self._guard is not None:
                self._guard.close()


def _covers(sized: EngineNeeds, wanted: EngineNeeds, fixed_ctx: bool) -> bool:
    """An engine loaded for ``sized`` holds what ``wanted`` asks (with --ctx the context is the
    user's, whatever the tokens: only the page size is left to compare)."""
    tokens = fixed_ctx or (sized.max_tokens >= wanted.max_tokens and sized.prompt_tokens >= wanted.prompt_tokens)
    return tokens and (sized.max_pixels or 0) >= (wanted.max_pixels or 0)
