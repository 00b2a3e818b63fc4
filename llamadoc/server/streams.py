"""Request bodies read as JSON, and streamed responses that always let go of their generation."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from llamadoc.server.bounds import run
from llamadoc.server.failures import ApiError

JSON_TYPE = re.compile(r"application/([\w.+-]+\+)?json\s*(;.*)?", re.IGNORECASE)
PARSE_ON_LOOP = 256 << 10  # bytes: bigger bodies are parsed on a worker thread, one at a time
# JSON values one body may hold: a 60 MB body of [[],[],...] parses into 30 million lists,
# about 2 GB. Real requests hold far fewer: the most is /api/generate's context, an int per
# byte of its conversation's JSON (up to 6 per character of text, which --max-prompt-kb bounds).
MAX_JSON_ITEMS = 1_000_000


async def json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object. Only as ``Content-Type: application/json``, or with no type at
    all: a web page can POST text/plain or a form to any address without the browser asking the
    server first, never JSON. A body with no type is read as JSON, as Ollama reads it, because
    LiteLLM's Ollama provider sends its JSON so; a browser's POST without a type (fetch of a bare
    ArrayBuffer) always carries an Origin, which web/access.py has checked by now. Strict JSON
    (no NaN or Infinity) and valid Unicode (no lone surrogates), or a 4xx saying why."""
    kind = request.headers.get("content-type", "").strip()
    if kind and not JSON_TYPE.fullmatch(kind):
        raise ApiError(415, f"send the request as JSON (Content-Type: application/json), not {kind}",
                       code="unsupported_media_type")
    raw = await request.body()
    resident = getattr(request.app.state, "resident", None)
    most = max(MAX_JSON_ITEMS, 8 * resident.options.max_prompt) if resident is not None else MAX_JSON_ITEMS
    body = _parse(raw, most) if len(raw) <= PARSE_ON_LOOP else await run("parse", _parse, raw, most)
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _parse(raw: bytes, most: int = MAX_JSON_ITEMS) -> Any:
    # Counted before parsing, in C: an upper bound of the values (commas in strings count too).
    if raw.count(b",") + raw.count(b"[") + raw.count(b"{") > most:
        raise ApiError(413, f"the request body holds over {most:,} JSON values, more than any request "
                            "this server answers needs", code="request_too_large")
    try:
        body = json.loads(raw, parse_constant=_no_constant) if raw else {}
    except (ValueError, RecursionError):
        raise ApiError(400, "the request body is not JSON") from None
    check_unicode(body)
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_unicode(value: Any) -> None:
    """A \\ud800 escape parses into a string no encoder takes: refused here, not a 500 later."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, "the request holds a lone surrogate (a \\ud800-\\udfff escape on its own): "
                                    "not valid Unicode") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


class Stream(StreamingResponse):
    """A streamed answer that closes its generators when it ends, however it ends: a client
    that goes away mid-stream frees its sequence now, not when the garbage collector gets to it."""

    def __init__(self, content: AsyncIterator[bytes], generation: AsyncIterator[Any] | None,
                 media_type: str) -> None:
        super().__init__(content, media_type=media_type, headers={"Cache-Control": "no-cache"})
        self._closing = [content, generation]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            for gen in self._closing:
                aclose = getattr(gen, "aclose", None)
                if aclose is not None:
                    await aclose()
