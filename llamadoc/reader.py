"""The public Python API: the library core every face (CLI, server, Ray) calls.

    import llamadoc
    with llamadoc.Reader() as reader:
        [chart] = reader.ask("chart.png", "Which bar is tallest?")
        print(chart.answer)
        report = reader.run_batch(Extract(schema), ["invoices/"], output=OutputSpec(Path("out")))
        raise SystemExit(report.exit_code)

A Reader resolves its models when a batch starts (a missing model fails before any
document is read) and loads them when a page first needs them: a batch whose documents
all come from the store loads none.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Protocol

from llamadoc import engines, registry
from llamadoc.batch.options import RunOptions
from llamadoc.batch.pipeline import Pipeline, run_options
from llamadoc.config import Settings, load_settings
from llamadoc.engines.base import LoadOptions, Sampling, VisionEngine
from llamadoc.errors import DownloadError, GuardError, LlamadocError, UsageError
from llamadoc.guard import Guard, GuardPolicy
from llamadoc.inputs.raster import RasterOptions
from llamadoc.inputs.sources import Shard, Source, collect, stdin_limit, unpack
from llamadoc.outputs.render import EXTENSIONS
from llamadoc.outputs.report import DEFAULT_FAIL_ON, Report
from llamadoc.outputs.writer import Claims, OutputSpec, WriteFailed, Writer, output_names
from llamadoc.results import DocumentResult, ModelInfo, PageResult, Status
from llamadoc.store import RunIdentity, Store
from llamadoc.tasks import Ask, Describe, Extract, Task, load_schema

Documents = str | Path | bytes | Sequence[str | Path]


@dataclass(frozen=True)
class Selection:
    """Which of the documents found a batch reads: --include/--exclude globs and a --shard."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    shard: Shard | None = None
    include_body: bool = False  # an e-mail's own text is a document too, beside its attachments


@dataclass
class Events:
    """What a face hears while a batch runs (all optional): progress and messages."""

    on_start: Callable[[int], None] = lambda _documents: None
    on_page: Callable[[PageResult], None] = lambda _page: None
    # A finished document, the file written for it (if any), and its problems as lines.
    on_document: Callable[[DocumentResult, Path | None, list[str]], None] = lambda _d, _p, _l: None
    notify: Callable[[str], None] = lambda _message: None


class Runner(Protocol):
    """What reads a batch's documents for run_batch: Reader.run on this machine, or another
    face's driver (llamadoc.ray) that runs the same stages elsewhere."""

    def __call__(self, task: Task, sources: Sequence[Source], options: RunOptions | None, *, force: bool,
                 store: Store, claim: Callable[[str], bool],
                 on_page: Callable[[PageResult], None]) -> Iterator[DocumentResult]: ...


class Models(Protocol):
    """Where a Reader's models come from when not from this machine's registry (the default):
    a running `llamadoc serve` (llamadoc.models.remote.ServerModels), or a server's own shared engines."""

    def resolve(self) -> registry.ResolvedModel: ...

    def sha256(self) -> str: ...

    def vision_engine(self, options: LoadOptions, max_pixels: int) -> VisionEngine: ...

    def guard(self, policy: GuardPolicy) -> Guard: ...


class Reader:
    """The models of a run (resolved when a batch starts, loaded on first need) and the batches run with them."""

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
        models: Models | None = None,
    ) -> None:
        if threads is not None and threads < 1:
            raise UsageError("--threads must be at least 1")
        if gpu_layers < -1:
            raise UsageError("--gpu-layers must be -1 (all) or a number of layers")
        if ctx < 0:
            raise UsageError("--ctx must be 0 (sized from the page) or a number of tokens")
        self.settings = settings or load_settings(config)
        self.guard_policy = guard or GuardPolicy()
        self.max_tokens = max_tokens
        self._model, self._mmproj, self._pull, self._notify = model, mmproj, pull, notify
        # What makes an equal Reader in another process (a Ray worker): all but the callback.
        self.args: dict[str, Any] = dict(model=model, mmproj=mmproj, gpu_layers=gpu_layers, ctx=ctx,
                                         max_tokens=max_tokens, threads=threads, verbose=verbose,
                                         settings=self.settings, pull=pull, guard=self.guard_policy)
        self._models = models
        # How to load: the model's paths are filled in once it is resolved.
        self._load = LoadOptions(model_path="", gpu_layers=gpu_layers, n_ctx=ctx, max_tokens=max_tokens,
                                 threads=threads, verbose=verbose)
        self._resolved: registry.ResolvedModel | None = None
        self._guard: Guard | None = None
        self._engine: VisionEngine | None = None
        self._lock = threading.RLock()
        self._sha256: str | None = None

    # -- models ----------------------------------------------------------------------

    @property
    def resolved(self) -> registry.ResolvedModel:
        """The vision model's files, resolved (and pulled, if missing and allowed) on first need."""
        with self._lock:
            if self._resolved is None and self._models is not None:
                self._resolved = self._models.resolve()
            if self._resolved is None:
                self._resolved = registry.resolve(self.settings, self._model, self._mmproj,
                                                  pull_missing=self._pull, notify=self._notify)
            return self._resolved

    @property
    def max_pixels(self) -> int | None:
        """The raster budget that suits the model, from models.toml."""
        return self.resolved.max_pixels

    @property
    def load_options(self) -> LoadOptions:
        r = self.resolved
        return replace(self._load, model_path=str(r.model_path),
                       mmproj_path=str(r.mmproj_path) if r.mmproj_path else None)

    def vision_engine(self) -> VisionEngine:
        """The vision engine, loaded on the first call."""
        with self._lock:
            if self._engine is None:
                load = self._models.vision_engine if self._models is not None else partial(
                    engines.load_vision_engine, self.resolved.engine)
                self._engine = load(self.load_options, self.max_pixels or RasterOptions().budget)
            return self._engine

    @property
    def engine(self) -> VisionEngine:
        return self.vision_engine()

    @property
    def guard(self) -> Guard | None:
        """The guard under the policy (None when it is off); resolved on first need, loaded on first use."""
        if self.guard_policy.mode == "off":
            return None
        with self._lock:
            if self._guard is None:
                self._guard = self._models.guard(self.guard_policy) if self._models else self._resolve_guard()
            return self._guard

    def _resolve_guard(self) -> Guard:
        name = self.guard_policy.model or self.settings.default_guard
        try:
            resolved = registry.resolve_guard(self.settings, name, pull_missing=self._pull, notify=self._notify)
        except DownloadError:
            raise  # a download that failed may work on a retry (exit 1), as for the vision model
        except LlamadocError as err:
            unscreened = "or --guard off to go unscreened"
            raise GuardError(
                f"the guard cannot run: {err.message}",
                hint=f"{err.hint}; {unscreened}" if err.hint
                else f"run `llamadoc models pull {name}`, pass --guard-model PATH, {unscreened}",
            ) from None
        options = LoadOptions(model_path=str(resolved.model_path), gpu_layers=self._load.gpu_layers,
                              verbose=self._load.verbose)

        def load() -> Any:
            try:
                return engines.load_guard_engine(resolved.engine, options, resolved.name)
            except LlamadocError as err:
                raise GuardError(f"the guard cannot run: {err.message}",
                                 hint="pass another --guard-model, or --guard off to go unscreened") from None

        stat = resolved.model_path.stat()
        return Guard(
            load=load, policy=self.guard_policy, name=resolved.name,
            store=Store(self.settings.cache_dir / "guard"),
            identity=f"{resolved.model_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}",
        )

    def prepare(self) -> None:
        """Resolve the models now (a missing one fails before any document is read); load nothing."""
        _ = self.resolved, self.guard

    @property
    def model_sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = (self._models.sha256() if self._models is not None
                            else registry.file_sha256(self.resolved.model_path, self.settings.cache_dir))
        return self._sha256

    def model_info(self) -> ModelInfo:
        """What each result records of the model; its device once it has loaded."""
        spec = self.resolved.spec
        engine = self._engine
        return ModelInfo(
            name=self.resolved.name,
            path=str(self.resolved.model_path),
            engine=self.resolved.engine,
            sha256=self.model_sha256,
            quantisation=spec.quantisation if spec else None,
            source=self.resolved.source,
            revision=self.resolved.revision,
            mmproj=str(self.resolved.mmproj_path) if self.resolved.mmproj_path else None,
            gpu_layers=engine.gpu_layers if engine is not None else 0,
            device=engine.device if engine is not None else None,
        )

    # -- runs ------------------------------------------------------------------------

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
    ) -> RunOptions:
        """Options with this model's defaults: its pixel budget and token budget."""
        return RunOptions(
            raster=RasterOptions(dpi=dpi, max_pixels=max_pixels or self.max_pixels, pages=pages, password=password),
            max_tokens=max_tokens if max_tokens is not None else self.max_tokens,
            sampling=Sampling(temperature=temperature, top_p=top_p, seed=seed),
        )

    def identity(self, task: Task, options: RunOptions) -> RunIdentity:
        """The run's identity: the store key and the options each result records come from it."""
        return RunIdentity(
            task=task.name,
            options=run_options(task, options, self.guard),
            model=self.model_sha256,
            mmproj=str(self.resolved.mmproj_path or ""),
            guard=self.guard.identity if self.guard else "off",
        )

    def run(
        self,
        task: Task,
        sources: Iterable[Source],
        options: RunOptions | None = None,
        *,
        force: bool = False,
        store: Store | None = None,
        claim: Callable[[str], bool] = lambda _sha: True,
        on_page: Callable[[PageResult], None] = lambda _p: None,
    ) -> Iterator[DocumentResult]:
        """Results as each document finishes. Documents an earlier run finished with the same
        model, task and options come from the result store (``store``, by default the one in
        LLAMADOC_HOME), unless ``force``."""
        options = self.complete(options)
        pipeline = Pipeline(
            self.engine_for(task), task, options, self.model_info,
            identity=self.identity(task, options), guard=self.guard,
            store=store if store is not None else Store(self.settings.cache_dir / "results"),
            force=force, claim=claim, on_page=on_page, batch=engines.BATCH.get(self.resolved.engine, 1),
        )
        yield from pipeline.run(sources)

    def complete(self, options: RunOptions | None) -> RunOptions:
        """The options a run uses: the model's pixel budget where none was given."""
        options = options or self.run_options()
        if options.raster.max_pixels is None and self.max_pixels:
            options = replace(options, raster=replace(options.raster, max_pixels=self.max_pixels))
        return options

    def engine_for(self, task: Task) -> Callable[[], VisionEngine]:
        """The vision engine for this task's pages, loaded on the first call."""
        if self._engine is None:
            # Size the context for this task's prompt: a schema can be thousands of
            # tokens. Bytes bound the tokens of any byte-level tokenizer.
            self._load = replace(self._load, prompt_tokens=max(1024, len(task.prompt(2).encode("utf-8")) + 256))
        checked = task.schema is None

        def engine() -> VisionEngine:
            # The schema is checked once, before the first page needs the model (exit 2 rather
            # than every page failed); a batch taken whole from the store never imports llama.cpp.
            nonlocal checked
            if not checked and task.schema is not None:
                engines.check_schema(task.schema)
                checked = True
            return self.vision_engine()

        return engine

    def run_batch(
        self,
        task: Task,
        documents: Sequence[str | Path] | Sequence[Source],
        options: RunOptions | None = None,
        *,
        output: OutputSpec | None = None,
        select: Selection | None = None,
        fail_on: frozenset[str] = DEFAULT_FAIL_ON,
        force: bool = False,
        events: Events | None = None,
        stdin: BinaryIO | None = None,
        runner: Runner | None = None,
    ) -> Report:
        """A whole batch: find the documents, take this shard of them, run them (or take them
        from the store), write one file each with ``output.dir``, and report. The report owns
        the counts, the problems and the exit code. ``runner`` reads the documents (by
        default ``self.run``)."""
        output, select, events = output or OutputSpec(), select or Selection(), events or Events()
        report = Report(fail_on=fail_on)
        if output.dir is not None:
            Writer.check(output.dir)  # before any model is resolved or loaded: exit 2, naming the folder
        sources = self.sources(documents, select, stdin)
        names = output_names(sources, EXTENSIONS[output.format])  # over the whole batch: shards agree
        if select.shard is not None:
            sources = select.shard.select(sources)
            if not sources:
                events.notify(f"shard {select.shard} has no documents")
                return report
        writer = Writer(output, names) if output.dir is not None else None
        self.prepare()
        store = Store((output.state if output.state is not None else self.settings.cache_dir) / "results")
        for swept in (store, self.guard.store if self.guard is not None else None):
            if swept is not None:
                swept.sweep()
        events.on_start(len(sources))
        with Claims(output.state / "locks" if output.state is not None else None) as claims:
            run = runner or self.run
            for doc in run(task, sources, options, force=force, store=store, claim=claims.claim,
                           on_page=events.on_page):
                written = None
                problems = report.problems(doc)
                if writer is not None:
                    try:
                        written = writer.write(doc)
                    except WriteFailed as err:
                        report.add_write_failure(doc, str(err))
                        problems.append(f"{doc.source}: {err}")
                claims.release(doc.sha256)
                report.add(doc)
                events.on_document(doc, written, problems)
        for line in self._store_notes(store):
            report.notes.append(line)
            events.notify(line)
        return report

    def sources(self, documents: Sequence[str | Path] | Sequence[Source], select: Selection | None = None,
                stdin: BinaryIO | None = None) -> list[Source]:
        """The documents named by paths, folders, globs and '-' (stdin), or given as Sources, in order."""
        select = select or Selection()
        if sum(os.fspath(d) == "-" for d in documents if not isinstance(d, Source)) > 1:
            raise UsageError("'-' (stdin) can be given once")
        out: list[Source] = []
        names: list[str] = []

        def expand() -> None:  # the names given so far, in order, before a Source given as it is
            if names:
                out.extend(collect(names, include=select.include, exclude=select.exclude, stdin=stdin,
                                   stdin_limit=stdin_limit(), spool_dir=self.settings.home / "tmp",
                                   include_body=select.include_body))
                names.clear()

        for d in documents:
            if isinstance(d, Source):
                expand()
                out.append(d)
            else:
                names.append(os.fspath(d))
        expand()
        return out

    def _store_notes(self, results: Store) -> list[str]:
        """One line each for what went wrong with the caches this run: never silent, never more."""
        lines = []
        stores = [results] + ([self.guard.store] if self.guard is not None and self.guard.store else [])
        unreadable = sum(s.unreadable for s in stores)
        if unreadable:
            lines.append(f"{unreadable} cache entries could not be read (another version's, or damaged) "
                         "and were computed again")
        for s in stores:
            if s.write_error:
                what = "resuming is off for this run" if s is results else "verdicts are not cached"
                lines.append(f"cannot write the cache at {s.write_error}: {what}")
        return lines

    # -- one-liners --------------------------------------------------------------------

    def ask(self, documents: Documents, question: str, **options: Any) -> list[DocumentResult]:
        return self._run_all(Ask(question), documents, options)

    def describe(self, documents: Documents, **options: Any) -> list[DocumentResult]:
        return self._run_all(Describe(), documents, options)

    def extract(self, documents: Documents, schema: str | Path | dict[str, Any],
                **options: Any) -> list[DocumentResult]:
        if isinstance(schema, dict):
            task = Extract(schema=schema)
        else:
            task = Extract(schema=load_schema(str(schema)), schema_path=str(schema))
        return self._run_all(task, documents, options)

    def _run_all(self, task: Task, documents: Documents, options: dict[str, Any]) -> list[DocumentResult]:
        return list(self.run(task, as_sources(documents), self.run_options(**options)))

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None
        if self._guard is not None:
            self._guard.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def as_sources(documents: Documents, stdin: BinaryIO | None = None) -> list[Source]:
    if isinstance(documents, bytes):
        return unpack([Source(label="<bytes>", data=documents)])  # an e-mail or an archive gives its documents
    if isinstance(documents, str | Path):
        return collect([str(documents)], stdin=stdin)
    return collect([str(d) for d in documents], stdin=stdin)


__all__ = ["Events", "OutputSpec", "Reader", "Report", "RunOptions", "Selection", "Shard", "Status"]
