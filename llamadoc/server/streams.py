"""Request bodies read as JSON, and streamed responses that always let go of their generation."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from llamadoc.server.failures import ApiError


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else {}
    except (ValueError, RecursionError):
        raise ApiError(400, "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


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
