"""The protocol every task follows, and the small types it shares with the pipeline.

A task owns its logic: which pages are worth the model (its plan), the prompt and the
re-ask, reading a reply, combining pages into the document's answer with its checks,
and its main text. It never calls an engine itself: the pipeline does (and screens
what comes back), so retries and guards stay in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from llamadoc.results import Check, DocumentResult, Verdict

if TYPE_CHECKING:
    from llamadoc.inputs.raster import Document


@dataclass(frozen=True)
class PageReply:
    """What a task made of one page's model output."""

    answer: str | None = None
    fields: dict[str, Any] | None = None
    error: str | None = None  # the reply did not do what the task asked: the page fails
    retry: bool = False  # worth one re-ask that shows the model its error
    found: bool = True  # ask: False when the page said it holds no answer
    cut: str | None = None  # runaway repetition cut from the end (what was cut): the page is partial
    checks: tuple[Check, ...] = ()


@dataclass
class Plan:
    """What a task decided about a document before any page is read."""

    skipped: dict[int, str] = field(default_factory=dict)  # pages not worth the model, and why
    notes: list[str] = field(default_factory=list)  # for the document's warnings
    answered: bool = False  # no page goes to the model: the document carries its answer
    words: bool = False  # the task wants each page's word boxes (text layer, else OCR) for its evidence
    context: Any = None  # the task's own findings, for combine (extract: an embedded e-invoice)


@dataclass(frozen=True)
class FollowUpAnswer:
    """A model call a task asks for after the pages (ask: combining their answers), screened."""

    text: str | None  # None: the guard withheld it (verdict set), or the model failed (no verdict)
    verdict: Verdict | None = None  # the guard's, when screening is on and there was an answer
    problem: str | None = None  # why there is no text, or what the guard flagged


FollowUp = Callable[[str], FollowUpAnswer]


class Task(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def schema(self) -> dict[str, Any] | None:
        """A JSON Schema that constrains decoding, or None."""
        ...

    def options(self) -> dict[str, Any]:
        """The task's options that shape an answer, as every result records them."""
        ...

    def plan(self, document: Document, pages: list[int]) -> Plan:
        """Looks at an opened document (text layer, attachments) before its pages are read."""
        ...

    def prompt(self, page_count: int, previous: PageReply | None = None) -> str:
        """The page prompt; with ``previous``, the re-ask that shows the model its error."""
        ...

    def read(self, text: str) -> PageReply: ...

    def combine(self, doc: DocumentResult, replies: Mapping[int, PageReply], plan: Plan,
                follow_up: FollowUp) -> None:
        """Fold the usable page replies into the document's answer, fields and checks."""
        ...

    @staticmethod
    def main_text(doc: DocumentResult) -> str:
        """The document's main output as plain text (--format text): an answer, Markdown, fields as JSON."""
        ...

    @staticmethod
    def markdown(doc: DocumentResult) -> str:
        """The document's main output as the body of a Markdown file (--format md)."""
        ...
