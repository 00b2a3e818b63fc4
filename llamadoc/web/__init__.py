"""What the local web faces share (`llamadoc serve`, `llamadoc review`): who may call them from
where (access.py: Origin and Host as Ollama checks them), the listening socket, and how a
signal stops them (stopping.py). Below the faces, so neither imports the other; Starlette and
uvicorn load only with access.py and stopping.py, inside a face.
"""

from __future__ import annotations

import socket

from llamadoc.errors import UsageError


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
