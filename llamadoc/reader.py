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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Protocol

from llamadoc.batch.options import RunOptions
from llamadoc.batch.pipeline import Pipeline, recorded_options
from llamadoc.batch.prefetch import NO_OCR
from llamadoc.config import Settings, load_settings
from llamadoc.engines.base import Sampling
from llamadoc.errors import UsageError, WriteFailed
from llamadoc.evidence.duplicates import Duplicates, mark
from llamadoc.guard import Guard, GuardPolicy
from llamadoc.inputs.raster import RasterOptions
from llamadoc.inputs.sources import Shard, Source, collect, unpack
from llamadoc.models.base import Models, ModelSettings
from llamadoc.models.local import LocalModels
from llamadoc.outputs.render import EXTENSIONS
from llamadoc.outputs.report import DEFAULT_FAIL_ON, Report
from llamadoc.outputs.writer import Claims, OutputSpec, Writer, output_names
from llamadoc.results import DocumentResult, PageResult, Status
from llamadoc.store import RunIdentity, Store
from llamadoc.tasks import Ask, Describe, Extract, Task

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


class Reader:
    """Batches run on a run's models (llamadoc.models: this machine's, a server's, or the
    server's resident set), which resolve when a batch starts and load on first need."""

    def __init__(
        self,
        model: str | None = None,
        *,
        models: Models | None = None,
        mmproj: str | None = None,
        gpu_layers: int = -1,
        ctx: int = 0,
        threads: int | None = None,
        verbose: bool = False,
        config: Path | None = None,
        settings: Settings | None = None,
        pull: bool = True,
        notify: Callable[[str], None] = lambda _m: None,
        guard: GuardPolicy | None = None,
    ) -> None:
        """``models``, or this machine's models made from the other arguments (the CLI's options)."""
        if models is not None:
            given = {"model": model, "mmproj": mmproj, "config": config, "settings": settings, "guard": guard,
                     "threads": threads}
            named = [name for name, value in given.items() if value is not None]
            named += [name for name, value, default in (("gpu_layers", gpu_layers, -1), ("ctx", ctx, 0),
                                                        ("verbose", verbose, False), ("pull", pull, True))
                      if value != default]
            if named:  # they would be ignored: the models are made already
                raise UsageError(f"Reader(models=...) takes no {', '.join(named)}: give them to the models instead")
        else:
            models = LocalModels(ModelSettings(
                settings=settings or load_settings(config), model=model, mmproj=mmproj, gpu_layers=gpu_layers,
                ctx=ctx, threads=threads, verbose=verbose, pull=pull, guard=guard or GuardPolicy()), notify)
        self.models = models

    @property
    def settings(self) -> Settings:
        return self.models.settings

    @property
    def guard(self) -> Guard | None:
        return self.models.guard()

    def prepare(self) -> None:
        """Resolve the models now (a missing one fails before any document is read); load nothing."""
        _ = self.models.resolve(), self.models.guard()

    # -- runs ------------------------------------------------------------------------

    def run_options(
        self,
        *,
        pages: str | None = None,
        dpi: float | None = None,
        max_pixels: int | None = None,
        password: str | None = None,
        max_tokens: int = RunOptions.max_tokens,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> RunOptions:
        """Options from keywords (the one-liners'), with the model's pixel budget where none is given."""
        return self.complete(RunOptions(
            raster=RasterOptions(dpi=dpi, max_pixels=max_pixels, pages=pages, password=password),
            max_tokens=max_tokens, sampling=Sampling(temperature=temperature, top_p=top_p, seed=seed),
        ))

    def complete(self, options: RunOptions | None) -> RunOptions:
        """The options a run uses: the model's pixel budget where none was given."""
        options = options or RunOptions()
        budget = self.models.resolve().max_pixels
        if options.raster.max_pixels is None and budget:
            options = replace(options, raster=replace(options.raster, max_pixels=budget))
        return options

    def identity(self, task: Task, options: RunOptions) -> RunIdentity:
        """The run's identity: the store key and the options each result records come from it."""
        guard = self.guard
        return RunIdentity(
            task=task.name,
            options=recorded_options(task, options, guard),
            model=self.models.sha256(),
            mmproj=str(self.models.resolve().mmproj_path or ""),
            guard=guard.identity if guard else "off",
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
            self.models, task, options, identity=self.identity(task, options), guard=self.guard,
            store=store if store is not None else Store(self.settings.cache_dir / "results"),
            force=force, claim=claim, on_page=on_page,
        )
        yield from pipeline.run(sources)

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
        duplicates = Duplicates()  # the same invoice twice, even in other bytes
        said_no_ocr = False
        with Claims(output.state / "locks" if output.state is not None else None) as claims:
            run = runner or self.run
            for doc in run(task, sources, options, force=force, store=store, claim=claims.claim,
                           on_page=events.on_page):
                try:
                    earlier = duplicates.add(doc)
                except (ArithmeticError, ValueError, TypeError) as err:
                    earlier = []  # one record's odd values: a note on it, not the run's end
                    doc.warnings.append(f"duplicates were not looked for: {type(err).__name__}: {err}")
                for first in earlier:
                    mark(doc, first.source)
                    mark(first, doc.source)
                no_ocr = next((w for w in doc.warnings if w.startswith(NO_OCR)), None)
                if no_ocr is not None and not said_no_ocr:  # once a batch, not once a document
                    events.notify(f"{no_ocr}; their values get no evidence")
                    said_no_ocr = True
                written = None
                problems = report.problems(doc)
                if writer is not None:
                    for one in (doc, *earlier):  # an earlier one's file is rewritten: it has a twin now
                        try:
                            path = writer.write(one)
                        except WriteFailed as err:
                            report.add_write_failure(one, str(err))
                            problems.append(f"{one.source}: {err}")
                            continue
                        written = path if one is doc else written
                claims.release(doc.sha256)
                report.add(doc)
                for first in earlier:
                    report.add_duplicate(first, doc)
                    problems.append(f"{doc.source}: the same invoice as {first.source}")
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
                                   stdin_limit=self.settings.stdin_limit, spool_dir=self.settings.home / "tmp",
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
            task = Extract.from_file(schema)
        return self._run_all(task, documents, options)

    def _run_all(self, task: Task, documents: Documents, options: dict[str, Any]) -> list[DocumentResult]:
        return list(self.run(task, as_sources(documents), self.run_options(**options)))

    def close(self) -> None:
        self.models.close()

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
