"""Ctrl-C and SIGTERM that always stop a run, even when they land inside llama.cpp.

llama.cpp calls back into Python for its log lines. A KeyboardInterrupt raised while
such a callback runs is swallowed by ctypes ("Exception ignored on calling ctypes
callback function"), and the batch would go on. So the handler never raises there: it
records the signal, and the run raises it at its next check (between pages), which
the pipeline makes after every engine call. Elsewhere it raises at once, as Python's
own handler does. The CLI installs it; a library caller keeps its own handlers.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

_callbacks: set[CodeType] = set()  # code of the functions C calls back into
_requested: int | None = None


def called_from_c(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a function that C code calls (a ctypes callback): a signal landing in it is deferred."""
    code = getattr(fn, "__code__", None)
    if isinstance(code, CodeType):
        _callbacks.add(code)
    return fn


def install() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt (now, or at the next check)."""
    global _requested
    _requested = None
    if threading.current_thread() is not threading.main_thread():
        return  # signals are only ever handled on the main thread
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def _handler(signum: int, frame: FrameType | None) -> None:
    global _requested
    _requested = signum
    depth, f = 0, frame
    while f is not None and depth < 8:
        if f.f_code in _callbacks:
            return  # raising here would be lost: check() raises it once C has returned
        f, depth = f.f_back, depth + 1
    raise KeyboardInterrupt


def check() -> None:
    """Raise the KeyboardInterrupt a deferred signal asked for."""
    if _requested is not None:
        raise KeyboardInterrupt


def requested() -> int | None:
    """The signal that stopped the run, if any (SIGINT or SIGTERM)."""
    return _requested
