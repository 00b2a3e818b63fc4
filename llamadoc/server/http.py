"""uvicorn as `llamadoc serve` runs it: connections bounded in number and in time, SIGTERM as a
normal stop, and errors that repeat logged once a minute, not once each.

uvicorn closes a kept-alive connection after an idle timeout, but gives a connection all the
time it wants to send its headers, and accepts connections until the process runs out of file
descriptors (then asyncio logs a traceback per failed accept). The protocol here closes a
connection that has not sent a request's headers within --header-timeout, and one opened while
the cap of open connections is reached; the cap is kept below the file limit.

On SIGTERM (or Ctrl-C) the app hears it at once (Bounds.stopping, through web/stopping.py's
Server): streams end with an error line in their own format, document jobs stop at their next
page, and uvicorn gives what is left ``timeout_graceful_shutdown`` seconds. SIGTERM exits 0, as a
service asked to stop; Ctrl-C 130.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from llamadoc.server.options import ServeOptions

FD_RESERVE = 128  # descriptors kept for models, uploads' spool files, threads and logs
GRACE_S = 3  # seconds open requests get to finish once a stop is asked for
REPEAT_WINDOW_S = 60.0
_FULL_BODY = b'{"error": "too many connections are open; retry shortly"}'
FULL = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(_FULL_BODY), _FULL_BODY))


def connection_cap(wanted: int) -> int:
    """The most connections to keep open: what was asked, below the file limit (raised to its
    hard limit first), so that accept() never fails for want of a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return max(1, min(wanted, soft - FD_RESERVE))


class Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a header timeout and a cap on open connections. Each
    connection it refuses or closes is said in the log (``log``), once a minute with a count,
    as the requests' refusals are said in their access lines."""

    header_timeout = 10.0
    max_connections = 256
    log: Callable[[str], None] = staticmethod(lambda _m: None)
    _once: Once | None = None
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            transport.write(FULL)
            transport.close()
            self._note(f"refused a connection with 503: {self.max_connections} are open, the most allowed "
                       "(--max-connections)")
            return
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.transport is not None:  # None: refused in connection_made, never counted
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        super().data_received(data)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's headers are in: its body has its own deadline
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request's headers, after the idle keep-alive

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()
            self._note(f"closed a connection that sent no request within {self.header_timeout:g} s")

    def _note(self, message: str) -> None:
        record = logging.LogRecord("llamadoc.connections", logging.WARNING, __file__, 0, message, None, None)
        if self._once is None or self._once.filter(record):
            self.log(record.getMessage())


def config(app: Any, options: ServeOptions, log: Callable[[str], None] = lambda _m: None) -> uvicorn.Config:
    """uvicorn's settings for `llamadoc serve` (the tests' servers use them too); ``log`` hears
    of the connections refused or closed, once a minute."""
    cap = connection_cap(options.max_connections)
    protocol = type("Protocol", (Protocol,), {"header_timeout": options.header_timeout, "max_connections": cap,
                                              "log": staticmethod(log), "_once": Once()})
    return uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", http=protocol,
                          timeout_keep_alive=max(1, round(options.idle_timeout)), timeout_graceful_shutdown=GRACE_S,
                          backlog=min(2048, cap))


_seen: dict[str, float] = {}
_seen_lock = threading.Lock()


def first_in_a_while(what: str) -> bool:
    """True the first time ``what`` (its first line) comes up in REPEAT_WINDOW_S: whether to log it."""
    key, now = what.splitlines()[0][:300] if what else "", time.monotonic()
    with _seen_lock:
        if now - _seen.get(key, -REPEAT_WINDOW_S) < REPEAT_WINDOW_S:
            return False
        _seen[key] = now
        if len(_seen) > 1000:
            for k in [k for k, t in _seen.items() if now - t >= REPEAT_WINDOW_S]:
                del _seen[k]
        return True


class Once(logging.Filter):
    """Lets a record through once per minute per message (its first line), then says how many
    were held back: 300 connections failing the same way once wrote 480 MB of tracebacks."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.error" and str(record.msg).strip() == "Exception in ASGI application":
            return False  # the app's own handler (app._bug) has logged it, once a minute
        exc = record.exc_info[1] if record.exc_info else None
        what = f"{type(exc).__name__}: {str(exc)[:200]}" if exc is not None else ""
        key = f"{record.name}:{str(record.msg).splitlines()[0] if record.msg else ''}:{what}"
        now = time.monotonic()
        with self._lock:
            since, held = self._seen.get(key, (0.0, 0))
            if now - since < REPEAT_WINDOW_S:
                self._seen[key] = (since, held + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > 1000:
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < REPEAT_WINDOW_S}
        if held:
            record.msg = f"{record.msg} (and {held} more like it in the last minute)"
        return True


def quiet_repeats() -> None:
    """Every logger the server's errors reach (uvicorn's, asyncio's) repeats itself at most once a
    minute; installed once per process."""
    for name in ("uvicorn", "uvicorn.error", "asyncio", "llamadoc"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, Once) for f in logger.filters):
            logger.addFilter(Once())


def repeats_once(loop: asyncio.AbstractEventLoop) -> None:
    """The event loop's own error reports (a failed accept, a callback's exception) through the
    same once-a-minute filter."""
    once = Once()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        record = logging.LogRecord("asyncio", logging.ERROR, __file__, 0, str(context.get("message")), None, None)
        if once.filter(record):
            exc = context.get("exception")
            extra = f": {type(exc).__name__}: {exc}" if exc is not None else ""
            print(f"llamadoc: {record.getMessage()}{extra}", file=sys.stderr, flush=True)

    loop.set_exception_handler(handler)
