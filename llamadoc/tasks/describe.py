"""describe: a faithful Markdown transcription of each document, page by page."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from llamadoc.evidence.quality import cut_runaway
from llamadoc.results import DocumentResult, Status
from llamadoc.tasks.base import FollowUp, PageReply, Plan

if TYPE_CHECKING:
    from llamadoc.inputs.raster import Document

_UNAVAILABLE = {Status.BLOCKED: "was withheld by the guard", Status.SKIPPED: "was skipped"}


class Describe:
    name = "describe"
    schema: dict[str, Any] | None = None

    def options(self) -> dict[str, Any]:
        return {}

    def plan(self, document: Document, pages: list[int]) -> Plan:
        return Plan()

    def prompt(self, page_count: int, previous: PageReply | None = None) -> str:
        return (
            "Transcribe this document page into Markdown, faithfully and completely, in reading "
            "order. Keep headings as Markdown headings, lists as lists, and tables as Markdown "
            "tables. Describe each figure or chart briefly in one italic sentence. Do not "
            "summarise, explain or add anything that is not on the page. Output only the Markdown."
        )

    def read(self, text: str) -> PageReply:
        markdown, runaway = cut_runaway(strip_fence(text.strip(), "markdown"))
        return PageReply(answer=markdown, cut=runaway)

    def combine(self, doc: DocumentResult, replies: Mapping[int, PageReply], plan: Plan,
                follow_up: FollowUp) -> None:
        """Nothing to fold: the transcription is the pages' own, in order."""

    @staticmethod
    def main_text(doc: DocumentResult) -> str:
        parts = []
        for page in doc.pages:
            if page.status in (Status.OK, Status.PARTIAL) and page.answer is not None:
                body = page.answer
            else:
                body = f"*Page {page.index} {_UNAVAILABLE.get(page.status, 'could not be read')}.*"
            parts.append(f"<!-- page {page.index} -->\n\n{body.strip()}")
        return "\n\n---\n\n".join(parts)

    @staticmethod
    def markdown(doc: DocumentResult) -> str:
        return Describe.main_text(doc)


def strip_fence(text: str, lang: str) -> str:
    """Models sometimes wrap output in ``` fences; the content is what counts."""
    match = re.fullmatch(rf"```(?:{lang})?\s*\n(.*?)\n?```", text, re.DOTALL | re.IGNORECASE)
    return match.group(1).strip() if match else text
