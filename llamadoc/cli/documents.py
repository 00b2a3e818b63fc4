"""`llamadoc ask|describe|extract`: one typed options object, built once from the parameters the
three share, then Reader.run_batch -> lines on stdout and stderr -> the report's exit code.

The shared parameters are declared once, as the fields of ``DocumentOptions``; each command
declares only its own (the question, the schema) and gets the rest as one object.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from llamadoc.cli.common import Config, say
from llamadoc.errors import UsageError

if TYPE_CHECKING:
    from llamadoc.batch.options import RunOptions
    from llamadoc.config import Settings
    from llamadoc.guard import GuardPolicy
    from llamadoc.models.base import Models
    from llamadoc.ray import Cluster
    from llamadoc.reader import Selection
    from llamadoc.tasks import Task

EXIT_CODES = (
    "Exit codes: 0 every document answered; 1 a document or page failed, a download failed, or memory ran out; "
    "2 usage or configuration error (bad option, unknown or missing model, unusable -o); "
    "3 the guard withheld an answer; 130 interrupted (Ctrl-C or SIGTERM)."
)

# The parameters ask, describe and extract share (also used by `serve` where they mean the same).
Files = Annotated[list[str], typer.Argument(help="Files, folders, globs, or - for stdin.", show_default=False)]
Model = Annotated[str | None, typer.Option("--model", "-m", help="Model name from `models list`, or a .gguf path.")]
Mmproj = Annotated[str | None, typer.Option("--mmproj", help="Vision projector .gguf for a model given as a path.")]
Format = Annotated[str, typer.Option("--format", "-f", help="text, json, jsonl or md.")]
Output = Annotated[Path | None, typer.Option("--output", "-o", help="Write one file per document to this folder.")]
Pages = Annotated[str | None, typer.Option("--pages", help="Pages to read, e.g. 1-3,7 (PDFs, multi-frame images).")]
Password = Annotated[str | None, typer.Option("--password", help="Password of encrypted PDFs.")]
Dpi = Annotated[float | None, typer.Option("--dpi", help="Render PDFs at this DPI (default: fit --max-pixels).")]
MaxPixels = Annotated[int | None, typer.Option("--max-pixels", help="Pixel budget per page (default: the model's).")]
GpuLayers = Annotated[int, typer.Option("--gpu-layers", help="Layers to offload to the GPU; -1 all.")]
Threads = Annotated[int | None, typer.Option("--threads", help="CPU threads (default: about the core count).")]
Ctx = Annotated[int, typer.Option("--ctx", help="Context size in tokens; 0 sizes it from the page and prompt.")]
MaxTokens = Annotated[int, typer.Option("--max-tokens", help="Longest answer in tokens.")]
Temperature = Annotated[float, typer.Option("--temperature", help="0 is greedy (the default).")]
Seed = Annotated[int, typer.Option("--seed", help="Sampling seed (with --temperature > 0).")]
GuardMode = Annotated[str, typer.Option("--guard", help="block: withhold unsafe answers; flag: mark them; off.")]
GuardModel = Annotated[str | None, typer.Option("--guard-model", help="Guard model name or .gguf path.")]
GuardThreshold = Annotated[float | None, typer.Option(
    "--guard-threshold", help="Unsafe when P(unsafe) reaches this (0-1), whatever the guard's text says.")]
GuardCategories = Annotated[str | None, typer.Option(
    "--guard-categories", help="Categories that count, e.g. S1,S10 (default: all, S1-S13).")]
Include = Annotated[list[str] | None, typer.Option("--include", help="Only files matching this glob (repeatable).")]
Exclude = Annotated[list[str] | None, typer.Option("--exclude", help="Skip files matching this glob (repeatable).")]
IncludeBody = Annotated[bool, typer.Option("--include-body", help="An e-mail's own text is a document too.")]
Force = Annotated[bool, typer.Option("--force", help="Redo documents an earlier run already finished.")]
Shard = Annotated[str | None, typer.Option("--shard", help="Process the i-th of n slices of the batch, e.g. 2/4.")]
FailOn = Annotated[str | None, typer.Option(
    "--fail-on", help="Outcomes that make the exit code non-zero: failed,blocked,ungrounded,check-failed,"
    "needs-review,duplicate (default failed,blocked; the list replaces it).")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress, summary or per-document messages.")]
Verbose = Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's own logging.")]
# One option whose value says where, since an option cannot take an optional value: `--ray local` mirrors Ray's `auto`.
Ray = Annotated[str | None, typer.Option("--ray", help="Run the batch on Ray: local (this machine), auto (the cluster "
                                          "joined with `ray start`) or HOST:PORT. Needs llamadoc\\[ray].")]
Workers = Annotated[str | None, typer.Option("--workers", help="Ray model workers: N, or N-M to autoscale "
                                              "(default: one per GPU, else one).")]
CpusPerWorker = Annotated[float | None, typer.Option("--cpus-per-worker", help="CPUs each Ray model worker takes "
                                                      "(default 1; also its threads).")]
# Its environment variable is read by llamadoc.config, as every LLAMADOC_* is.
Server = Annotated[str | None, typer.Option(
    "--server", help="Send the pages to a running `llamadoc serve` (host:port or URL); also LLAMADOC_HOST.")]


@dataclass(frozen=True)
class DocumentOptions:
    """What ask, describe and extract share, as the user typed it."""

    files: Files
    model: Model = None
    mmproj: Mmproj = None
    fmt: Format = "text"
    output: Output = None
    pages: Pages = None
    password: Password = None
    dpi: Dpi = None
    max_pixels: MaxPixels = None
    gpu_layers: GpuLayers = -1
    threads: Threads = None
    ctx: Ctx = 0
    max_tokens: MaxTokens = 1024
    temperature: Temperature = 0.0
    seed: Seed = 0
    include: Include = None
    exclude: Exclude = None
    force: Force = False
    shard: Shard = None
    fail_on: FailOn = None
    quiet: Quiet = False
    guard: GuardMode = "block"
    guard_model: GuardModel = None
    guard_threshold: GuardThreshold = None
    guard_categories: GuardCategories = None
    config: Config = None
    verbose: Verbose = False
    include_body: IncludeBody = False
    server: Server = None
    ray: Ray = None
    workers: Workers = None
    cpus_per_worker: CpusPerWorker = None

    # -- what the library takes, each made once -------------------------------------------

    def run_options(self) -> RunOptions:
        from llamadoc.batch.options import RunOptions
        from llamadoc.engines.base import Sampling
        from llamadoc.inputs.raster import RasterOptions

        return RunOptions(
            raster=RasterOptions(dpi=self.dpi, max_pixels=self.max_pixels, pages=self.pages, password=self.password),
            max_tokens=self.max_tokens, sampling=Sampling(temperature=self.temperature, seed=self.seed))

    def selection(self) -> Selection:
        from llamadoc.inputs.sources import Shard as ShardSpec
        from llamadoc.reader import Selection

        return Selection(include=tuple(self.include or ()), exclude=tuple(self.exclude or ()),
                         shard=ShardSpec.parse(self.shard) if self.shard else None, include_body=self.include_body)

    def policy(self) -> GuardPolicy:
        from llamadoc.guard import GuardPolicy, parse_categories

        return GuardPolicy(mode=self.guard, model=self.guard_model, threshold=self.guard_threshold,
                           categories=parse_categories(self.guard_categories))

    def cluster(self) -> Cluster | None:
        """Where a Ray batch runs, when any Ray option is given."""
        if self.ray is None and self.workers is None and self.cpus_per_worker is None:
            return None
        from llamadoc.ray import Cluster  # Ray itself loads only when the batch starts

        return Cluster.parse(self.ray, self.workers, self.cpus_per_worker)

    def models(self, settings: Settings, notify: Callable[[str], None]) -> Models:
        from llamadoc.models import for_run
        from llamadoc.models.base import ModelSettings

        return for_run(ModelSettings(
            settings=settings, model=self.model, mmproj=self.mmproj, gpu_layers=self.gpu_layers, threads=self.threads,
            ctx=self.ctx, verbose=self.verbose, guard=self.policy()), self.server or settings.server, settings.api_key,
            notify)


def document_command(**defaults: Any) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A command taking its own parameters and ``o: DocumentOptions``, as typer sees it: its own
    parameters after the files, then the shared ones (with these ``defaults``, e.g. max_tokens)."""
    hints = typing.get_type_hints(DocumentOptions, include_extras=True)
    shared = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
                                default=defaults.get(f.name, f.default))
              for f in dataclasses.fields(DocumentOptions)]
    names = {p.name for p in shared}

    def decorate(fn: Callable[..., None]) -> Callable[..., None]:
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in inspect.signature(fn, eval_str=True)
               .parameters.values() if p.name != "o"]
        params = [shared[0], *own, *shared[1:]]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> None:
            o = DocumentOptions(**{k: kwargs.pop(k) for k in names})
            fn(**kwargs, o=o)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


def run(task: Callable[[], Task], o: DocumentOptions, per_page: bool = False) -> None:
    """Options -> Reader.run_batch -> lines on stdout and stderr -> the report's exit code."""
    from llamadoc import interrupt
    from llamadoc.cli.progress import Progress
    from llamadoc.config import load_settings
    from llamadoc.outputs.render import for_stdout
    from llamadoc.outputs.report import parse_fail_on
    from llamadoc.outputs.writer import OutputSpec
    from llamadoc.reader import Events, Reader

    interrupt.install()  # main() did, unless the app runs in-process (tests)
    # Everything the user typed is checked before a model is resolved (or downloaded).
    output = OutputSpec(dir=o.output, format=o.fmt)
    options, select, fail_on, cluster = o.run_options(), o.selection(), parse_fail_on(o.fail_on), o.cluster()
    settings = load_settings(o.config)
    if cluster is not None and (o.server or settings.server):
        raise UsageError("--server and --ray name two places to run the batch", hint="choose one")
    made = task()
    notify = (lambda _m: None) if o.quiet else say
    with Progress(enabled=False if o.quiet else None) as progress:
        several = False

        def started(documents: int) -> None:
            nonlocal several
            several = documents > 1
            progress.start(documents)

        def finished(doc: Any, written: Path | None, problems: list[str]) -> None:
            progress.document(doc)
            if output.dir is None:
                sys.stdout.write(for_stdout(doc, output.format, several, per_page))
                sys.stdout.flush()
            if not o.quiet:
                for line in problems:
                    progress.print(f"llamadoc: {line}")
                if written is not None:
                    progress.print(f"llamadoc: wrote {written}")

        with Reader(models=o.models(settings, notify)) as reader:
            batch: Callable[..., Any] = reader.run_batch
            if cluster is not None:
                from llamadoc import ray

                batch = functools.partial(ray.run_batch, reader, cluster=cluster)
            report = batch(
                made, o.files, options, output=output, select=select, fail_on=fail_on, force=o.force,
                events=Events(on_start=started, on_page=progress.page, on_document=finished, notify=notify),
            )
    if report.documents > 1 and not o.quiet:
        for line in report.summary():
            say(line)
    raise typer.Exit(int(report.exit_code))


@document_command(max_tokens=512)
def ask(
    question: Annotated[str, typer.Option("--question", "-q", help="The question to answer.", show_default=False)],
    per_page: Annotated[bool, typer.Option("--per-page", help="Also print each page's own answer.")] = False,
    all_pages: Annotated[bool, typer.Option(
        "--all-pages", help="Read pages the text layer shows are irrelevant.")] = False,
    *,
    o: DocumentOptions,
) -> None:
    """Answer a question about each document, citing the pages it rests on."""
    from llamadoc.tasks import Ask

    run(lambda: Ask(question, all_pages=all_pages), o, per_page=per_page)


@document_command(max_tokens=2048)
def describe(*, o: DocumentOptions) -> None:
    """Transcribe each document to Markdown, page by page."""
    from llamadoc.tasks import Describe

    run(Describe, o)


@document_command(max_tokens=1024)
def extract(
    schema: Annotated[str, typer.Option(
        "--schema", "-s", help="JSON Schema (.json, or .yaml/.yml).", show_default=False)],
    embedded: Annotated[str, typer.Option(
        "--embedded", help="A PDF's Factur-X/ZUGFeRD/XRechnung data: prefer it (no model), compare, or ignore.")
    ] = "prefer",
    review_below: Annotated[float, typer.Option(
        "--review-below", help="A value less confident than this (0-1) puts its document up for review.")] = 0.8,
    *,
    o: DocumentOptions,
) -> None:
    """Extract fields as JSON, decoding constrained by a JSON Schema and validated after; each value
    with where the page prints it, a confidence and its checks."""
    from llamadoc.tasks import Extract

    run(lambda: Extract.from_file(schema, embedded=embedded, review_below=review_below), o)
