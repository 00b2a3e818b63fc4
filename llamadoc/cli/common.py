"""What every command shares: messages on stderr, and the one place errors become exit codes.

As httpie's ``raw_main`` does: a user's mistake is one line and its exit code; a bug
is "internal error" and exit 1; ``--traceback`` (a root option) or
``LLAMADOC_RAISE_ERRORS=1`` re-raises instead, for debugging and for tests.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from llamadoc.errors import ExitCode, LlamadocError

F = TypeVar("F", bound=Callable[..., Any])
RAISE_ENV = "LLAMADOC_RAISE_ERRORS"
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
    return _root["traceback"] or os.environ.get(RAISE_ENV, "") not in ("", "0")


def handles_errors(fn: F) -> F:
    """One place maps exceptions to one-line messages and exit codes."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, BrokenPipeError):
            raise
        except LlamadocError as err:
            if raise_errors():
                raise
            say(f"error: {err}")
            raise typer.Exit(int(err.exit_code)) from None
        except KeyboardInterrupt:
            if raise_errors():
                raise
            say("interrupted; finished documents are kept")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
        except Exception as err:  # a bug: say so plainly, offer the traceback
            if raise_errors():
                raise
            say(f"internal error: {type(err).__name__}: {err} "
                "(rerun as `llamadoc --traceback ...` to see where, and report it)")
            raise typer.Exit(int(ExitCode.FAILED)) from None

    return wrapper  # type: ignore[return-value]
