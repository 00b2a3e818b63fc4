"""The public Python API: load a model once, then ask, describe or extract over documents.

    import llamadoc
    with llamadoc.Reader() as reader:
        [chart] = reader.ask("chart.png", "Which bar is tallest?")
        print(chart.answer)

The CLI is a thin layer over this class.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from llamadoc import registry
from llamadoc.config import Settings, load_settings
from llamadoc.engines import load_guard_engine, load_vision_engine
from llamadoc.engines.base import LoadOptions, Sampling, VisionEngine
from llamadoc.errors import GuardError, LlamadocError
from llamadoc.guard import Guard, GuardPolicy
from llamadoc.pipeline import Pipeline, RunOptions
from llamadoc.raster import DEFAULT_MAX_PIXELS, RasterOptions
from llamadoc.results import SCHEMA_VERSION, DocumentResult, ModelInfo, PageResult
from llamadoc.sources import Source, collect
from llamadoc.store import Store, key
from llamadoc.tasks import Ask, Describe, Extract, Task, load_schema

Documents = str | Path | bytes | Sequence[str | Path]


class Reader:
    """A vision model, loaded on first use and reused for every page."""

    def __init__(
        self,
        model: str | None = None,
        *,
        mmproj: str | None = None,
        gpu_layers: int = -1,
        ctx: int = 0,
        max_tokens: int = 1024,
        threads: int | None = None,
        verbose: bool = False,
        config: Path | None = None,
        settings: Settings | None = None,
        pull: bool = True,
        notify: Callable[[str], None] = lambda _m: None,
        guard: GuardPolicy | None = None,
    ) -> None:
        self.settings = settings or load_settings(config)
        self.guard_policy = guard or GuardPolicy()
        self._pull = pull
        self._notify = notify
        self._guard: Guard | None = None
        self.resolved = registry.resolve(self.settings, model, mmproj, pull_missing=pull, notify=notify)
        self.load_options = LoadOptions(
            model_path=str(self.resolved.model_path),
            mmproj_path=str(self.resolved.mmproj_path) if self.resolved.mmproj_path else None,
            gpu_layers=gpu_layers,
            n_ctx=ctx,
            max_tokens=max_tokens,
            threads=threads,
            verbose=verbose,
        )
        self.max_tokens = max_tokens
        self.max_pixels = self.resolved.max_pixels or DEFAULT_MAX_PIXELS
        self._engine: VisionEngine | None = None
        self._model_info: ModelInfo | None = None

    @property
    def engine(self) -> VisionEngine:
        if self._engine is None:
            self._engine = load_vision_engine(self.resolved.engine, self.load_options, self.max_pixels)
        return self._engine

    @property
    def guard(self) -> Guard | None:
        """The guard under the policy; None when the policy is off."""
        if self.guard_policy.mode == "off":
            return None
        if self._guard is None:
            self._guard = self._load_guard()
        return self._guard

    def _load_guard(self) -> Guard:
        name = self.guard_policy.model or self.settings.default_guard
        try:
            resolved = registry.resolve_guard(self.settings, name, pull_missing=self._pull, notify=self._notify)
            engine = load_guard_engine(
                resolved.engine,
                LoadOptions(model_path=str(resolved.model_path), gpu_layers=self.load_options.gpu_layers,
                            verbose=self.load_options.verbose),
                resolved.name,
            )
        except LlamadocError as err:
            raise GuardError(
                f"the guard cannot run: {err.message}",
                hint=f"run `llamadoc models pull {name}`, pass --guard-model PATH, or --guard off to go unscreened",
            ) from None
        stat = resolved.model_path.stat()
        return Guard(
            engine=engine,
            policy=self.guard_policy,
            store=Store(self.settings.cache_dir / "guard"),
            identity=f"{resolved.model_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}",
        )

    @property
    def model_info(self) -> ModelInfo:
        if self._model_info is None:
            engine = self.engine
            spec = self.resolved.spec
            self._model_info = ModelInfo(
                name=self.resolved.name,
                path=str(self.resolved.model_path),
                engine=self.resolved.engine,
                sha256=registry.file_sha256(self.resolved.model_path, self.settings.cache_dir),
                quantisation=spec.quantisation if spec else None,
                mmproj=str(self.resolved.mmproj_path) if self.resolved.mmproj_path else None,
                gpu_layers=engine.gpu_layers,
                device=engine.device,
            )
        return self._model_info

    def run_options(
        self,
        *,
        pages: str | None = None,
        dpi: float | None = None,
        max_pixels: int | None = None,
        password: str | None = None,
        max_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        all_pages: bool = False,
        embedded: str = "prefer",
    ) -> RunOptions:
        return RunOptions(
            raster=RasterOptions(dpi=dpi, max_pixels=max_pixels or self.max_pixels, pages=pages, password=password),
            max_tokens=max_tokens or self.max_tokens,
            sampling=Sampling(temperature=temperature, top_p=top_p, seed=seed),
            all_pages=all_pages,
            embedded=embedded,
        )

    def run(
        self,
        task: Task,
        sources: Sequence[Source],
        options: RunOptions,
        *,
        force: bool = False,
        on_page: Callable[[PageResult], None] = lambda _p: None,
    ) -> Iterator[DocumentResult]:
        """Results as each document finishes (the CLI streams them). Documents an
        earlier run finished with the same model, task and options come from the
        result store, unless ``force``."""
        if self._engine is None:
            # Size the context for this task's prompt: a schema can be thousands of
            # tokens. Bytes bound the tokens of any byte-level tokenizer.
            prompt_bytes = len(task.prompt(2).encode("utf-8")) + 256
            self.load_options = replace(self.load_options, prompt_tokens=max(1024, prompt_bytes))
        guard = self.guard  # loaded first: a missing guard stops the run before any page
        model = self.model_info
        guard_part = [guard.identity, json.dumps(guard.policy.recorded(), sort_keys=True)] if guard else ["off"]
        store_key = key(
            "result", str(SCHEMA_VERSION), model.sha256 or model.path, model.mmproj or "", task.name,
            json.dumps(task.options() | options.recorded(), sort_keys=True), *guard_part,
        )
        pipeline = Pipeline(
            self.engine, task, options, model, guard,
            store=Store(self.settings.cache_dir / "results"), store_key=store_key, force=force, on_page=on_page,
        )
        yield from pipeline.run(sources)

    def ask(self, documents: Documents, question: str, **options: Any) -> list[DocumentResult]:
        return self._run_all(Ask(question), documents, options)

    def describe(self, documents: Documents, **options: Any) -> list[DocumentResult]:
        return self._run_all(Describe(), documents, options)

    def extract(self, documents: Documents, schema: str | Path | dict[str, Any], **options: Any) -> list[DocumentResult]:
        if isinstance(schema, dict):
            task = Extract(schema=schema, schema_path="<dict>")
        else:
            task = Extract(schema=load_schema(str(schema)), schema_path=str(schema))
        return self._run_all(task, documents, options)

    def _run_all(self, task: Task, documents: Documents, options: dict[str, Any]) -> list[DocumentResult]:
        return list(self.run(task, as_sources(documents), self.run_options(**options)))

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        if self._guard is not None:
            self._guard.close()
            self._guard = None

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def as_sources(documents: Documents, stdin: BinaryIO | None = None) -> list[Source]:
    if isinstance(documents, bytes):
        return [Source(label="<bytes>", data=documents)]
    if isinstance(documents, str | Path):
        return collect([str(documents)], stdin=stdin)
    return collect([str(d) for d in documents], stdin=stdin)
