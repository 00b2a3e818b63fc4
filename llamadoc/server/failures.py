"""Errors as each API shapes them: one line for the client, the right status, never a traceback.

A route raises ApiError (or a LlamadocError, whose class decides the status); the app's one
handler writes it in the shape of the API the path belongs to: Ollama's ``{"error": "..."}``,
OpenAI's ``{"error": {"message", "type", "param", "code"}}``, and for llamadoc's own routes
the error's class too, so a remote Reader raises the same error a local run would.
"""

from __future__ import annotations

from typing import Any

from llamadoc import errors
from llamadoc.errors import LlamadocError
from llamadoc.models.wire import error_to_wire

SHOWN = 100  # characters of a client's text (a model name, a path) repeated in a message or the log


def shown(text: object, most: int = SHOWN) -> str:
    """What a client sent, as it may be repeated: quoted, each control character escaped (a
    newline in a model name must not start a forged line in the log), and at most ``most``
    characters (a 20 MiB name is not written back 20 MiB long)."""
    quoted = repr(text if isinstance(text, str) else str(text))
    return quoted if len(quoted) <= most else quoted[: most - 4] + "...'"


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def withheld(message: str) -> ApiError:
    """The guard withheld a request or its answer (OpenAI's code for what its own filter refuses)."""
    return ApiError(400, f"withheld by the guard: {message}", code="content_policy_violation")


def status_of(err: LlamadocError) -> int:
    """Usage and content errors are the client's (4xx); the rest are this server's."""
    if isinstance(err, errors.DownloadError):
        return 502
    if isinstance(err, errors.UsageError | errors.ConfigError | errors.ModelError | errors.GuardError
                  | errors.DocumentError | errors.OutputError):
        return 400
    if isinstance(err, errors.ResourceError):
        return 503
    return 500


def body(path: str, status: int, message: str, code: str | None = None,
         err: LlamadocError | None = None) -> dict[str, Any]:
    if path.startswith("/api/") or path == "/":
        return {"error": message}
    if path.startswith(("/v1/chat/", "/v1/models")):
        kind = "invalid_request_error" if status < 500 else "server_error"
        if status == 401:
            kind = "authentication_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}
    if err is not None:
        return error_to_wire(err)
    return {"error": message, "kind": None, "message": message, "hint": None}
