"""The command line's entry point: the root command, its commands (the document commands live in
cli.documents, `models` and `doctor` in cli.models), `serve`, and main(). Thin: every command
parses, calls the library, prints, and exits with the library's code.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer

from llamadoc.cli.common import Commands, Config, say, set_traceback
from llamadoc.cli.documents import (
    EXIT_CODES,
    Ctx,
    GpuLayers,
    GuardCategories,
    GuardMode,
    GuardModel,
    GuardThreshold,
    Mmproj,
    Model,
    Threads,
    Verbose,
    ask,
    describe,
    extract,
)
from llamadoc.cli.export import export
from llamadoc.cli.models import doctor, models_app
from llamadoc.cli.review import review
from llamadoc.errors import ExitCode, UsageError

app = typer.Typer(
    cls=Commands,
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


app.command(epilog=EXIT_CODES)(ask)
app.command(epilog=EXIT_CODES)(describe)
app.command(epilog=EXIT_CODES)(extract)
app.command()(export)
app.command()(review)


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on; any but loopback needs --api-key.")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 11435,
    model: Model = None, mmproj: Mmproj = None, guard: GuardMode = "block", guard_model: GuardModel = None,
    keep_alive: Annotated[str, typer.Option("--keep-alive", help="Unload after this long idle: 5m, 1h, -1 never.")
                          ] = "5m",
    max_queue: Annotated[int, typer.Option("--max-queue", help="Requests that may wait; more get 503.")] = 16,
    api_key_file: Annotated[Path | None, typer.Option(
        "--api-key-file", help="Require the Bearer token in this file on every route (or set LLAMADOC_API_KEY).")
    ] = None,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", help="The token itself: visible to every user in `ps`, prefer --api-key-file.")] = None,
    allow_origin: Annotated[list[str] | None, typer.Option(
        "--allow-origin", help="Also let web pages from this origin call (repeatable, * wildcards; also "
        "LLAMADOC_ORIGINS). Default: localhost, 127.0.0.1, 0.0.0.0 and app schemes.")] = None,
    allow_host: Annotated[list[str] | None, typer.Option(
        "--allow-host", help="Also accept this Host name: a LAN name or a reverse proxy's (repeatable).")] = None,
    preload: Annotated[bool, typer.Option("--preload", help="Load the models now, not on the first request.")] = False,
    gpu_layers: GpuLayers = -1, threads: Threads = None, ctx: Ctx = 0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Longest answer a request may have.")] = 1024,
    max_body_mb: Annotated[int, typer.Option("--max-body-mb", help="Largest request body, in MiB.")] = 64,
    max_prompt_kb: Annotated[int, typer.Option("--max-prompt-kb", help="Largest prompt text, in KiB (413).")] = 256,
    max_pages: Annotated[int, typer.Option("--max-pages", help="Pages read of one uploaded document.")] = 100,
    max_connections: Annotated[int, typer.Option("--max-connections", help="Connections open at once.")] = 256,
    guard_threshold: GuardThreshold = None, guard_categories: GuardCategories = None,
    review_folder: Annotated[Path | None, typer.Option(
        "--review", help="Also offer the review page of this finished batch at /review/ (loopback, no API key).")
    ] = None,
    config: Config = None, verbose: Verbose = False,
) -> None:
    """Keep the models loaded for Ollama, OpenAI and llamadoc clients (and --server)."""
    from llamadoc.config import load_settings
    from llamadoc.guard import GuardPolicy, parse_categories
    from llamadoc.server import serve as run
    from llamadoc.server.options import ServeOptions, parse_duration
    from llamadoc.server.options import api_key as resolve_key

    policy = GuardPolicy(mode=guard, model=guard_model, threshold=guard_threshold,
                         categories=parse_categories(guard_categories))
    settings = load_settings(config)  # LLAMADOC_API_KEY and LLAMADOC_ORIGINS, as config reads them
    key = resolve_key(api_key, api_key_file, settings.api_key, warn=say)
    mounts = {}
    if review_folder is not None:
        if key is not None:  # a browser sends no Bearer key with a page, its images or its requests
            raise UsageError("--review serves a page for a browser, which cannot send the API key",
                             hint="serve the review page without a key on 127.0.0.1, or run llamadoc review")
        from llamadoc.review import ReviewOptions
        from llamadoc.review import app as review_app

        mounts["/review"] = review_app(ReviewOptions(out=review_folder, origins=settings.origins))
    options = ServeOptions(
        host=host, port=port, model=model, mmproj=mmproj, guard=policy, keep_alive=parse_duration(keep_alive),
        max_queue=max_queue, api_key=key, preload=preload, threads=threads, gpu_layers=gpu_layers, ctx=ctx,
        max_tokens=max_tokens, max_body_mb=max_body_mb, max_prompt_kb=max_prompt_kb, max_pages=max_pages,
        max_connections=max_connections, origins=(*settings.origins, *(allow_origin or ())),
        hosts=tuple(allow_host or ()), config=config, verbose=verbose)
    run(options, notify=say, mounts=mounts)  # Ctrl-C raises KeyboardInterrupt: Commands.invoke says "stopped", 130
    say("stopped")  # SIGTERM: a service asked to stop, exit 0


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
