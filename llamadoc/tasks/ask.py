"""ask: a question about each document, answered page by page and combined, citing the pages."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from llamadoc.errors import UsageError
from llamadoc.evidence.quality import cut_runaway
from llamadoc.results import DocumentResult
from llamadoc.tasks.base import FollowUp, PageReply, Plan

if TYPE_CHECKING:
    from llamadoc.inputs.raster import Document

NOT_FOUND = "NOT ON THIS PAGE"
NO_ANSWER = "The pages read do not answer this question."
_WORD = re.compile(r"[^\W\d_]{4,}", re.UNICODE)
_STOPWORDS = frozenset(
    "what which when where whose with that this there these those from have does your about into "
    "than then them they their were been being will would could should much many more most some "
    "page document show shows tell give list value values".split()
)


class Ask:
    name = "ask"
    schema: dict[str, Any] | None = None

    def __init__(self, question: str, all_pages: bool = False) -> None:
        if not question.strip():
            raise UsageError("the question is empty", hint='pass one with -q "..."')
        self.question = question.strip()
        self.all_pages = all_pages  # read pages whose text layer shows they cannot matter

    def options(self) -> dict[str, Any]:
        return {"question": self.question, "all_pages": self.all_pages}

    def plan(self, document: Document, pages: list[int]) -> Plan:
        """Skip the pages of a PDF whose text layer shows they cannot matter to the question."""
        if self.all_pages or len(pages) < 2 or document.kind != "pdf":
            return Plan()
        skip = {
            i: "its text layer shares no word with the question and it has no pictures"
            for i in pages
            if not self.relevant(*document.page_info(i))
        }
        return Plan() if len(skip) == len(pages) else Plan(skipped=skip)  # nothing to prefer: read them all

    def relevant(self, text: str | None, graphics: bool) -> bool:
        """False only when the text layer shows the page cannot matter: all text,
        no pictures, and not one content word of the question on it."""
        if text is None or graphics or len(text) < 200:
            return True
        words = {w.lower() for w in _WORD.findall(self.question)} - _STOPWORDS
        if not words:
            return True
        page_words = {w.lower() for w in _WORD.findall(text)}
        return bool(words & page_words)

    def prompt(self, page_count: int, previous: PageReply | None = None) -> str:
        if page_count == 1:
            return (
                "Answer the question about this document using only what it shows. "
                "Be concise and exact; quote numbers as printed.\n\n"
                f"Question: {self.question}"
            )
        return (
            "This image is one page of a longer document. Answer the question using only "
            "what this page shows. Be concise and exact; quote numbers as printed. If this "
            f"page does not answer it, reply exactly: {NOT_FOUND}\n\nQuestion: {self.question}"
        )

    def read(self, text: str) -> PageReply:
        answer, runaway = cut_runaway(text.strip())
        found = bool(answer) and NOT_FOUND.lower() not in answer.lower()[: len(NOT_FOUND) + 8]
        return PageReply(answer=answer, found=found, cut=runaway)

    def combine(self, doc: DocumentResult, replies: Mapping[int, PageReply], plan: Plan,
                follow_up: FollowUp) -> None:
        found = [(i, r.answer or "") for i, r in sorted(replies.items()) if r.found]
        doc.cited_pages = [i for i, _ in found]
        if not found:
            doc.answer = NO_ANSWER if replies else None
            return
        if len(found) == 1:
            doc.answer = found[0][1]
            return
        combined = follow_up(self.combine_prompt(found))
        doc.guard_out = combined.verdict
        if combined.text is not None:
            doc.answer = combined.text.strip()
            if combined.problem:  # flagged, not withheld
                doc.warnings.append(f"{combined.problem}; flagged")
        elif combined.verdict is not None:
            doc.errors.append(f"{combined.problem}; withheld")
        else:  # the model failed: the page answers as they are (each was screened)
            doc.errors.append(f"combining the page answers failed: {combined.problem}")
            doc.answer = "\n".join(f"(page {i}) {a}" for i, a in found)

    def combine_prompt(self, answers: Sequence[tuple[int, str]]) -> str:
        listed = "\n".join(f"[page {i}] {a}" for i, a in answers)
        return (
            "Several pages of one document each answered the same question. Combine their "
            "answers into one answer to the question. Cite the pages you rely on as "
            "(page N). Use only the information below.\n\n"
            f"Question: {self.question}\n\nPage answers:\n{listed}"
        )

    @staticmethod
    def main_text(doc: DocumentResult) -> str:
        text = doc.answer or ""
        if text and doc.cited_pages and doc.page_count > 1:
            text += f"\n(pages {', '.join(map(str, doc.cited_pages))})"
        return text

    @staticmethod
    def markdown(doc: DocumentResult) -> str:
        cites = f"\n\n*Pages: {', '.join(map(str, doc.cited_pages))}*" if doc.cited_pages else ""
        return (doc.answer or "") + cites
