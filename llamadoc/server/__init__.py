"""`llamadoc serve`: one process keeps the models loaded and answers Ollama's and OpenAI's HTTP
APIs, llamadoc's own document routes, and `llamadoc ask|describe|extract --server`.

A face over the library core, like the CLI: it runs the Reader and its pipeline, never a
second code path. Its web stack is the optional extra ``llamadoc[serve]``, imported only
when a server starts, so `llamadoc --help` never loads it.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

from llamadoc.errors import ExitCode, UsageError
from llamadoc.server.options import ServeOptions, is_loopback
from llamadoc.web import listen

EXTRA = "pip install 'llamadoc[serve]'"


def serve(options: ServeOptions, notify: Callable[[str], None] = lambda _m: None,
          mounts: Mapping[str, Any] | None = None) -> None:
    """Resolve the models, listen, and serve until SIGINT (KeyboardInterrupt) or SIGTERM (returns).
    ``mounts``: other faces' ASGI apps by route prefix (the CLI mounts the review page at /review),
    behind the server's origin, host, key and body rules."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UsageError("llamadoc serve needs its web stack", hint=EXTRA) from None
    from llamadoc.server import http
    from llamadoc.server.app import build
    from llamadoc.server.resident import Resident
    from llamadoc.web.stopping import Server

    if not is_loopback(options.host):  # said first: a wrong --host is the likely mistake
        notify(f"warning: plain HTTP on {options.host}: the API key and every document cross the network "
               "unencrypted; put a TLS reverse proxy (Caddy, nginx) in front and keep llamadoc on 127.0.0.1")
    sock = listen(options.host, options.port)
    resident = Resident(options, notify)
    host, port = sock.getsockname()[:2]
    app = build(resident, notify, mounts)
    routes = "".join(f", {prefix}/" for prefix in mounts or {})
    serving = (f"serving {resident.name} at http://{host}:{port} "
               f"(Ollama /api/*, OpenAI /v1/*, llamadoc /v1/documents/*{routes})")
    # Said once the server listens with its own signal handlers: a SIGTERM sent on hearing it is heard.
    server = Server(http.config(app, options, notify), app.state.bounds.stopping, started=lambda: notify(serving))
    server.run(sockets=[sock])
    if app.state.abandoned:  # the engine is inside a step that cannot stop: unloading it now could crash
        notify("stopped; the engine was mid-step (a prompt or an image), so its model is left to the process's exit")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(ExitCode.INTERRUPTED) if server.signalled == signal.SIGINT else 0)
    if server.signalled == signal.SIGINT:
        raise KeyboardInterrupt

