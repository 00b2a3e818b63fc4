"""uvicorn's server as the web faces run it (`llamadoc serve`, `llamadoc review`): a stop is heard
whenever its signal lands, and the face, not uvicorn, decides the exit code.

uvicorn installs its signal handlers only once its event loop runs, and raises the signal again
after it stops. Announced before that, a server could miss a SIGTERM sent on hearing it: the
CLI's own handler took it (interrupt.py), and the server served on. Here the handlers are in
place before the loop starts, a signal the CLI's handler had to defer is acted on, the face's
"listening" line is said only once the server accepts, and a signal is not raised again.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import uvicorn

from llamadoc import interrupt


class Server(uvicorn.Server):
    """uvicorn's server, telling ``stopping`` the moment a stop is asked for; ``signalled`` is the
    signal that stopped it (SIGINT: the face exits 130; SIGTERM: 0)."""

    def __init__(self, config: uvicorn.Config, stopping: threading.Event | None = None,
                 started: Callable[[], None] = lambda: None) -> None:
        super().__init__(config)
        self.stopping = stopping or threading.Event()
        self.signalled: int | None = None
        self._started = started

    async def startup(self, sockets: list[Any] | None = None) -> None:
        """uvicorn's, then ``started`` once the sockets accept with this server's handlers in place."""
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self._started()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.signalled = self.signalled or sig
        self.stopping.set()
        super().handle_exit(sig, frame)

    def run(self, sockets: list[Any] | None = None) -> None:
        """uvicorn's, with this server's signal handlers from before the event loop exists: a
        signal while asyncio starts would raise there and leave uvicorn's coroutine unawaited."""
        with self.capture_signals():
            super().run(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """As uvicorn's, but a signal deferred before is acted on, and none is raised again once the
        server has stopped."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        if (early := interrupt.requested()) is not None and self.signalled is None:
            self.handle_exit(early, None)  # deferred by the CLI's handler before this one took over
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
