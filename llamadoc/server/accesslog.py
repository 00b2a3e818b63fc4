"""One line on the server's stderr per request: route, model, status, tokens and milliseconds
(a chat request's also whether it streams, its images and tools, and a schema), and for every refusal (a 4xx
or 5xx, or an error inside a stream already under way) its reason.

The routes note the model and the token counts in the request's state; the middleware, outermost,
sees every response, the API key's and the body limit's refusals among them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llamadoc.engines.base import GenerationResponse
from llamadoc.server.failures import SHOWN

MAX_REASON = 300  # characters of a refusal's reason in the log
_KEY = "llamadoc_access"


def _note(request: Request) -> dict[str, Any]:
    state: dict[str, Any] = request.scope.setdefault("state", {}).setdefault(_KEY, {})
    return state


def model(request: Request, name: str) -> None:
    _note(request)["model"] = name


def asked(request: Request, stream: bool, tools: int, images: int, schema: bool) -> None:
    """What a chat request carried: whether it streams, its images, its tools, and a schema."""
    _note(request).update(stream=stream, tools=tools, images=images, schema=schema)


def tokens(request: Request, response: GenerationResponse) -> None:
    _note(request)["tokens"] = (response.prompt_tokens, response.completion_tokens)
    _note(request)["reused"] = response.prompt_reused


def refused(request: Request, reason: str) -> None:
    """An error after the status went out (inside a stream): logged as the refusal it is."""
    _note(request)["reason"] = reason


class AccessLog:
    """Pure ASGI middleware: times each HTTP request and writes its line when the response ends."""

    def __init__(self, app: ASGIApp, log: Callable[[str], None]) -> None:
        self.app, self.log = app, log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        note: dict[str, Any] = scope.setdefault("state", {}).setdefault(_KEY, {})
        status, body = 0, bytearray()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status >= 400 and len(body) < 4096:
                body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            ms = (time.perf_counter() - started) * 1000
            parts = [_plain(scope.get("method", "?")), _plain(scope.get("path", "?")), str(status or "-")]
            if note.get("model"):
                parts.append(f"model={_plain(note['model'])}")
            if "stream" in note:
                stream = "yes" if note["stream"] else "no"
                parts.append(f"stream={stream} images={note['images']} tools={note['tools']}")
                if note["schema"]:
                    parts.append("schema")
            if note.get("tokens"):
                prompt, answer = note["tokens"]
                parts.append(f"tokens={prompt}+{answer}")
                if note.get("reused"):  # prompt tokens an earlier turn left in the cache
                    parts.append(f"reused={note['reused']}")
            parts.append(f"{ms:.0f} ms")
            reason = note.get("reason") or (_reason(bytes(body)) if status >= 400 else None)
            line = " ".join(parts)
            if reason:
                line += f": refused: {_plain(reason, MAX_REASON)}"
            elif status == 0:
                line += ": the client went away before the answer"
            self.log(line)


def _plain(text: str, most: int = SHOWN) -> str:
    """A client's text in one line of the log: uvicorn decodes %0A in a path to a newline, which
    would start a line that looks like the server's own; control characters are escaped, and
    the text cut at ``most`` characters."""
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: most + 1])
    return escaped if len(escaped) <= most and len(text) <= most else escaped[:most] + "..."


def _reason(body: bytes) -> str:
    """The message of an error body, in either API's shape."""
    try:
        value = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip() or "(no reason given)"
    error = value.get("error") if isinstance(value, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error or value)
