"""`llamadoc export OUT --to csv|xlsx|jsonl|ubl|cii`: a finished batch's results as tables or
e-invoices. Thin: the library (outputs/export.py) reads and writes; this prints and exits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llamadoc.cli.common import say
from llamadoc.errors import ExitCode


def export(
    folder: Annotated[Path, typer.Argument(help="The -o folder of a finished batch (its .json or .jsonl results).",
                                           show_default=False)],
    to: Annotated[str, typer.Option("--to", help="csv (two files), xlsx (two sheets), jsonl, ubl or cii.",
                                    show_default=False)],
    dest: Annotated[Path | None, typer.Option(
        "--dest", help="Where to write (default: FOLDER/export; ubl and cii go into a folder of that name).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No messages, only the exit code.")] = False,
) -> None:
    """Export a finished batch: one row per invoice and per line item with each value's page,
    confidence and review state; or UBL / CII e-invoices for the invoices whose fields are complete.
    Where `llamadoc review` has a decision, its approved values are exported and the row says so.

    Exit codes: 0 all written; 1 some invoice or result file was left out (each is named); 2 usage error."""
    from llamadoc.outputs.export import export as run

    done = run(folder, to, dest)
    if not quiet:
        for line in [*done.notes, *done.skipped]:
            say(line)
        for path in done.written:
            say(f"wrote {path}")
        say(f"{done.rows} invoices ({done.reviewed} reviewed), {len(done.skipped)} left out")
    raise typer.Exit(int(ExitCode.FAILED if done.skipped else ExitCode.OK))
