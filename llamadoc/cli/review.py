"""`llamadoc review OUT`: the review page over a finished batch, in the browser. Thin: the
review face (llamadoc/review) serves the page and keeps the decisions; this parses and starts it."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from llamadoc.cli.common import Config, say
from llamadoc.errors import ExitCode


def review(
    folder: Annotated[Path, typer.Argument(help="The -o folder of a finished `llamadoc extract` batch.",
                                           show_default=False)],
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (default: any free one).")] = 0,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Print the page's address; open no browser.")
                          ] = False,
    documents: Annotated[list[Path] | None, typer.Option(
        "--documents", help="Where the batch's documents are, when not below the folder the batch ran in "
        "(repeatable).")] = None,
    config: Config = None,
) -> None:
    """Review a finished batch in the browser: the documents that need a look first, each value
    over its page, checks re-run as you correct, approve or reject with a note. Decisions go to
    FOLDER/.review (an audit log and the approved values); the results stay as the model wrote
    them, and `llamadoc export` uses the approved values.

    Keys: j/k next/previous document, n next field that needs a look, a approve, r reject, ? all keys.
    Exit codes: 0 stopped (SIGTERM), 130 Ctrl-C, 2 usage error."""
    from llamadoc import interrupt
    from llamadoc.config import load_settings
    from llamadoc.outputs.decisions import REVIEW_DIR
    from llamadoc.review import ReviewOptions
    from llamadoc.review import review as run

    settings = load_settings(config)  # LLAMADOC_ORIGINS, as the server reads it
    options = ReviewOptions(out=folder, port=port, browser=not no_browser, origins=settings.origins,
                            documents=tuple(documents or ()))
    stopped = f"stopped; every decision is kept in {folder / REVIEW_DIR}"
    try:
        run(options, notify=say)
    except KeyboardInterrupt:  # Ctrl-C, or a signal before the page served
        say(stopped)
        raise typer.Exit(int(ExitCode.INTERRUPTED if interrupt.requested() != signal.SIGTERM else ExitCode.OK)
                         ) from None
    say(stopped)  # SIGTERM: exit 0
