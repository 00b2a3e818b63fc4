"""What one request may cost the server, and the turns requests take at what is shared.

The event loop only routes: images are decoded, guard prompts judged and document jobs run on
worker threads, each kind under its own limit (anyio's CapacityLimiter, which lets waiters in
the order they came), so a burst of one kind waits its turn without holding a thread, and never
starves the others: 41 abandoned uploads once held all 40 of anyio's default threads, and
/api/tags waited behind them.

A request's text is limited (413 past --max-prompt-kb), its images are refused past a pixel
ceiling before decoding and decoded no larger than the model's budget (inputs/raster.py), and
the document routes read at most --max-pages pages of a document.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from anyio import CapacityLimiter, to_thread
from starlette.requests import Request

from llamadoc.server.failures import ApiError
from llamadoc.server.resident import Resident

if TYPE_CHECKING:
    from PIL.Image import Image

    from llamadoc.engines.base import Message
    from llamadoc.server.chat import Turn

T = TypeVar("T")
DECODERS = 2  # images decoded at once: each may briefly hold a few hundred MB at the ceiling
JUDGES = 4  # requests with guard work under way (the guard judges one prompt at a time)
JOBS = 2  # document jobs running at once; their pages share the engine's batches anyway
PARSERS = 1  # large JSON bodies parsed at once: json.loads holds the GIL, and a parsed body its memory


# The limits of each event loop (one per server; the tests run several), made on first use.
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, CapacityLimiter]] = \
    weakref.WeakKeyDictionary()


@dataclass
class Bounds:
    """The server's stop flag (app.state.bounds): set the moment SIGTERM or Ctrl-C arrives."""

    stopping: threading.Event = field(default_factory=threading.Event)


def bounds(request: Request) -> Bounds:
    found: Bounds = request.app.state.bounds
    return found


def limiter(kind: str) -> CapacityLimiter:
    kinds = _limiters.setdefault(asyncio.get_running_loop(), {})
    if kind not in kinds:
        kinds[kind] = CapacityLimiter({"decode": DECODERS, "guard": JUDGES, "jobs": JOBS, "parse": PARSERS}[kind])
    return kinds[kind]


async def run(kind: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a worker thread, in its kind's turn."""
    return await to_thread.run_sync(fn, *args, limiter=limiter(kind))


def budget(resident: Resident) -> int:
    """The pixels a page image is read at: the model's budget, never past the ceiling."""
    return min(resident.max_pixels, resident.options.max_image_pixels)


async def decode(resident: Resident, data: bytes, label: str) -> Image:
    """A request's image, decoded off the event loop in its turn."""
    from llamadoc.server.chat import page_image

    return await run("decode", page_image, data, label, budget(resident), resident.options.max_image_pixels)


async def decode_conversation(resident: Resident, turns: list[Turn]) -> list[Message]:
    """A conversation as the engine takes it: its text within --max-prompt-kb (checked first, as
    it costs nothing), then its images decoded as any request's (``decode``), the history's
    too: chat clients send every earlier image again with each turn. The engines know an image
    again by its pixels, and the same bytes decode to the same pixels, so a follow-up question
    still finds it encoded."""
    from llamadoc.server.chat import with_images

    check_prompt(resident, *(t.text for t in turns))
    return await with_images(turns, resident.reads_one_image(), lambda data, label: decode(resident, data, label))


def check_prompt(resident: Resident, *texts: str | None) -> None:
    """413 when a request's text is over --max-prompt-kb: the guard would judge it chunk by
    chunk, and the engine refuse it only after."""
    most = resident.options.max_prompt
    size = 0
    for text in texts:
        if text:
            size += len(text.encode("utf-8", errors="surrogatepass"))
    if size > most:
        raise ApiError(413, f"the request's text is {size >> 10:,} KiB, over this server's limit of "
                            f"{most >> 10:,} KiB (--max-prompt-kb)", code="request_too_large")
