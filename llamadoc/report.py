"""The batch report: it owns the exit code, so a batch with failures never exits 0."""

from __future__ import annotations

from dataclasses import dataclass, field

from llamadoc.errors import ExitCode
from llamadoc.results import DocumentResult, Status


@dataclass
class Report:
    counts: dict[Status, int] = field(default_factory=lambda: {s: 0 for s in Status})
    failed_pages: int = 0
    blocked_pages: int = 0

    def add(self, doc: DocumentResult) -> None:
        self.counts[doc.status] += 1
        self.failed_pages += sum(p.status is Status.FAILED for p in doc.pages)
        self.blocked_pages += sum(p.status is Status.BLOCKED for p in doc.pages)

    @staticmethod
    def problems(doc: DocumentResult) -> list[str]:
        """One line per thing that went wrong in a document, for stderr."""
        lines = [f"{doc.source}: {e}" for e in doc.errors]
        if doc.errors and doc.status is Status.FAILED:
            return lines
        for page in doc.pages:
            if page.status is Status.FAILED:
                lines.extend(f"{doc.source}: page {page.index}: {e}" for e in page.errors[-1:])
            elif page.status is Status.BLOCKED:
                lines.append(f"{doc.source}: page {page.index}: withheld by the guard")
        return lines

    def exit_code(self) -> ExitCode:
        if self.counts[Status.FAILED] or self.failed_pages:
            return ExitCode.FAILED
        if self.counts[Status.BLOCKED] or self.blocked_pages:
            return ExitCode.BLOCKED
        return ExitCode.OK
