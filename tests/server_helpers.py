"""A real llamadoc server on a free loopback port, in a thread of the test process (so a test can
read the engine's batch sizes), driven by the real ollama and openai clients."""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llamadoc.server.options import ServeOptions
from llamadoc.server.resident import Resident


@dataclass
class Served:
    url: str
    resident: Resident

    def ollama(self, **kwargs: object):  # type: ignore[no-untyped-def]
        import ollama

        return ollama.Client(host=self.url, **kwargs)

    def openai(self, api_key: str = "unused"):  # type: ignore[no-untyped-def]
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0)

    @property
    def batch_sizes(self) -> list[int]:
        scheduler = self.resident.batcher.scheduler
        return list(scheduler.batch_sizes) if scheduler is not None else []


@contextlib.contextmanager
def offline_home(home: Path) -> Iterator[None]:
    """For a server made outside one test (a module's): its own home, and never the network."""
    import pytest

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLAMADOC_HOME", str(home))
        mp.setenv("LLAMADOC_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@contextlib.contextmanager
def serving(log: list[str] | None = None, mounts: dict[str, object] | None = None,
            **options: object) -> Iterator[Served]:
    """``llamadoc serve`` with these ServeOptions (port: any free one), until the block ends;
    the server's stderr lines (access lines among them) go to ``log`` when given; ``mounts``:
    other faces' apps by prefix, as the CLI mounts them (serve --review)."""
    from llamadoc.server import http, listen
    from llamadoc.server.app import build
    from llamadoc.web.stopping import Server

    opts = ServeOptions(**{"threads": 1, **options, "port": 0})  # type: ignore[arg-type]
    sock = listen(opts.host, 0)
    say = log.append if log is not None else (lambda _m: None)
    resident = Resident(opts, notify=say)
    app = build(resident, say, mounts=mounts)  # type: ignore[arg-type]
    server = Server(http.config(app, opts, say), app.state.bounds.stopping)  # serve()'s own settings
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield Served(f"http://127.0.0.1:{sock.getsockname()[1]}", resident)
    finally:
        server.should_exit = True
        thread.join(30)


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + b64(path)
