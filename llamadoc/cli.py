"""The command line: parse options, call the library, map errors to exit codes. Thin."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from llamadoc.errors import ExitCode, LlamadocError, UsageError

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
models_app = typer.Typer(help="List, download, inspect, check and delete models.", no_args_is_help=True)
app.add_typer(models_app, name="models")

F = TypeVar("F", bound=Callable[..., Any])
_state = {"traceback": False}


def say(message: str) -> None:
    """Progress, warnings and errors: stderr only; stdout carries results."""
    print(f"llamadoc: {message}", file=sys.stderr, flush=True)


def handles_errors(fn: F) -> F:
    """One place maps exceptions to one-line messages and exit codes."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LlamadocError as err:
            if _state["traceback"]:
                raise
            say(f"error: {err}")
            raise typer.Exit(int(err.exit_code)) from None
        except KeyboardInterrupt:
            if _state["traceback"]:
                raise
            say("interrupted; finished documents are kept")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
        except (typer.Exit, typer.Abort, BrokenPipeError):
            raise
        except Exception as err:  # a bug: say so plainly, offer the traceback
            if _state["traceback"]:
                raise
            say(f"internal error: {type(err).__name__}: {err} (rerun with --traceback and report it)")
            raise typer.Exit(int(ExitCode.FAILED)) from None

    return wrapper  # type: ignore[return-value]


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
Config = Annotated[Path | None, typer.Option("--config", help="A models.toml that adds or overrides models.")]
Verbose = Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's own logging.")]
Traceback = Annotated[bool, typer.Option("--traceback", help="Show the Python traceback on errors.")]


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
    traceback: bool

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

    _state["traceback"] = opts.traceback
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
    verbose: Verbose = False, traceback: Traceback = False,
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
    verbose: Verbose = False, traceback: Traceback = False,
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
    verbose: Verbose = False, traceback: Traceback = False,
) -> None:
    """Extract fields as JSON, decoding constrained by a JSON Schema and validated after."""
    from llamadoc.tasks import Extract, load_schema

    _run(lambda: Extract(schema=load_schema(schema), schema_path=schema), Common.of(locals()), embedded=embedded)


ModelName = Annotated[str, typer.Argument(help="A model name from `models list`, or a .gguf path.", show_default=False)]
ModelNames = Annotated[list[str], typer.Argument(help="Model names from `models list`.", show_default=False)]
PATH_ROLES = ("model", "mmproj", "template", "params")


def _model_or_path(settings: Any, name: str) -> Any:
    """The registry entry for ``name``, or the Path of a .gguf file given instead."""
    from llamadoc import registry
    from llamadoc.errors import ModelError

    if name not in settings.models and registry.looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        return path
    return settings.model(name)


def _presence(spec: Any, files: list[Any]) -> str:
    from llamadoc.registry.progress import human_size

    declared = [f for f in files if f.role in {d.role for d in spec.files}]
    if all(f.present for f in declared):
        places = sorted({f.place for f in declared if f.shared})
        return "yes" + (f" ({', '.join(places)})" if places else "")
    partial = sum(f.partial for f in declared)
    return f"partial ({human_size(partial)})" if partial else "no"


@models_app.command("list")
@handles_errors
def models_list(config: Config = None) -> None:
    """The models llamadoc knows: engine, size, memory, and whether they are here."""
    from rich.console import Console
    from rich.table import Table

    from llamadoc import registry
    from llamadoc.config import load_settings
    from llamadoc.registry.locate import HF_CACHE, OLLAMA
    from llamadoc.registry.progress import human_size

    settings = load_settings(config)
    table = Table(box=None, pad_edge=False)
    for column in ("name", "engine", "kind", "quant", "size", "context", "memory", "local"):
        table.add_column(column)
    shared: dict[Path, int] = {}
    defaults = {settings.default_vision: " (default)", settings.default_guard: " (default guard)"}
    for name, spec in sorted(settings.models.items()):
        files = registry.locate(settings, spec)
        shared.update({f.path: f.size for f in files if f.present and f.place in (OLLAMA, HF_CACHE) and f.path})
        table.add_row(
            name + defaults.get(name, ""),
            spec.engine,
            spec.kind,
            spec.quantisation or "",
            human_size(spec.size_bytes),
            f"{spec.context:,}" if spec.context else "?",
            f"{spec.min_memory_gb:g} GB" if spec.min_memory_gb else "?",
            _presence(spec, files),
        )
    Console(width=200).print(table)
    print(f"models folder: {settings.models_dir} ({human_size(_disk_used(settings.models_dir))} used)")
    if shared:
        where = "in Ollama's store or the Hugging Face cache"
        print(f"used in place, not copied: {human_size(sum(shared.values()))} {where}")


def _disk_used(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


@models_app.command("pull")
@handles_errors
def models_pull(names: ModelNames, config: Config = None) -> None:
    """Download models' files (resumable, verified) into LLAMADOC_HOME; prints their paths."""
    from llamadoc import registry
    from llamadoc.config import load_settings

    settings = load_settings(config)
    for name in names:
        target = _model_or_path(settings, name)
        if isinstance(target, Path):
            say(f"{target} is a local file: nothing to download")
            print(target)
            continue
        if registry.is_present(settings, target):
            say(f"model {name} is already here")
        for path in registry.pull(settings, target, notify=say):
            print(path)


@models_app.command("rm")
@handles_errors
def models_rm(names: ModelNames, config: Config = None) -> None:
    """Delete llamadoc's copies of models (never Ollama's or the Hugging Face cache's)."""
    from llamadoc import registry
    from llamadoc.config import load_settings
    from llamadoc.registry.progress import human_size

    settings = load_settings(config)
    for name in names:
        if isinstance(_model_or_path(settings, name), Path):
            raise UsageError(f"{name} is a file of yours: llamadoc deletes only what it downloaded")
    for name in names:
        done = registry.remove(settings, settings.model(name), notify=say)
        for path in done.removed:
            say(f"removed {path}")
        for path, why in done.kept:
            say(f"kept {path}: {why}")
        if done.removed:
            say(f"model {name}: {human_size(done.freed)} freed")
        elif not done.kept:
            say(f"model {name} has no files here")


@models_app.command("path")
@handles_errors
def models_path(
    name: ModelName,
    role: Annotated[str, typer.Option("--file", help="model, mmproj, template or params.")] = "model",
    config: Config = None,
) -> None:
    """Print where a model's file is, for other tools (llama-server -m "$(llamadoc models path NAME)")."""
    from llamadoc import registry
    from llamadoc.config import load_settings
    from llamadoc.errors import ModelError

    if role not in PATH_ROLES:
        raise UsageError(f"--file {role!r} is not one of {', '.join(PATH_ROLES)}")
    settings = load_settings(config)
    target = _model_or_path(settings, name)
    if isinstance(target, Path):
        print(target.absolute())
        return
    files = {f.role: f for f in registry.locate(settings, target)}
    file = files.get(role)
    if file is None:
        raise ModelError(f"model {name} has no {role} file")
    if not file.present or file.path is None:
        raise ModelError(f"model {name} is not downloaded", hint=f"run: llamadoc models pull {name}")
    print(file.path)


@models_app.command("info")
@handles_errors
def models_info(name: ModelName, config: Config = None) -> None:
    """A model's entry, its files, and what their GGUF headers say."""
    from llamadoc import registry
    from llamadoc.config import load_settings
    from llamadoc.errors import ModelError
    from llamadoc.registry.progress import human_size

    settings = load_settings(config)
    target = _model_or_path(settings, name)
    rows: list[tuple[str, str]] = []
    if isinstance(target, Path):
        rows.append(("file", str(target.absolute())))
        rows.append(("size", human_size(target.stat().st_size)))
        rows.extend(_gguf_rows(registry.gguf_summary(target)))
    else:
        spec = target
        rows.extend([
            ("name", spec.name),
            ("engine", f"{spec.engine} ({spec.kind})"),
            ("description", spec.description),
            ("quantisation", spec.quantisation or "?"),
            ("size", human_size(spec.size_bytes)),
            ("context", f"{spec.context:,} tokens" if spec.context else "?"),
            ("memory", f"{spec.min_memory_gb:g} GB or more" if spec.min_memory_gb else "?"),
            ("max pixels", f"{spec.max_pixels:,}" if spec.max_pixels else "the default"),
            ("defined in", spec.origin),
        ])
        for file in registry.locate(settings, spec):
            rows.append((file.role, file.source))
            if not file.present or file.path is None:
                partial = f" ({human_size(file.partial)} of an interrupted download kept)" if file.partial else ""
                rows.append(("  path", "not downloaded" + partial))
                continue
            rows.append(("  path", f"{file.path} ({file.place}, {human_size(file.size)})"))
            if file.sha256:
                rows.append(("  sha256", file.sha256))
            if file.role in ("model", "mmproj"):
                try:
                    rows.extend(("  " + key, value) for key, value in _gguf_rows(registry.gguf_summary(file.path)))
                except ModelError as err:  # say so, and go on with the other files
                    rows.append(("  gguf", err.message))
    rows = [(key, value) for key, value in rows if value]
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def _gguf_rows(summary: Any) -> list[tuple[str, str]]:
    return [
        ("architecture", summary.architecture + (f" ({summary.name})" if summary.name else "")),
        ("file type", summary.quantisation or "?"),
        ("parameters", f"{_count(summary.parameters)} in {summary.tensors} tensors"),
        ("trained context", f"{summary.context:,}" if summary.context else "not recorded"),
        ("vision", summary.vision or "none"),
        ("chat template", "yes" if summary.chat_template else "no"),
    ]


def _count(n: int) -> str:
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return str(n)


@models_app.command("verify")
@handles_errors
def models_verify(
    names: Annotated[
        list[str] | None, typer.Argument(help="Model names or .gguf paths; all downloaded models if none.")
    ] = None,
    config: Config = None,
) -> None:
    """Hash models' files anew and compare with their sha256; a bad copy of llamadoc's is deleted."""
    from llamadoc import registry
    from llamadoc.config import load_settings
    from llamadoc.errors import DownloadError

    settings = load_settings(config)
    targets = [_model_or_path(settings, n) for n in names] if names else [
        spec for spec in settings.models.values() if any(f.present for f in registry.locate(settings, spec))
    ]
    if not targets:
        say("no downloaded models to verify")
        return
    bad: list[str] = []
    for spec in targets:
        if isinstance(spec, Path):  # a file of the user's: its digest, for them to compare
            print(f"{'unchecked':<9} {spec}: sha256 {registry.fresh_sha256(spec, settings.cache_dir)}")
            continue
        for check in registry.verify(settings, spec, notify=say):
            status = {True: "ok", False: "MISMATCH", None: "unchecked"}[check.ok]
            note = " (deleted)" if check.deleted else (" (no digest to compare with)" if check.ok is None else "")
            print(f"{status:<9} {spec.name} {check.file.role}: {check.file.path}{note}")
            if check.ok is False:
                bad.append(spec.name)
    if bad:
        raise DownloadError(
            f"{len(bad)} file(s) failed verification",
            hint=f"run: llamadoc models pull {' '.join(sorted(set(bad)))} (files in Ollama's store or the Hub cache: "
            "fetch them again with the tool that owns them)",
        )


@models_app.command("convert")
@handles_errors
def models_convert(
    hf_dir: Annotated[Path, typer.Argument(help="A Hugging Face Llama 3.2 Vision folder (config.json + safetensors).")],
    out: Annotated[Path, typer.Argument(help="The GGUF file to write.")],
    quant: Annotated[str, typer.Option("--quant", help="F32, F16, Q8_0 or Q4_K_M.")] = "Q4_K_M",
) -> None:
    """Convert Meta's Llama 3.2 Vision (or Llama Guard 3 Vision) checkpoint to one GGUF file."""
    from llamadoc.engines.mllama.convert import convert

    report = convert(hf_dir, out, quant)
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(report.types.items()))
    say(f"wrote {report.n_tensors} tensors ({kinds}), {report.bytes / 1e9:.2f} GB")
    for line in report.fallbacks[:5]:
        say(f"kept wider: {line}")
    print(report.path)


@app.command()
@handles_errors
def doctor(config: Config = None) -> None:
    """Versions, compiled-in ggml backends, GPUs, and where models live."""
    import platform
    from importlib.metadata import version

    from llamadoc import registry
    from llamadoc.config import load_settings
    from llamadoc.engines import llamacpp

    settings = load_settings(config)
    rows = [
        ("llamadoc", version("llamadoc") if _installed("llamadoc") else "source checkout"),
        ("python", platform.python_version()),
        ("llama-cpp-python", version("llama-cpp-python")),
    ]
    llamacpp.set_logging(False)
    from llamadoc.engines.mllama.backend import describe_backends  # ggml's device registry

    for dev in describe_backends():
        memory = (f" ({dev['memory_free'] / 2**30:.1f} of {dev['memory_total'] / 2**30:.1f} GiB free)"
                  if dev["memory_total"] else "")
        rows.append(("ggml device", f"{dev['name']} [{dev['kind']}]: {dev['description']}{memory}"))
    rows.append(("gpu offload", "yes" if llamacpp.gpu_available() else "no (CPU only)"))
    rows.append(("LLAMADOC_HOME", str(settings.home)))
    rows.append(("offline", "yes" if settings.offline else "no"))
    for name, spec in sorted(settings.models.items()):
        rows.append(("model", f"{name}: {'present' if registry.is_present(settings, spec) else 'not downloaded'}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def _installed(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


def main(argv: Iterable[str] | None = None) -> None:
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")  # an abort in ggml should not dump gdb output
    try:
        app(args=list(argv) if argv is not None else None, prog_name="llamadoc")
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(int(ExitCode.FAILED))
