"""The command line: parse options, call the library, map errors to exit codes. Thin."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import typer

from llamadoc.cli_common import Config, handles_errors, say
from llamadoc.cli_models import doctor, models_app
from llamadoc.errors import ExitCode, UsageError

EXIT_CODES = (
    "Exit codes: 0 every document answered; 1 a document or page failed; "
    "2 usage or configuration error; 3 the guard withheld an answer; 130 interrupted."
)

app = typer.Typer(
    help=f"Read documents with local vision models: answers, Markdown, JSON.\n\n{EXIT_CODES}",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(models_app, name="models")
app.command()(doctor)


@app.callback()
def root(
    traceback: Annotated[bool, typer.Option(
        "--traceback", help="Show the Python traceback of an error (also: LLAMADOC_RAISE_ERRORS=1).")] = False,
) -> None:
    """Read documents with local vision models: answers, Markdown, JSON."""


# Options shared by ask, describe and extract.
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
Force = Annotated[bool, typer.Option("--force", help="Redo documents an earlier run already finished.")]
Shard = Annotated[str | None, typer.Option("--shard", help="Process the i-th of n slices of the batch, e.g. 2/4.")]
FailOn = Annotated[str | None, typer.Option(
    "--fail-on", help="Outcomes that make the exit code non-zero: failed,blocked,ungrounded,check-failed "
    "(default failed,blocked).")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress, summary or per-document messages.")]
Verbose = Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's own logging.")]


@dataclass(frozen=True)
class Common:
    """The options every document command shares, as typed by the user."""

    files: list[str]
    model: str | None
    mmproj: str | None
    fmt: str
    output: Path | None
    pages: str | None
    password: str | None
    dpi: float | None
    max_pixels: int | None
    gpu_layers: int
    threads: int | None
    ctx: int
    max_tokens: int
    temperature: float
    seed: int
    include: list[str] | None
    exclude: list[str] | None
    force: bool
    shard: str | None
    fail_on: str | None
    quiet: bool
    guard: str
    guard_model: str | None
    guard_threshold: float | None
    guard_categories: str | None
    config: Path | None
    verbose: bool

    @classmethod
    def of(cls, values: dict[str, Any]) -> Common:
        return cls(**{f.name: values[f.name] for f in fields(cls)})


def _run(
    task_factory: Callable[[], Any], opts: Common, *, per_page: bool = False, all_pages: bool = False,
    embedded: str = "prefer",
) -> None:
    from llamadoc import render
    from llamadoc.guard import MODES, GuardPolicy, parse_categories
    from llamadoc.progress import Progress
    from llamadoc.raster import parse_pages
    from llamadoc.reader import Reader
    from llamadoc.report import Report, parse_fail_on
    from llamadoc.sources import collect, output_names, shard
    from llamadoc.verify import EMBEDDED_MODES

    if opts.fmt not in render.FORMATS:
        raise UsageError(f"--format {opts.fmt!r} is not one of {', '.join(render.FORMATS)}")
    if opts.pages is not None:
        parse_pages(opts.pages)  # a bad range is a usage error before any model loads
    if opts.dpi is not None and opts.dpi <= 0:
        raise UsageError("--dpi must be positive")
    if opts.max_tokens < 1:
        raise UsageError("--max-tokens must be at least 1")
    if opts.threads is not None and opts.threads < 1:
        raise UsageError("--threads must be at least 1")
    if opts.files.count("-") > 1:
        raise UsageError("'-' (stdin) can be given once")
    if embedded not in EMBEDDED_MODES:
        raise UsageError(f"--embedded {embedded!r} is not one of {', '.join(EMBEDDED_MODES)}")
    if opts.guard not in MODES:
        raise UsageError(f"--guard {opts.guard!r} is not one of {', '.join(MODES)}")
    if opts.guard_threshold is not None and not 0.0 <= opts.guard_threshold <= 1.0:
        raise UsageError("--guard-threshold must be between 0 and 1")
    policy = GuardPolicy(
        mode=opts.guard, model=opts.guard_model, threshold=opts.guard_threshold,
        categories=parse_categories(opts.guard_categories),
    )
    fail_on = parse_fail_on(opts.fail_on)
    task = task_factory()
    sources = collect(opts.files, include=opts.include or (), exclude=opts.exclude or ())
    names = output_names(sources, render.EXTENSIONS[opts.fmt])  # over the whole batch: shards agree
    if opts.shard:
        sources = shard(sources, opts.shard)
        if not sources:
            if not opts.quiet:
                say(f"shard {opts.shard} has no documents")
            raise typer.Exit(int(ExitCode.OK))
    if all(s.error for s in sources):
        # Nothing to read: report each argument and stop before loading a model.
        for s in sources:
            say(f"{s.label}: {s.error}")
        raise typer.Exit(int(ExitCode.FAILED))
    reader = Reader(
        opts.model, mmproj=opts.mmproj, gpu_layers=opts.gpu_layers, threads=opts.threads, ctx=opts.ctx,
        max_tokens=opts.max_tokens, verbose=opts.verbose, config=opts.config, notify=say, guard=policy,
    )
    options = reader.run_options(
        pages=opts.pages, dpi=opts.dpi, max_pixels=opts.max_pixels, password=opts.password,
        max_tokens=opts.max_tokens, temperature=opts.temperature, seed=opts.seed, all_pages=all_pages,
        embedded=embedded,
    )
    report = Report(fail_on=fail_on)
    writer = _Writer(opts.fmt, opts.output, names, several=len(sources) > 1, per_page=per_page)
    try:
        with Progress(len(sources), enabled=False if opts.quiet else None) as progress:
            for doc in reader.run(task, sources, options, force=opts.force, on_page=progress.page):
                report.add(doc)
                progress.document(doc)
                if not opts.quiet:
                    for line in report.problems(doc):
                        progress.print(f"llamadoc: {line}")
                written = writer.emit(doc)
                if written and not opts.quiet:
                    progress.print(f"llamadoc: wrote {written}")
    finally:
        reader.close()
    if len(sources) > 1 and not opts.quiet:
        for line in report.summary():
            say(line)
    raise typer.Exit(int(report.exit_code()))


class _Writer:
    """Results to stdout, or one file per document with -o (atomically)."""

    def __init__(self, fmt: str, output: Path | None, names: dict[str, str], several: bool, per_page: bool) -> None:
        self.fmt = fmt
        self.output = output
        self.names = names
        self.several = several
        self.per_page = per_page

    def emit(self, doc: Any) -> Path | None:
        """Write or print one document; returns the file written, if any."""
        from llamadoc import render
        from llamadoc.results import Status

        nothing = doc.status is Status.FAILED and not doc.pages
        if self.output is not None:
            if nothing and self.fmt in ("text", "md"):
                return None  # nothing to write, and never an empty file that looks finished
            path = self.output / self.names[doc.source]
            if doc.cached and path.is_file():
                return None  # finished by an earlier run: written once, left alone
            render.write_atomic(path, render.render(doc, self.fmt))
            return path
        if self.fmt in ("json", "jsonl"):
            text = render.render(doc, self.fmt)
        else:
            if nothing:
                return None
            text = render.render(doc, self.fmt)
            if self.per_page and doc.task == "ask":
                text = "".join(f"[page {p.index}] {p.answer}\n" for p in doc.pages if p.answer) + text
            if self.several and self.fmt == "text":
                text = f"==> {doc.source} <==\n{text}\n"
        sys.stdout.write(text)
        sys.stdout.flush()
        return None


@app.command(epilog=EXIT_CODES)
@handles_errors
def ask(
    files: Files,
    question: Annotated[str, typer.Option("--question", "-q", help="The question to answer.", show_default=False)],
    per_page: Annotated[bool, typer.Option("--per-page", help="Also print each page's own answer.")] = False,
    all_pages: Annotated[bool, typer.Option("--all-pages", help="Read pages the text layer shows are irrelevant.")] = False,
    model: Model = None, mmproj: Mmproj = None, fmt: Format = "text", output: Output = None,
    pages: Pages = None, password: Password = None, dpi: Dpi = None, max_pixels: MaxPixels = None,
    gpu_layers: GpuLayers = -1, threads: Threads = None, ctx: Ctx = 0, max_tokens: MaxTokens = 512,
    temperature: Temperature = 0.0, seed: Seed = 0, include: Include = None, exclude: Exclude = None,
    force: Force = False, shard: Shard = None, fail_on: FailOn = None, quiet: Quiet = False,
    guard: GuardMode = "block", guard_model: GuardModel = None,
    guard_threshold: GuardThreshold = None, guard_categories: GuardCategories = None, config: Config = None,
    verbose: Verbose = False,
) -> None:
    """Answer a question about each document, citing the pages it rests on."""
    from llamadoc.tasks import Ask

    _run(lambda: Ask(question), Common.of(locals()), per_page=per_page, all_pages=all_pages)


@app.command(epilog=EXIT_CODES)
@handles_errors
def describe(
    files: Files,
    model: Model = None, mmproj: Mmproj = None, fmt: Format = "text", output: Output = None,
    pages: Pages = None, password: Password = None, dpi: Dpi = None, max_pixels: MaxPixels = None,
    gpu_layers: GpuLayers = -1, threads: Threads = None, ctx: Ctx = 0, max_tokens: MaxTokens = 2048,
    temperature: Temperature = 0.0, seed: Seed = 0, include: Include = None, exclude: Exclude = None,
    force: Force = False, shard: Shard = None, fail_on: FailOn = None, quiet: Quiet = False,
    guard: GuardMode = "block", guard_model: GuardModel = None,
    guard_threshold: GuardThreshold = None, guard_categories: GuardCategories = None, config: Config = None,
    verbose: Verbose = False,
) -> None:
    """Transcribe each document to Markdown, page by page."""
    from llamadoc.tasks import Describe

    _run(Describe, Common.of(locals()))


@app.command(epilog=EXIT_CODES)
@handles_errors
def extract(
    files: Files,
    schema: Annotated[str, typer.Option("--schema", "-s", help="JSON Schema (.json, or .yaml/.yml).", show_default=False)],
    embedded: Annotated[str, typer.Option(
        "--embedded", help="A PDF's Factur-X/ZUGFeRD/XRechnung data: prefer it (no model), compare, or ignore.")
    ] = "prefer",
    model: Model = None, mmproj: Mmproj = None, fmt: Format = "text", output: Output = None,
    pages: Pages = None, password: Password = None, dpi: Dpi = None, max_pixels: MaxPixels = None,
    gpu_layers: GpuLayers = -1, threads: Threads = None, ctx: Ctx = 0, max_tokens: MaxTokens = 1024,
    temperature: Temperature = 0.0, seed: Seed = 0, include: Include = None, exclude: Exclude = None,
    force: Force = False, shard: Shard = None, fail_on: FailOn = None, quiet: Quiet = False,
    guard: GuardMode = "block", guard_model: GuardModel = None,
    guard_threshold: GuardThreshold = None, guard_categories: GuardCategories = None, config: Config = None,
    verbose: Verbose = False,
) -> None:
    """Extract fields as JSON, decoding constrained by a JSON Schema and validated after."""
    from llamadoc.tasks import Extract, load_schema

    _run(lambda: Extract(schema=load_schema(schema), schema_path=schema), Common.of(locals()), embedded=embedded)


def main(argv: Iterable[str] | None = None) -> None:
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")  # an abort in ggml should not dump gdb output
    try:
        app(args=list(argv) if argv is not None else None, prog_name="llamadoc")
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(int(ExitCode.FAILED))
