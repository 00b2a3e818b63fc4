"""One exception hierarchy. Every error knows its exit code and says how to fix it.

The faces map these to one-line messages (the CLI) or error bodies (the server);
nothing else in the package prints errors. The rule for the exit code: 2 when the
command or the configuration must change before a retry can work, 1 when the run
itself failed (a document, a download, the machine's memory).
"""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # some document failed
    USAGE = 2  # usage or configuration error
    BLOCKED = 3  # the guard withheld something
    INTERRUPTED = 130


class LlamadocError(Exception):
    """Base class. ``str(err)`` is the one-line message shown to the user."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(LlamadocError):
    """Bad arguments or options: nothing was processed."""

    exit_code = ExitCode.USAGE


class ConfigError(LlamadocError):
    """A configuration file or environment variable is wrong."""

    exit_code = ExitCode.USAGE


class ModelError(LlamadocError):
    """A model file is missing, unreadable, or not the kind the job needs."""

    exit_code = ExitCode.USAGE


class OutputError(LlamadocError):
    """The output folder (-o) cannot be used: checked before any model loads."""

    exit_code = ExitCode.USAGE


class WriteFailed(LlamadocError):
    """A result file could not be written: that document's failure (exit 1), not the batch's."""

    exit_code = ExitCode.FAILED

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot write {path}: {reason}")
        self.path = path


class ResourceError(LlamadocError):
    """The machine lacks what the run needs (memory for the model or its computation)."""

    exit_code = ExitCode.FAILED


class GuardError(LlamadocError):
    """The guard cannot run as configured."""

    exit_code = ExitCode.USAGE


class DownloadError(LlamadocError):
    """A model could not be fetched or verified."""

    exit_code = ExitCode.FAILED


class DocumentError(LlamadocError):
    """One document (or page) cannot be read. Recorded in its result; the batch goes on."""

    exit_code = ExitCode.FAILED


class PageError(DocumentError):
    """One page cannot be processed (for example it does not fit the context)."""


class ContextFull(PageError):
    """A prompt needs ``need`` positions and the loaded context holds ``have``: a server may load
    the model again with a larger context (up to its trained length) or say which to ask for."""

    def __init__(self, message: str, need: int, have: int, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.need, self.have = need, have


class EngineError(LlamadocError):
    """The inference engine failed on a request."""

    exit_code = ExitCode.FAILED


class ClusterError(LlamadocError):
    """The Ray cluster of a --ray batch cannot be reached, or lost its workers past their retries."""

    exit_code = ExitCode.FAILED
