"""What every command shares: messages on stderr, and the one place errors become exit codes.

As httpie's ``raw_main`` does: a user's mistake is one line and its exit code; a bug
is "internal error" and exit 1; ``--traceback`` (a root option) or
``LLAMADOC_RAISE_ERRORS=1`` re-raises instead, for debugging and for tests. Every command
runs inside ``Commands.invoke``, so no command maps an error itself.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from llamadoc import config, interrupt
from llamadoc.errors import ExitCode, LlamadocError

SERVICES = frozenset({"serve", "review"})  # commands that run until stopped, with no documents of their own
_root = {"traceback": False}  # set by the root command on every run, so one run never leaks into the next

Config = Annotated[Path | None, typer.Option("--config", help="A models.toml that adds or overrides models.")]


def say(message: str) -> None:
    """Progress, warnings and errors: stderr only; stdout carries results."""
    print(f"llamadoc: {message}", file=sys.stderr, flush=True)


def set_traceback(on: bool) -> None:
    """The root option --traceback, for this run."""
    _root["traceback"] = on


def raise_errors() -> bool:
    """True under `llamadoc --traceback ...` or LLAMADOC_RAISE_ERRORS=1."""
    return _root["traceback"] or config.raise_errors()


class Commands(TyperGroup):
    """The root command group: every command (and `models ...`, nested in it) runs in invoke,
    the one place exceptions become one-line messages and exit codes."""

    def invoke(self, ctx: Any) -> Any:  # Any: typer types it with the click it vendors, which is private
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException, BrokenPipeError):
            raise  # the command line's own: usage errors (exit 2), --help, and exits a command chose
        except LlamadocError as err:
            if raise_errors():
                raise
            say(f"error: {err}")
            raise typer.Exit(int(err.exit_code)) from None
        except KeyboardInterrupt:
            if raise_errors():
                raise
            if ctx.invoked_subcommand in SERVICES:  # SIGTERM, even while it starts, is a service's normal stop
                say("stopped")
                raise typer.Exit(int(ExitCode.OK if interrupt.requested() == signal.SIGTERM
                                     else ExitCode.INTERRUPTED)) from None
            say("interrupted; finished documents are kept")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
        except Exception as err:  # a bug: say so plainly, offer the traceback
            if raise_errors():
                raise
            say(f"internal error: {type(err).__name__}: {err} "
                "(rerun as `llamadoc --traceback ...` to see where, and report it)")
            raise typer.Exit(int(ExitCode.FAILED)) from None

