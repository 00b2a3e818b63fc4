"""The batch report: counts, problems and the exit code, so a batch with failures never exits 0
(unless --fail-on, which chooses the outcomes that count, leaves failures out: the summary says so).

As black's ``Report.return_code``: the report decides, the faces only exit with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from llamadoc.errors import ExitCode, UsageError
from llamadoc.results import Check, DocumentResult, Status

OUTCOMES = ("failed", "blocked", "ungrounded", "check-failed", "needs-review", "duplicate")
DEFAULT_FAIL_ON = frozenset({"failed", "blocked"})


def parse_fail_on(spec: str | None) -> frozenset[str]:
    """'failed,blocked' -> the outcomes that make the exit code non-zero."""
    if spec is None:
        return DEFAULT_FAIL_ON
    return _checked(frozenset(x.strip() for x in spec.split(",") if x.strip()))


def _checked(outcomes: frozenset[str]) -> frozenset[str]:
    unknown = sorted(outcomes - set(OUTCOMES))
    if unknown:
        raise UsageError(f"--fail-on: unknown outcome {', '.join(unknown)}",
                         hint=f"choose from {', '.join(OUTCOMES)}")
    return outcomes


@dataclass
class Report:
    fail_on: frozenset[str] = DEFAULT_FAIL_ON
    counts: dict[Status, int] = field(default_factory=lambda: {s: 0 for s in Status})
    failed_pages: int = 0
    blocked_pages: int = 0
    ungrounded: int = 0  # documents with a value not found on its page
    check_failed: int = 0  # documents failing arithmetic or embedded-data checks
    cached: int = 0
    not_written: int = 0  # results the disk refused (the result itself is kept in the store)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # about the run, not one document: resuming off, ...
    review: set[str] = field(default_factory=set)  # sources that need a person's look (needs_review)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (first, repeat): the same invoice twice

    def __post_init__(self) -> None:
        _checked(frozenset(self.fail_on))

    @property
    def documents(self) -> int:
        return sum(self.counts.values())

    def add(self, doc: DocumentResult) -> None:
        self.counts[doc.status] += 1
        self.failed_pages += sum(p.status is Status.FAILED for p in doc.pages)
        self.blocked_pages += sum(p.status is Status.BLOCKED for p in doc.pages)
        self.cached += doc.cached
        checks = list(_checks(doc))
        self.ungrounded += any(c.name.startswith("grounding") and c.status == "fail" for c in checks)
        self.check_failed += any(
            not c.name.startswith("grounding") and c.name != "schema" and c.status == "fail" for c in checks
        )
        if doc.needs_review:
            self.review.add(doc.source)
        if doc.status not in (Status.OK, Status.SKIPPED):
            self.failures.extend(self.problems(doc)[:3])

    def add_duplicate(self, first: DocumentResult, repeat: DocumentResult) -> None:
        """Two documents of the batch are one invoice (both flagged already; the first was added
        before the second was read)."""
        self.duplicates.append((first.source, repeat.source))
        self.review.update((first.source, repeat.source))

    @property
    def duplicated(self) -> int:
        """Documents that are the same invoice as another of the batch."""
        return len({source for pair in self.duplicates for source in pair})

    def add_write_failure(self, doc: DocumentResult, message: str) -> None:
        """The result is right but its file could not be written: a failure of this run."""
        self.not_written += 1
        self.failures.append(f"{doc.source}: {message}")

    @staticmethod
    def problems(doc: DocumentResult) -> list[str]:
        """One line per thing that went wrong in a document, for stderr."""
        lines = [e if doc.source in e else f"{doc.source}: {e}" for e in doc.errors]
        if doc.errors and doc.status is Status.FAILED:
            return lines
        for page in doc.pages:
            if page.status is Status.FAILED:
                lines.extend(f"{doc.source}: page {page.index}: {e}" for e in page.errors[-1:])
            elif page.status is Status.BLOCKED:
                lines.append(f"{doc.source}: page {page.index}: withheld by the guard")
        return lines

    @property
    def exit_code(self) -> ExitCode:
        """Failures (1) outrank guard blocks (3); --fail-on chooses what counts."""
        failing = (
            ("failed" in self.fail_on and (self.counts[Status.FAILED] or self.failed_pages))
            or ("ungrounded" in self.fail_on and self.ungrounded)
            or ("check-failed" in self.fail_on and self.check_failed)
            or ("needs-review" in self.fail_on and self.review)
            or ("duplicate" in self.fail_on and self.duplicates)
            or self.not_written  # a result the user asked for in a file and did not get
        )
        if failing:
            return ExitCode.FAILED
        if "blocked" in self.fail_on and (self.counts[Status.BLOCKED] or self.blocked_pages):
            return ExitCode.BLOCKED
        return ExitCode.OK

    def summary(self) -> list[str]:
        """The end-of-batch table, as lines for stderr."""
        cells = [f"{s.value} {self.counts[s]}" for s in (Status.OK, Status.PARTIAL, Status.FAILED, Status.BLOCKED)]
        lines = [f"{self.documents} documents: " + ", ".join(cells)
                 + (f" ({self.cached} from earlier runs)" if self.cached else "")]
        if self.counts[Status.SKIPPED]:
            lines.append(f"{self.counts[Status.SKIPPED]} left to another run working on the same output")
        if self.not_written:
            lines.append(f"{self.not_written} result files could not be written (see problems)")
        if self.ungrounded or self.check_failed:
            lines.append(f"checks: {self.ungrounded} with ungrounded values, {self.check_failed} failing other checks")
        if self.review:
            also = f", {self.duplicated} of them the same invoice as another" if self.duplicates else ""
            lines.append(f"review: {len(self.review)} need a person's look{also}")
        if self.duplicates:
            lines.append("duplicates:")
            lines.extend(f"  {repeat} is the same invoice as {first}" for first, repeat in self.duplicates[:20])
            if len(self.duplicates) > 20:
                lines.append(f"  ... and {len(self.duplicates) - 20} more")
        lines.extend(self.notes)
        left_out = [name for name, happened in (
            ("failed", self.counts[Status.FAILED] or self.failed_pages),
            ("blocked", self.counts[Status.BLOCKED] or self.blocked_pages)) if happened and name not in self.fail_on]
        if left_out:  # --fail-on chooses, as ruff's --select does: say what it let through
            lines.append(f"not counted in the exit code: {' and '.join(left_out)} (--fail-on "
                         f"{','.join(o for o in OUTCOMES if o in self.fail_on)}; add {','.join(left_out)} to count it)")
        if self.failures:
            lines.append("problems:")
            lines.extend(f"  {line}" for line in self.failures[:20])
            if len(self.failures) > 20:
                lines.append(f"  ... and {len(self.failures) - 20} more")
        return lines


def _checks(doc: DocumentResult) -> Iterable[Check]:
    yield from doc.checks
    for page in doc.pages:
        yield from page.checks
    for value in doc.values:
        yield from value.checks
