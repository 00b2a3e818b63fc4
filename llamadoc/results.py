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
# 3: every extracted value with its evidence, confidence and checks (DocumentResult.values); needs_review
# and its reasons; duplicates across the batch; PageResult.words_source.
SCHEMA_VERSION = 3

# Fields of the flowing data that never go into a result document: what the stages hand each
# other (word boxes, token probabilities) but a reader of the result has no use for.
TRANSIENT = "transient"


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
    words: PageWords | None = None  # word boxes (text layer or OCR), when the task wants them
    words_ms: float = 0.0  # what finding them cost (OCR, mostly)


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
    status: str  # "pass" | "fail" | "unknown" (not applicable, or nothing to decide it with: ``detail`` says)
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Word:
    """A word printed on a page and its box, in page coordinates (origin top left; PDF points
    for PDF pages, pixels for images) as PageWords.width and .height measure the page."""

    text: str
    x0: float
    y0: float
    x1: float
    y1: float
    line: int  # words of one printed line share it, in reading order


@dataclass(frozen=True)
class PageWords:
    """The words of one page, from its PDF text layer ("text") or from OCR ("ocr")."""

    index: int  # 1-based page
    width: float
    height: float
    source: str  # "text" | "ocr"
    words: tuple[Word, ...] = ()


@dataclass
class Evidence:
    """Where a value stands in the document: its page, the boxes of the words it was read
    from and the text matched there (source "text" or "ocr"); or its place in an e-invoice's
    XML (source "xml", with the printed box when the PDF shows it too); or, with source
    "none", why there is none."""

    source: str  # "text" | "ocr" | "xml" | "none"
    page: int | None = None
    boxes: list[list[float]] = field(default_factory=list)  # [x0, y0, x1, y1], page coordinates
    page_size: list[float] = field(default_factory=list)  # [width, height] in the boxes' unit
    text: str = ""  # the words matched, as printed
    occurrences: int = 0  # places on that page that print the value (the likeliest is given)
    xml_path: str | None = None
    why_not: str | None = None  # source "none": why no place was found


@dataclass
class Value:
    """One leaf of the extracted fields (``path`` as in ``seller.vat_id`` or
    ``line_items[2].amount``), with where it stands, how sure the model was, and its checks."""

    path: str
    value: Any
    evidence: Evidence
    confidence: float | None  # 0-1: the model's own probability, moved by the evidence (see README)
    model_p: float | None = None  # the model's least sure token of the value; None: not from a model
    checks: list[Check] = field(default_factory=list)


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
    words_source: str | None = None  # where the page's word boxes came from: "text", "ocr", or None
    # For the task's combine only, never written: the page's words, and the model's reply as
    # (token bytes, log probability) pairs.
    words: PageWords | None = field(default=None, repr=False, compare=False, metadata={TRANSIENT: True})
    logprobs: list[tuple[bytes, float]] = field(default_factory=list, repr=False, compare=False,
                                                metadata={TRANSIENT: True})


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
    values: list[Value] = field(default_factory=list)  # extract: every leaf of ``fields``, with its evidence
    needs_review: bool = False  # a person should look: ``review`` says why
    review: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # other documents of the batch that are the same invoice
    schema_version: int = SCHEMA_VERSION

    @property
    def pages_read(self) -> list[int]:
        return [p.index for p in self.pages if p.status is not Status.SKIPPED]
