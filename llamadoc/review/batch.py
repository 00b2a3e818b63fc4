"""A finished batch as the review page sees it: the queue ordered by need, one document with
what each of its values needs, its pages as images, and the checks of values a person edits.

The queue is read from the result files as plain JSON (a result is only decoded whole when
its document is opened), and each file is read again only when it changes, so a page that
asks for the queue again costs one stat per file. Page images are drawn from the documents
the results name, after their bytes are checked against the result's sha256: the boxes are
only worth showing over the page the values were read from.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamadoc.errors import DocumentError, LlamadocError, UsageError
from llamadoc.evidence.checks import _amount, _leaves, _path, _subschema, arithmetic
from llamadoc.evidence.validate import _keys, check_value
from llamadoc.files import write_atomic
from llamadoc.outputs.decisions import Decision, DecisionError, Decisions, Entry, entries, result_stats
from llamadoc.outputs.writer import STATE_DIR
from llamadoc.results import Check

# Why a document needs a look, as the page filters them; in the order the queue weighs them.
REASONS = ("not read", "failed check", "no evidence", "low confidence", "duplicate")
REVIEW_BELOW = 0.8  # the extract task's default, for results that do not record theirs
DISPLAY_PIXELS = 1_600_000  # a page image about 1060 x 1500 for A4: sharp on a laptop, quick to draw
PAGE_CACHE = 48  # page images kept drawn
INVOICE_TOTALS = frozenset({"net_total", "tax_total", "gross_total"})


class NotFound(LlamadocError):
    """A document or page the batch does not have (404)."""


@dataclass
class Item:
    """One document in the queue."""

    id: str
    key: str
    path: Path
    source: str
    sha256: str | None
    status: str
    needs_review: bool
    reasons: list[str]  # of REASONS
    review: list[str]  # the result's own words for them
    looks: int  # values that need a look
    page_count: int
    digest: str  # of the result's text: a decision made on another is stale

    @property
    def name(self) -> str:
        return re.split(r"[\\/#]", self.source)[-1] or self.source

    def summary(self) -> dict[str, Any]:
        """What the queue shows of it (2,000 of these make the page's first request: kept small)."""
        return {"id": self.id, "name": self.name, "needs_review": self.needs_review, "reasons": self.reasons,
                "pages": self.page_count}


def value_reasons(value: dict[str, Any], below: float) -> list[str]:
    """Why one value of a result needs a look (the extract task's rules, read from the result)."""
    found = []
    evidence = value.get("evidence") or {}
    if evidence.get("source") == "none" and str(evidence.get("why_not") or "").startswith(("not found", "no page")):
        found.append("no evidence")
    confidence = value.get("confidence")
    if isinstance(confidence, int | float) and confidence < below:
        found.append("low confidence")
    if any(c.get("status") == "fail" and not str(c.get("name", "")).startswith("grounding")
           for c in value.get("checks") or []):
        found.append("failed check")
    return found


def document_reasons(body: dict[str, Any]) -> tuple[list[str], int]:
    """Why a document needs a look, in REASONS' order, and how many of its values do."""
    below = (body.get("options") or {}).get("review_below", REVIEW_BELOW)
    kinds: set[str] = set()
    looks = 0
    if body.get("fields") is None:
        kinds.add("not read")
    for value in body.get("values") or []:
        found = value_reasons(value, below)
        kinds.update(found)
        looks += bool(found)
    if any(c.get("status") == "fail" for c in body.get("checks") or []):
        kinds.add("failed check")
    if body.get("duplicates"):
        kinds.add("duplicate")
    return [r for r in REASONS if r in kinds], looks


def _need(item: Item) -> tuple[Any, ...]:
    """The queue's order: documents that need review first, the likeliest mistakes first (a
    document not read, then a failed check, ...), more doubtful values first; then the rest."""
    weight = min((REASONS.index(r) for r in item.reasons), default=len(REASONS))
    return (not (item.needs_review or item.reasons), weight, -item.looks, item.key)


@dataclass
class _Read:
    """What one result file gave the queue, as of its mtime and size."""

    stamp: tuple[int, int]  # mtime_ns, size
    items: list[Item]
    problems: list[str]


INDEX = "review-index.json"  # in OUT/.llamadoc: the queue's cache, so a restart reads only what changed
INDEX_FORMAT = 2


class Batch:
    """The results of one -o folder, their decisions, and their documents' pages."""

    def __init__(self, out: Path, roots: tuple[Path, ...] = ()) -> None:
        if not out.is_dir():
            raise UsageError(f"{out} is not a folder of results", hint="give the -o folder of a finished batch")
        self.out = out
        self.decisions = Decisions(out)
        self.roots = (*roots, Path.cwd(), out.resolve().parent)  # where a relative source may be found
        self._read: dict[str, _Read] = {}  # by the result file's path below OUT
        self._items: list[Item] = []
        self._by_id: dict[str, Item] = {}
        self._lock = threading.Lock()
        self.pages = Pages(self)
        self.problems: list[str] = []  # result files that are not results, by name

    # -- the queue ------------------------------------------------------------------------------------

    def refresh(self) -> list[Item]:
        """The queue, ordered by need; files changed since the last look are read again."""
        with self._lock:
            if not self._read:
                self._read = self._load_index()
            seen: dict[str, _Read] = {}
            changed = False
            for rel, st in result_stats(self.out):
                stamp = (st.st_mtime_ns, st.st_size)
                known = self._read.get(rel)
                if known is None or known.stamp != stamp:
                    known = self._index(self.out / rel, stamp)
                    changed = True
                seen[rel] = known
            changed = changed or seen.keys() != self._read.keys()
            self._read = seen
            self.problems = [p for r in seen.values() for p in r.problems]
            self._items = sorted((i for r in seen.values() for i in r.items), key=_need)
            self._by_id = {i.id: i for i in self._items}
            if changed:
                self._save_index()
            return self._items

    def _load_index(self) -> dict[str, _Read]:
        """The queue as an earlier run left it (each file's part checked against its stat later)."""
        try:
            body = json.loads((self.out / STATE_DIR / INDEX).read_text(encoding="utf-8"))
            if body.get("format") != INDEX_FORMAT:
                return {}
            return {rel: _Read((int(r["stamp"][0]), int(r["stamp"][1])),
                               [Item(**{**i, "path": self.out / i["path"]}) for i in r["items"]],
                               [str(p) for p in r["problems"]])
                    for rel, r in body["files"].items()}
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            return {}  # none, or not ours: read every file again

    def _save_index(self) -> None:
        files = {rel: {"stamp": list(r.stamp), "problems": r.problems,
                       "items": [{**vars(i), "path": i.path.relative_to(self.out).as_posix()} for i in r.items]}
                 for rel, r in self._read.items()}
        try:
            write_atomic(self.out / STATE_DIR / INDEX, json.dumps({"format": INDEX_FORMAT, "files": files}))
        except OSError:
            pass  # a folder we may only read: the next start reads every file again, nothing worse

    def _index(self, path: Path, stamp: tuple[int, int]) -> _Read:
        problems: list[str] = []
        return _Read(stamp, self._items_of(path, problems), problems)

    def _items_of(self, path: Path, problems: list[str]) -> list[Item]:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            problems.append(f"{path.relative_to(self.out)}: cannot be read ({err})")
            return []
        items = []
        for entry in entries(self.out, path, text):
            try:
                body = json.loads(entry.text)
            except (ValueError, RecursionError):
                problems.append(f"{entry.key}: not JSON")
                continue
            if not isinstance(body, dict) or body.get("task") != "extract" or not isinstance(body.get("source"), str):
                continue  # an answer or a transcription: nothing to approve
            if body.get("schema_version") != 3:
                problems.append(f"{entry.key}: a result of schema version {body.get('schema_version')}; run the "
                                "batch again to review it")
                continue
            try:
                reasons, looks = document_reasons(body)
                items.append(Item(id=entry.id, key=entry.key, path=path, source=body["source"],
                                  sha256=body.get("sha256"), status=str(body.get("status")),
                                  needs_review=bool(body.get("needs_review")), reasons=reasons,
                                  review=[str(r) for r in body.get("review") or []], looks=looks,
                                  page_count=int(body.get("page_count") or 0), digest=entry.digest))
            except (TypeError, ValueError, AttributeError, KeyError):  # a part not of its kind: one file's problem
                problems.append(f"{entry.key}: not a llamadoc result of this version (a part of it is damaged); "
                                "run the batch again for it")
        return items

    def item(self, doc_id: str) -> Item:
        if not re.fullmatch(r"[0-9a-f]{20}", doc_id):
            raise NotFound(f"{doc_id[:40]!r} is not a document id of this batch")
        if doc_id not in self._by_id:
            self.refresh()
        try:
            return self._by_id[doc_id]
        except KeyError:
            raise NotFound(f"no document {doc_id} in this batch", hint="reload the page: the batch may "
                                                                      "have changed") from None

    def entry(self, item: Item) -> tuple[Entry, dict[str, Any]]:
        """The document's result as it lies in OUT now, and its body."""
        try:
            text = item.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise NotFound(f"{item.key} cannot be read now ({err})") from None
        for entry in entries(self.out, item.path, text):
            if entry.key == item.key:
                try:
                    body = json.loads(entry.text)
                except (ValueError, RecursionError):
                    break
                if isinstance(body, dict) and body.get("source") == item.source:
                    return entry, body
        raise NotFound(f"{item.key} no longer holds {item.source}", hint="reload the page: the batch changed")

    def decision(self, item: Item, digest: str | None = None) -> tuple[Decision | None, str | None]:
        """The document's decision (None when it has none) and why it cannot be used, if so."""
        try:
            made = self.decisions.get(item.id)
        except DecisionError as err:
            return None, str(err)
        if made is not None and digest is not None and made.stale(digest):
            return made, (f"{made.by} {made.decision} it at {made.at} on an earlier result of the batch; "
                          "decide it again")
        return made, None

    def queue(self) -> dict[str, Any]:
        items = self.refresh()
        made, damaged = self.decisions.all()
        rows = []
        for item in items:
            row = item.summary()
            decision = made.get(item.id)
            if decision is not None and decision.stale(item.digest):  # the batch ran again since: undecided
                decision = None
            row["decision"] = decision.decision if decision is not None else None
            row["by"] = decision.by if decision is not None else None
            row["damaged"] = item.id in damaged
            rows.append(row)
        counts = {r: sum(r in i.reasons for i in items) for r in REASONS}
        return {"out": str(self.out), "items": rows, "reasons": counts, "problems": self.problems,
                "reviewed": sum(1 for r in rows if r["decision"])}

    # -- one document ---------------------------------------------------------------------------------

    def document(self, doc_id: str) -> dict[str, Any]:
        item = self.item(doc_id)
        entry, body = self.entry(item)
        made, problem = self.decision(item, entry.digest)
        below = (body.get("options") or {}).get("review_below", REVIEW_BELOW)
        values = []
        for v in body.get("values") or []:
            values.append({"path": v.get("path"), "value": v.get("value"), "evidence": v.get("evidence") or {},
                           "confidence": v.get("confidence"), "checks": v.get("checks") or [],
                           "look": value_reasons(v, below)})
        return {"id": item.id, "key": item.key, "source": item.source, "status": body.get("status"),
                "needs_review": bool(body.get("needs_review")), "review": body.get("review") or [],
                "reasons": item.reasons, "duplicates": body.get("duplicates") or [],
                "errors": body.get("errors") or [], "page_count": item.page_count,
                "fields": body.get("fields"), "values": values, "checks": body.get("checks") or [],
                "embedded": body.get("embedded"),
                "decision": made.to_json() if made is not None else None, "decision_problem": problem,
                "images": self.pages.problem(item)}

    def checks(self, doc_id: str, edits: dict[str, Any]) -> dict[str, Any]:
        """The model-free checks of a document's values as a person edited them: each edited
        value's own (VAT ID, IBAN, BIC, date, currency, amount) and the record's arithmetic."""
        item = self.item(doc_id)
        _, body = self.entry(item)
        record, values = self.edited(body, edits)
        schema = schema_of(body)
        out = {}
        for path, value in values.items():
            keys = _keys(path)
            out[path] = {"value": value, "checks": [_plain(c) for c in check_value(keys, value, None,
                                                                                   _subschema(schema, keys))]}
        return {"values": out, "checks": [_plain(c) for c in record_checks(record, schema)]}

    def edited(self, body: dict[str, Any], edits: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The record with ``edits`` (path -> what the person typed) in it, and each edit as the
        value it becomes (a number where the value is one); a path the record lacks is refused."""
        record, values, _ = self.changes(body, edits)
        return record, values

    def changes(self, body: dict[str, Any], edits: dict[str, Any]
                ) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]]]:
        """``edited``, and the values that changed: path -> {"old", "new"}."""
        fields = body.get("fields")
        if not isinstance(fields, dict):
            raise UsageError("this document has no fields to edit")
        record = json.loads(json.dumps(fields))  # a copy to edit
        known = {_path(keys): keys for keys, _ in _leaves(fields)}
        schema = schema_of(body)
        values, changed = {}, {}
        for path, typed in edits.items():
            if path not in known:
                raise UsageError(f"this document has no field {str(path)[:80]!r}")
            keys = known[path]
            old = _get(fields, keys)
            value = coerce(typed, old, _subschema(schema, keys))
            _set(record, keys, value)
            values[path] = value
            if value != old or type(value) is not type(old):
                changed[path] = {"old": old, "new": value}
        return record, values, changed


def record_checks(record: dict[str, Any], schema: dict[str, Any] | None) -> list[Check]:
    """The checks of a whole record that need no model: its schema, and an invoice's arithmetic."""
    found = []
    if schema is not None:
        from llamadoc.tasks.schema import schema_error

        problem = schema_error(record, schema)
        found.append(Check("schema", "fail" if problem else "pass", problem or ""))
    if INVOICE_TOTALS <= set(record):
        found += arithmetic(record)
    return found


def coerce(typed: Any, original: Any, schema: dict[str, Any]) -> Any:
    """What a person typed as the value it stands for: empty is null; a number where the value
    (or its schema) is a number and the text is one clear number, however its locale writes it
    (the amount check reads it so too); otherwise the text."""
    if isinstance(typed, float) and not math.isfinite(typed):
        raise UsageError("a value is a finite number")
    if typed is None or isinstance(typed, bool | int | float):
        return typed
    if not isinstance(typed, str):
        raise UsageError("a value is typed as text, a number, or null")
    text = typed.strip()
    if not text:
        return None
    types = schema.get("type")
    wanted = set(types) if isinstance(types, list) else {types}
    numeric = (isinstance(original, int | float) and not isinstance(original, bool)) or bool(
        wanted & {"number", "integer"})
    if numeric and re.fullmatch(r"-?\d+(\.\d+)?", text) and math.isfinite(float(text)):
        number = float(text)
        return int(number) if "." not in text and ("integer" in wanted or isinstance(original, int)) else number
    amount = _amount(text) if numeric else None  # as an invoice prints it: 2634,20 or 1.234,50
    if amount is not None and math.isfinite(amount):
        whole = amount == amount.to_integral_value() and ("integer" in wanted or isinstance(original, int))
        return int(amount) if whole else float(amount)
    return text  # not one clear number (1.234 may be either): kept as typed, for its check to say so


def _get(record: Any, keys: tuple[str | int, ...]) -> Any:
    for key in keys:
        record = record[key]
    return record


def _set(record: Any, keys: tuple[str | int, ...], value: Any) -> None:
    for key in keys[:-1]:
        record = record[key]
    record[keys[-1]] = value


def _plain(check: Check) -> dict[str, Any]:
    return {"name": check.name, "status": check.status, "detail": check.detail, "data": check.data}


_SCHEMAS: dict[tuple[str, str], dict[str, Any] | None] = {}


def schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON Schema the batch extracted under, when its file is still there and unchanged."""
    options = body.get("options") or {}
    path, digest = options.get("schema"), options.get("schema_sha256")
    if not isinstance(path, str) or not isinstance(digest, str):
        return None
    if (path, digest) not in _SCHEMAS:
        from llamadoc.tasks.schema import load_schema

        try:
            schema = load_schema(path)
        except LlamadocError:
            schema = None
        canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        _SCHEMAS[(path, digest)] = schema if hashlib.sha256(canonical.encode()).hexdigest() == digest else None
    return _SCHEMAS[(path, digest)]


# -- page images ------------------------------------------------------------------------------------------

@dataclass
class Pages:
    """Each document's pages drawn as images, from the file its result names, checked by sha256."""

    batch: Batch
    _drawn: OrderedDict[tuple[str, int], bytes] = field(default_factory=OrderedDict)
    _files: dict[str, tuple[tuple[int, int], Path | None, str | None]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # PyMuPDF draws one page at a time

    def problem(self, item: Item) -> str | None:
        """Why the document's pages cannot be shown, or None when they can."""
        try:
            self._find(item)
        except (DocumentError, NotFound) as err:
            return str(err)
        return None

    def image(self, item: Item, index: int) -> bytes:
        """Page ``index`` as a JPEG."""
        if not 1 <= index <= max(item.page_count, 1):
            raise NotFound(f"{item.source} has no page {index}")
        key = (item.id, index)
        with self._lock:
            if key in self._drawn:
                self._drawn.move_to_end(key)
                return self._drawn[key]
            data = self._draw(item, index)
            self._drawn[key] = data
            while len(self._drawn) > PAGE_CACHE:
                self._drawn.popitem(last=False)
            return data

    def _draw(self, item: Item, index: int) -> bytes:
        from llamadoc.inputs.raster import RasterOptions, open_document

        source = self._find(item)
        with open_document(source, RasterOptions(max_pixels=DISPLAY_PIXELS)) as document:
            if index > document.page_count:
                raise NotFound(f"{item.source} has no page {index}")
            [page] = list(document.pages([index]))
        buf = io.BytesIO()
        page.image.save(buf, format="JPEG", quality=85)
        return buf.getvalue()

    def _find(self, item: Item) -> Any:
        """The document's Source, found where its result says and checked against its sha256."""
        from llamadoc.inputs.sources import Source

        path, member = self._path(item)
        if member is None:
            return Source(label=item.source, path=path)
        from llamadoc.inputs.sources import collect

        for source in collect([str(path)]):
            if source.label.endswith("#" + member) and not source.error and source.sha256() == item.sha256:
                return Source(label=item.source, data=source.read_bytes())
        raise DocumentError(f"{item.source} is not in {path} any more (or has changed since the batch read it)")

    def _path(self, item: Item) -> tuple[Path, str | None]:
        label, member = item.source, None
        if not self._candidates(label) and "#" in label:  # a member of an e-mail or archive: label#name
            label, _, member = item.source.partition("#")
        for path in self._candidates(label):
            if member is not None or self._same(path, item.sha256):
                return path, member
        if self._candidates(label):
            raise DocumentError(f"{item.source} has changed since the batch read it, so its pages are not shown",
                                hint="the values were read from the earlier file; run the batch again")
        raise DocumentError(f"{item.source} is not found, so its pages are not shown",
                            hint="start llamadoc review from the folder the batch ran in, or pass --documents DIR")

    def _candidates(self, label: str) -> list[Path]:
        given = Path(label)
        places = [given] if given.is_absolute() else [root / given for root in self.batch.roots]
        return [p for p in places if p.is_file()]

    def _same(self, path: Path, sha256: str | None) -> bool:
        """The file's bytes are the ones the batch read (hashed once per size and mtime)."""
        try:
            st = path.stat()
        except OSError:
            return False
        stamp = (st.st_mtime_ns, st.st_size)
        known = self._files.get(str(path))
        if known is None or known[0] != stamp:
            digest = hashlib.sha256()
            try:
                with path.open("rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        digest.update(chunk)
            except OSError:
                return False
            known = (stamp, path, digest.hexdigest())
            self._files[str(path)] = known
        return sha256 is None or known[2] == sha256


def warm(then: Callable[[], None] = lambda: None) -> None:
    """Import what the first requests need off them: PyMuPDF (the first page image) and the
    checks' libraries (python-stdnum, schwifty, pycountry: the first edit)."""
    def run() -> None:
        import pymupdf  # noqa: F401

        check_value(("seller", "vat_id"), "DE136695976")
        check_value(("iban",), "DE89370400440532013000")
        check_value(("currency",), "EUR")
        then()

    threading.Thread(target=run, name="llamadoc-review-warm", daemon=True).start()

