"""`llamadoc review OUT`: a page in the browser where a person goes through a finished batch,
checks what needs a look, corrects values and approves or rejects each document.

A face like the CLI and the server: it reads the results the batch wrote and writes its
decisions beside them (outputs/decisions.py), never into them. It listens on loopback only,
under the server's origin and host rules (web/access.py), and every asset it serves ships in
the package: the page works with the machine offline. `llamadoc serve --review OUT` mounts
the same app under /review/.
"""

from __future__ import annotations

import signal
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamadoc.errors import UsageError

HOST = "127.0.0.1"  # loopback only: the page has no key, and the decisions are the user's
EXTRA = "pip install 'llamadoc[serve]'"


@dataclass(frozen=True)
class ReviewOptions:
    out: Path
    port: int = 0  # 0: any free port
    browser: bool = True
    origins: tuple[str, ...] = ()  # web origins allowed besides the defaults (LLAMADOC_ORIGINS)
    documents: tuple[Path, ...] = ()  # where relative sources are found besides the working directory

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port {self.port} is not a port number")


def app(options: ReviewOptions) -> Any:
    """The review page's ASGI app, for `llamadoc serve` to mount: no origin rules of its own
    (the server's apply)."""
    _web_stack()
    from llamadoc.review.batch import warm
    from llamadoc.review.routes import build

    made = build(options.out, options.documents)
    warm()
    return made


def review(options: ReviewOptions, notify: Callable[[str], None] = lambda _m: None) -> None:
    """Serve the page until Ctrl-C (raises KeyboardInterrupt) or SIGTERM (returns), and open it in
    the browser."""
    _web_stack()
    import uvicorn

    from llamadoc.review.batch import warm
    from llamadoc.review.routes import build
    from llamadoc.web import listen
    from llamadoc.web.access import Access, Gate, default_origins
    from llamadoc.web.stopping import Server

    page = build(options.out, options.documents)
    warm()
    sock = listen(HOST, options.port)
    port = sock.getsockname()[1]
    url = f"http://{HOST}:{port}/"
    hints = ("set LLAMADOC_ORIGINS=ORIGIN for llamadoc review", f"open the page at {url}")
    gated = Gate(page, Access(origins=(*default_origins(), *options.origins), bound=HOST), hints=hints)
    config = uvicorn.Config(gated, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=2)
    batch = page.state.batch
    items = batch.refresh()
    needs = sum(1 for i in items if i.needs_review or i.reasons)

    def started() -> None:  # said once the server accepts, and hears a SIGTERM sent on hearing it
        notify(f"reviewing {len(items)} documents of {options.out} ({needs} need a look) at {url}")
        for problem in batch.problems:
            notify(f"left out: {problem}")
        notify("Ctrl-C stops")

    server = Server(config, started=started)
    if options.browser:
        webbrowser.open(url)  # the socket listens already: the page's first request waits for the server
    try:
        server.run(sockets=[sock])
    finally:
        page.state.holds.close()
    if server.signalled == signal.SIGINT:
        raise KeyboardInterrupt  # Ctrl-C: the command line exits 130; SIGTERM returns, exit 0


def _web_stack() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UsageError("llamadoc review needs the web stack of llamadoc serve", hint=EXTRA) from None
