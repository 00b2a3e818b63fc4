"""Decoded bytes -> the text a client may see: whole UTF-8 characters, and nothing from a stop text on.

Both engines feed it each token's bytes as they decode. Text that could be the start of a stop
text is held back until the next token settles it, so a streamed answer never shows a stop
text's first characters and then takes them back.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

_UTF8 = codecs.getincrementaldecoder("utf-8")


class TextStream:
    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._stop = tuple(s for s in stop if s)
        self._decoder = _UTF8("replace")
        self._pending = ""
        self.text = ""  # everything handed out so far: the answer, when it ends
        self.stopped = False  # a stop text appeared: the answer ends before it

    def feed(self, piece: bytes) -> str:
        """The text that became final with this token ("" while held back, or once stopped)."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(piece)
        if not self._stop:
            return self._out(len(self._pending))
        found = [i for i in (self._pending.find(s) for s in self._stop) if i >= 0]
        if found:
            self.stopped = True
            out = self._out(min(found))
            self._pending = ""
            return out
        return self._out(len(self._pending) - self._held())

    def finish(self) -> str:
        """The text still held back, once the answer has ended without a stop text."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(b"", final=True)
        return self._out(len(self._pending))

    def _held(self) -> int:
        """Characters at the end that begin some stop text."""
        tail = self._pending
        return max((n for s in self._stop for n in range(min(len(s) - 1, len(tail)), 0, -1)
                    if tail.endswith(s[:n])), default=0)

    def _out(self, n: int) -> str:
        out, self._pending = self._pending[:n], self._pending[n:]
        self.text += out
        return out


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """A finished answer cut before its first stop text, and whether one was found."""
    found = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)
