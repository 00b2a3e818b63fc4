"""The command line: parse options, call the library, print, exit with the report's code. Thin.

Everything a document command does happens in ``Reader.run_batch``; this module turns
options into its arguments and its events into lines on stdout and stderr.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from llamadoc.cli.common import Config, handles_errors, say, set_traceback
from llamadoc.cli.models import doctor, models_app
from llamadoc.errors import ExitCode, UsageError

EXIT_CODES = (
    "Exit codes: 0 every document answered; 1 a document or page failed, a download failed, or memory ran out; "
    "2 usage or configuration error (bad option, unknown or missing model, unusable -o); "
    "3 the guard withheld an answer; 130 interrupted (Ctrl-C or SIGTERM)."
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
    set_traceback(traceback)


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
IncludeBody = Annotated[bool, typer.Option("--include-body", help="An e-mail's own text is a document too.")]
Force = Annotated[bool, typer.Option("--force", help="Redo documents an earlier run already finished.")]
Shard = Annotated[str | None, typer.Option("--shard", help="Process the i-th of n slices of the batch, e.g. 2/4.")]
FailOn = Annotated[str | None, typer.Option(
    "--fail-on", help="Outcomes that make the exit code non-zero: failed,blocked,ungrounded,check-failed "
    "(default failed,blocked).")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress, summary or per-document messages.")]
Verbose = Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's own logging.")]
# One option whose value says where, since an option cannot take an optional value: `--ray local` mirrors Ray's `auto`.
Ray = Annotated[str | None, typer.Option("--ray", help="Run the batch on Ray: local (this machine), auto (the cluster "
                                          "joined with `ray start`) or HOST:PORT. Needs llamadoc[ray].")]
Workers = Annotated[str | None, typer.Option("--workers", help="Ray model workers: N, or N-M to autoscale "
                                              "(default: one per GPU, else one).")]
CpusPerWorker = Annotated[float | None, typer.Option("--cpus-per-worker", help="CPUs each Ray model worker takes "
                                                      "(default 1; also its threads).")]
Server = Annotated[str | None, typer.Option(
    "--server", envvar="LLAMADOC_HOST", help="Send the pages to a running `llamadoc serve` (host:port or URL).")]


def _run(make_task: Callable[[], Any], o: dict[str, Any], per_page: bool = False) -> None:
    """Options -> Reader.run_batch -> lines on stdout and stderr -> the report's exit code."""
    from llamadoc import interrupt
    from llamadoc.batch.options import RunOptions
    from llamadoc.cli.progress import Progress
    from llamadoc.engines.base import Sampling
    from llamadoc.guard import GuardPolicy, parse_categories
    from llamadoc.inputs.raster import RasterOptions
    from llamadoc.inputs.sources import Shard as ShardSpec
    from llamadoc.outputs.render import for_stdout
    from llamadoc.outputs.report import parse_fail_on
    from llamadoc.outputs.writer import OutputSpec
    from llamadoc.reader import Events, Reader, Selection

    interrupt.install()  # main() did, unless the app runs in-process (tests)
    # Everything the user typed is checked before a model is resolved (or downloaded).
    output = OutputSpec(dir=o["output"], format=o["fmt"])
    options = RunOptions(
        raster=RasterOptions(dpi=o["dpi"], max_pixels=o["max_pixels"], pages=o["pages"], password=o["password"]),
        max_tokens=o["max_tokens"], sampling=Sampling(temperature=o["temperature"], seed=o["seed"]),
    )
    select = Selection(include=tuple(o["include"] or ()), exclude=tuple(o["exclude"] or ()),
                       shard=ShardSpec.parse(o["shard"]) if o["shard"] else None, include_body=o["include_body"])
    fail_on = parse_fail_on(o["fail_on"])
    policy = GuardPolicy(mode=o["guard"], model=o["guard_model"], threshold=o["guard_threshold"],
                         categories=parse_categories(o["guard_categories"]))
    cluster = None
    if o["ray"] is not None or o["workers"] is not None or o["cpus_per_worker"] is not None:
        from llamadoc.ray import Cluster  # Ray itself loads only when the batch starts

        cluster = Cluster.parse(o["ray"], o["workers"], o["cpus_per_worker"])
        if o["server"]:
            raise UsageError("--server and --ray name two places to run the batch", hint="choose one")
    task = make_task()
    quiet = o["quiet"]
    notify = (lambda _m: None) if quiet else say
    with Progress(enabled=False if quiet else None) as progress:
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
            if not quiet:
                for line in problems:
                    progress.print(f"llamadoc: {line}")
                if written is not None:
                    progress.print(f"llamadoc: wrote {written}")

        models = _server(o)
        with Reader(o["model"], mmproj=o["mmproj"], gpu_layers=o["gpu_layers"], threads=o["threads"], ctx=o["ctx"],
                    max_tokens=o["max_tokens"], verbose=o["verbose"], config=o["config"], notify=notify,
                    guard=policy, models=models, settings=models.settings if models else None) as reader:
            batch: Callable[..., Any] = reader.run_batch
            if cluster is not None:
                from llamadoc import ray

                batch = functools.partial(ray.run_batch, reader, cluster=cluster)
            report = batch(
                task, o["files"], options, output=output, select=select, fail_on=fail_on, force=o["force"],
                events=Events(on_start=started, on_page=progress.page, on_document=finished, notify=notify),
            )
    if report.documents > 1 and not quiet:
        for line in report.summary():
            say(line)
    raise typer.Exit(int(report.exit_code))


def _server(o: dict[str, Any]) -> Any:
    """A running server's models, when --server (or LLAMADOC_HOST) names one: never a silent local load."""
    if not o["server"]:
        return None
    from llamadoc.config import load_settings
    from llamadoc.models.remote import ServerModels

    return ServerModels(o["server"], load_settings(o["config"]), o["model"], os.environ.get("LLAMADOC_API_KEY"))


@app.command(epilog=EXIT_CODES)
@handles_errors
def ask(
    files: Files,
    question: Annotated[str, typer.Option("--question", "-q", help="The question to answer.", show_default=False)],
    per_page: Annotated[bool, typer.Option("--per-page", help="Also print each page's own answer.")] = False,
    all_pages: Annotated[bool, typer.Option(
        "--all-pages", help="Read pages the text layer shows are irrelevant.")] = False,
    model: Model = None, mmproj: Mmproj = None, fmt: Format = "text", output: Output = None,
    pages: Pages = None, password: Password = None, dpi: Dpi = None, max_pixels: MaxPixels = None,
    gpu_layers: GpuLayers = -1, threads: Threads = None, ctx: Ctx = 0, max_tokens: MaxTokens = 512,
    temperature: Temperature = 0.0, seed: Seed = 0, include: Include = None, exclude: Exclude = None,
    force: Force = False, shard: Shard = None, fail_on: FailOn = None, quiet: Quiet = False,
    guard: GuardMode = "block", guard_model: GuardModel = None,
    guard_threshold: GuardThreshold = None, guard_categories: GuardCategories = None, config: Config = None,
    verbose: Verbose = False, include_body: IncludeBody = False, server: Server = None,
    ray: Ray = None, workers: Workers = None, cpus_per_worker: CpusPerWorker = None,
) -> None:
    """Answer a question about each document, citing the pages it rests on."""
    from llamadoc.tasks import Ask

    _run(lambda: Ask(question, all_pages=all_pages), locals(), per_page=per_page)


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
    verbose: Verbose = False, include_body: IncludeBody = False, server: Server = None,
    ray: Ray = None, workers: Workers = None, cpus_per_worker: CpusPerWorker = None,
) -> None:
    """Transcribe each document to Markdown, page by page."""
    from llamadoc.tasks import Describe

    _run(Describe, locals())


@app.command(epilog=EXIT_CODES)
@handles_errors
def extract(
    files: Files,
    schema: Annotated[str, typer.Option(
        "--schema", "-s", help="JSON Schema (.json, or .yaml/.yml).", show_default=False)],
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
    verbose: Verbose = False, include_body: IncludeBody = False, server: Server = None,
    ray: Ray = None, workers: Workers = None, cpus_per_worker: CpusPerWorker = None,
) -> None:
    """Extract fields as JSON, decoding constrained by a JSON Schema and validated after."""
    from llamadoc.tasks import Extract, load_schema

    _run(lambda: Extract(schema=load_schema(schema), schema_path=schema, embedded=embedded), locals())


@app.command()
@handles_errors
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on; any but loopback needs --api-key.")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 11435,
    model: Model = None, mmproj: Mmproj = None, guard: GuardMode = "block", guard_model: GuardModel = None,
    keep_alive: Annotated[str, typer.Option("--keep-alive", help="Unload after this long idle: 5m, 1h, -1 never.")
                          ] = "5m",
    max_queue: Annotated[int, typer.Option("--max-queue", help="Requests that may wait; more get 503.")] = 16,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="LLAMADOC_API_KEY", help="Require this Bearer token on every route.")] = None,
    preload: Annotated[bool, typer.Option("--preload", help="Load the models now, not on the first request.")] = False,
    gpu_layers: GpuLayers = -1, threads: Threads = None, ctx: Ctx = 0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Longest answer a request may have.")] = 1024,
    max_body_mb: Annotated[int, typer.Option("--max-body-mb", help="Largest request body, in MiB.")] = 64,
    config: Config = None, verbose: Verbose = False,
) -> None:
    """Keep the models loaded for Ollama, OpenAI and llamadoc clients (and --server)."""
    o = dict(locals())
    from llamadoc.guard import GuardPolicy
    from llamadoc.server import serve as run
    from llamadoc.server.options import ServeOptions, parse_duration

    policy = GuardPolicy(mode=o.pop("guard"), model=o.pop("guard_model"))
    idle = parse_duration(o.pop("keep_alive"))
    try:
        run(ServeOptions(**o, guard=policy, keep_alive=idle), notify=say)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: a server has no documents to keep, it just stops
        say("stopped")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None


def main(argv: Iterable[str] | None = None) -> None:
    from llamadoc import interrupt

    interrupt.install()  # first of all: a Ctrl-C from now on ends in exit 130 and a message
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")  # an abort in ggml should not dump gdb output
    try:
        app(args=list(argv) if argv is not None else None, prog_name="llamadoc")
    except KeyboardInterrupt:  # before a command started, or after it ended
        sys.exit(int(ExitCode.INTERRUPTED))
    except SystemExit:
        interrupt.exiting()  # the exit code is decided: a signal while Python shuts down must not replace it
        raise
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(int(ExitCode.FAILED))
