"""The data that flows through the pipeline: pages in, page and document results out.

Plain data, no logic: rendering lives in outputs/render.py, decisions in the stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Pillow is only needed where pages are made.
    from PIL.Image import Image

# 2: warnings beside errors; ModelInfo.device is None when the model was not needed; Status.SKIPPED for
# documents another run was working on.
SCHEMA_VERSION = 2


class Status(StrEnum):
    OK = "ok"
    PARTIAL = "partial"  # documents: some pages failed or were blocked
    FAILED = "failed"
    BLOCKED = "blocked"  # the guard withheld the answer
    SKIPPED = "skipped"  # pages: not sent to the model; documents: left to another run working on them


@dataclass
class Page:
    """One rasterised page, ready for the model. ``index`` is 1-based."""

    index: int
    image: Image
    dpi: float | None = None
    text: str | None = None  # the PDF text layer; None when the page has none
    rotation: int = 0
    graphics: bool = True  # images or drawings the text layer cannot show


@dataclass
class Verdict:
    """A guard's judgement of one piece of content."""

    safe: bool | None  # None: the guard answered something unreadable (see ``error``)
    categories: list[str] = field(default_factory=list)  # codes, e.g. ["S1", "S10"]
    category_names: list[str] = field(default_factory=list)
    score: float | None = None  # P(unsafe) from the first generated token
    model: str = ""
    screened: str = "text"  # what the guard saw: "text", "image+text", or "not screened ..."
    subject: str = ""  # "prompt", "page text 1/3", "answer", ...
    raw: str = ""  # the guard's own words
    error: str | None = None
    elapsed_ms: float = 0.0
    cached: bool = False


@dataclass
class Check:
    """A model-free check of an answer: schema, grounding, arithmetic, embedded data."""

    name: str
    status: str  # "pass" | "fail" | "unknown"
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class PageResult:
    index: int
    status: Status = Status.OK
    width: int | None = None
    height: int | None = None
    dpi: float | None = None
    text_layer_chars: int = 0
    text_layer: str | None = None
    answer: str | None = None
    fields: dict[str, Any] | None = None
    guard_in: list[Verdict] = field(default_factory=list)
    guard_out: Verdict | None = None
    checks: list[Check] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    skipped_reason: str | None = None
    errors: list[str] = field(default_factory=list)  # what went wrong: the status says how badly
    warnings: list[str] = field(default_factory=list)  # worth knowing, status unchanged (re-asked, flagged, cut)


@dataclass
class ModelInfo:
    name: str
    path: str
    engine: str
    sha256: str | None = None
    quantisation: str | None = None
    source: str | None = None  # where the file came from: hf://..., ollama://...; None for a file given as a path
    revision: str | None = None  # the source's commit (Hub) or manifest digest (Ollama)
    mmproj: str | None = None
    gpu_layers: int = 0
    device: str | None = None  # None: no page needed the model (an embedded e-invoice, blank pages)


@dataclass
class DocumentResult:
    source: str
    task: str
    sha256: str | None = None
    page_count: int = 0
    pages: list[PageResult] = field(default_factory=list)
    answer: str | None = None  # ask: the combined answer
    cited_pages: list[int] = field(default_factory=list)
    fields: dict[str, Any] | None = None  # extract: the merged record
    field_pages: dict[str, int] = field(default_factory=dict)
    embedded: str | None = None  # extract: the e-invoice attachment the fields were read from
    checks: list[Check] = field(default_factory=list)
    guard_out: Verdict | None = None  # ask: the check of the combined answer
    model: ModelInfo | None = None
    guard_model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    status: Status = Status.OK
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped_reason: str | None = None  # status skipped: why this run did not do it
    timings_ms: dict[str, float] = field(default_factory=dict)
    cached: bool = False  # taken from the result store: an earlier run did the work
    duplicate_of: str | None = None  # the same bytes as this source, read earlier in the run
    schema_version: int = SCHEMA_VERSION

    @property
    def pages_read(self) -> list[int]:
        return [p.index for p in self.pages if p.status is not Status.SKIPPED]
