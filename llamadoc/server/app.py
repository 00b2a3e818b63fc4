"""The ASGI app: every route behind the API key and the body limit, every error in its API's shape,
and the keep-alive reaper. Starlette (routing, streaming, uploads) and uvicorn (HTTP/1.1):
small, well kept, and all the server needs; FastAPI would add pydantic models we do not use.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import socket
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable, Mapping

from anyio import to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llamadoc.errors import LlamadocError
from llamadoc.server import documents_api, engine_api, http, ollama_api, openai_api
from llamadoc.server.accesslog import AccessLog
from llamadoc.server.bounds import Bounds
from llamadoc.server.failures import ApiError, body, status_of
from llamadoc.server.resident import Resident
from llamadoc.web.access import Access, Gate, default_origins

REAP_S = 1.0  # how often idle models are checked against keep-alive
BODY_IDLE_S = 20.0  # seconds a request body may go without a byte
CLOSE_S = 3.0  # seconds the engine gets to stop at shutdown; then the process exits without unloading it
BODIES_HELD = 4  # request bodies of the largest size held at once, all connections together


def _error(path: str, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None,
           err: LlamadocError | None = None) -> Response:
    return JSONResponse(body(path, status, message, code, err), status_code=status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error(request.url.path, exc.status, exc.message, exc.code, exc.headers)


async def _library_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LlamadocError)
    return _error(request.url.path, status_of(exc), str(exc), err=exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(request.url.path, exc.status_code, str(exc.detail))


async def _bug(request: Request, exc: Exception) -> Response:
    """A bug: its traceback to the server's stderr (the same one at most once a minute), one line
    to the client. Starlette raises it on after this answer, for uvicorn's log: server/http.py
    drops that second copy."""
    if http.first_in_a_while(f"{type(exc).__name__}: {exc}"):
        traceback.print_exception(exc, file=sys.stderr)
    return _error(request.url.path, 500, f"internal error: {type(exc).__name__}: {exc} (see the server's log)")


class Guarded:
    """Pure ASGI middleware: the Bearer key on every route, then the body limit.

    The body is read whole (up to the limit) before the app sees it, so an oversized request
    gets 413 before any of it is parsed; later reads pass through, so a streaming route still
    hears that its client went away. The bodies held at once, all connections together, are
    limited to BODIES_HELD of the largest size: past that a request is answered 503 (retry),
    not held, so 256 connections cannot each hold 64 MiB.
    """

    def __init__(self, app: ASGIApp, api_key: str | None, max_body: int, body_timeout: float = 60.0) -> None:
        self.app, self.api_key, self.max_body, self.body_timeout = app, api_key, max_body, body_timeout
        self.held, self.most_held = 0, BODIES_HELD * max_body  # bytes; one event loop: no lock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self.api_key is not None and not self._authorised(scope):
            response = _error(path, 401, "a valid API key is required (Authorization: Bearer KEY)",
                              code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await self._too_large(path, scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        try:
            deadline = time.monotonic() + self.body_timeout
            while True:
                try:  # a body that trickles in, or stops, must not hold its connection for good
                    wait = min(BODY_IDLE_S, deadline - time.monotonic())
                    message = await asyncio.wait_for(receive(), max(wait, 0.001))
                except TimeoutError:
                    await _error(path, 408, f"the request body did not arrive within {self.body_timeout:g} s "
                                            f"(or stopped for {BODY_IDLE_S:g} s)", code="request_timeout")(
                        scope, receive, send)
                    return
                if message["type"] != "http.request":
                    return  # the client went away mid-body: nothing to answer, no job to start
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                self.held += len(chunks[-1])
                if size > self.max_body:
                    await self._too_large(path, scope, receive, send)
                    return
                if self.held > self.most_held:
                    await _error(path, 503, "the server is receiving too many large requests at once; retry shortly",
                                 code="server_busy", headers={"Retry-After": "1"})(scope, receive, send)
                    return
                if not message.get("more_body", False):
                    break
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
        finally:
            self.held -= size

    def _authorised(self, scope: Scope) -> bool:
        assert self.api_key is not None
        given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    async def _too_large(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        mb = self.max_body >> 20
        response = _error(path, 413, f"the request body is over the server's limit of {mb} MiB",
                          code="request_too_large")
        await response(scope, receive, send)


def build(resident: Resident, notify: Callable[[str], None] = lambda _m: None,
          mounts: Mapping[str, ASGIApp] | None = None) -> Starlette:
    options = resident.options

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        http.quiet_repeats()
        http.repeats_once(asyncio.get_running_loop())
        if options.preload:
            await to_thread.run_sync(resident.engine)
            if resident.guard is not None:
                await to_thread.run_sync(lambda: resident.guard.engine if resident.guard else None)
        reaper = asyncio.ensure_future(_reap(resident, notify))
        try:
            yield
        finally:
            reaper.cancel()
            app.state.bounds.stopping.set()
            closing = asyncio.ensure_future(to_thread.run_sync(resident.close, abandon_on_cancel=True))
            # Every generation is cancelled (resident.close) and stops at its next decoding step; a
            # step that cannot stop (a long prompt's prefill, an image's encoding) must not hold the
            # process for its whole length.
            try:
                await asyncio.wait_for(asyncio.shield(closing), CLOSE_S)
            except TimeoutError:
                app.state.abandoned = True

    app = Starlette(
        routes=[*ollama_api.routes, *openai_api.routes, *documents_api.routes, *engine_api.routes,
                *(Mount(prefix, app=mounted) for prefix, mounted in (mounts or {}).items())],
        exception_handlers={ApiError: _api_error, LlamadocError: _library_error, HTTPException: _http_error,
                            Exception: _bug},
        lifespan=lifespan,
    )
    app.state.resident = resident
    app.state.bounds = Bounds()
    app.state.abandoned = False  # set when the engine was still busy at shutdown
    app.add_middleware(Guarded, api_key=options.api_key, max_body=options.max_body, body_timeout=options.body_timeout)
    # Host and Origin are checked before the key, and preflights (which carry no key) answered.
    app.add_middleware(Gate, access=Access(origins=(*default_origins(), *options.origins),
                                           hosts=(*options.hosts, socket.gethostname().lower()), bound=options.host),
                       shape=body)
    # Added last, so outermost: the log sees every refusal, the Host's, the origin's, the key's and the limit's.
    app.add_middleware(AccessLog, log=notify)
    return app


async def _reap(resident: Resident, notify: Callable[[str], None]) -> None:
    while True:
        await asyncio.sleep(REAP_S)
        if await to_thread.run_sync(resident.unload_if_idle):
            notify(f"unloaded {resident.name} after {resident.keep_alive:g} s without a request")
