"""`llamadoc serve`: one process keeps the models loaded and answers Ollama's and OpenAI's HTTP
APIs, llamadoc's own document routes, and `llamadoc ask|describe|extract --server`.

A face over the library core, like the CLI: it runs the Reader and its pipeline, never a
second code path. Its web stack is the optional extra ``llamadoc[serve]``, imported only
when a server starts, so `llamadoc --help` never loads it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from llamadoc.errors import UsageError
from llamadoc.server.options import ServeOptions

EXTRA = "pip install 'llamadoc[serve]'"


def serve(options: ServeOptions, notify: Callable[[str], None] = lambda _m: None) -> None:
    """Resolve the models, listen, and serve until SIGINT or SIGTERM."""
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise UsageError("llamadoc serve needs its web stack", hint=EXTRA) from None
    from llamadoc.server.app import build
    from llamadoc.server.resident import Resident

    sock = listen(options.host, options.port)
    resident = Resident(options, notify)
    host, port = sock.getsockname()[:2]
    notify(f"serving {resident.name} at http://{host}:{port} (Ollama /api/*, OpenAI /v1/*, llamadoc /v1/documents/*)")
    config = uvicorn.Config(build(resident, notify), log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before any model loads: a taken port is one line, not a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as err:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({err.strerror or err})",
                         hint="pick another --port, or stop what holds it") from None
    sock.listen(128)
    return sock
