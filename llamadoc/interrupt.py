"""Ctrl-C and SIGTERM that always stop a run, even when they land inside llama.cpp.

llama.cpp calls back into Python for its log lines. A KeyboardInterrupt raised while
such a callback runs is swallowed by ctypes ("Exception ignored on calling ctypes
callback function"), as one raised in a finalizer (``__del__``, which llama-cpp-python's
objects have) is, and the batch would go on. So the handler never raises there: it
records the signal, and the run raises it at its next check (between pages), which
the pipeline makes after every engine call. Elsewhere it raises at once, as Python's
own handler does. The CLI installs it; a library caller keeps its own handlers.
"""

from __future__ import annotations

import signal
import sys
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
    if threading.current_thread() is not threading.main_thread():
        return  # signals are only ever handled on the main thread
    if signal.getsignal(signal.SIGINT) is _handler:
        return  # installed already: keep what it recorded
    _requested = None
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    sys.unraisablehook = _unraisable


def _unraisable(report: Any) -> None:
    """Once the run is stopping, the finalizers of objects an interrupted call left half-built
    (llama-cpp-python's raise AttributeError) have nothing to say to the user."""
    if _requested is None:
        sys.__unraisablehook__(report)


def _handler(signum: int, frame: FrameType | None) -> None:
    global _requested
    if _requested is not None:
        return  # already stopping: a second Ctrl-C must not break the clean-up of the first
    _requested = signum
    depth, f = 0, frame
    while f is not None and depth < 64:
        if f.f_code in _callbacks or f.f_code.co_name == "__del__":
            return  # raising here would be lost (ctypes and finalizers swallow it): check() raises it
        f, depth = f.f_back, depth + 1
    raise KeyboardInterrupt


def exiting() -> None:
    """Ignore further signals: the process is on its way out with its exit code (130 after a
    Ctrl-C, or the finished run's). At shutdown Python puts back the default handlers, which
    would kill it by signal instead.

    And clear CPython's mark of an unhandled KeyboardInterrupt. CPython sets it when one leaves
    code that exec() runs from a string, even if it is caught later (dataclasses build their
    methods that way while modules import, so a signal then sets it), and `python -m` then
    ends the process killed by SIGINT, not with the exit code the run chose (0 for a service's
    SIGTERM). CPython clears the mark each time exec() starts on a string."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    exec("None")  # a constant string: see above


def check() -> None:
    """Raise the KeyboardInterrupt a deferred signal asked for."""
    if _requested is not None:
        raise KeyboardInterrupt


def requested() -> int | None:
    """The signal that stopped the run, if any (SIGINT or SIGTERM)."""
    return _requested
