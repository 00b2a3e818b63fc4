"""The review page's routes: the page and its assets, the queue, a document, its page images,
the checks of edited values, the hold a reviewer takes on a document, and decisions.

Every path is relative, so the same app answers at / (`llamadoc review`) and under a prefix
(`llamadoc serve --review`). No path from a request ever names a file: documents are known by
the ids of the batch's index, assets by a fixed list. A request that changes something must be
JSON (a web page elsewhere cannot send JSON without a preflight, which the origin rules answer).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llamadoc.errors import DocumentError, LlamadocError, UsageError
from llamadoc.outputs.decisions import Conflict, Decision, DecisionError, who
from llamadoc.outputs.writer import Claims
from llamadoc.review.batch import Batch, NotFound, record_checks, schema_of

MAX_BODY = 1 << 20  # a decision or a check is a few KiB; nothing the page sends comes near
HOLD_S = 45.0  # a hold whose page has not been heard from for this long is let go (the page renews every 15 s)
ASSETS = {"review.js": "text/javascript", "review.css": "text/css", "icon.svg": "image/svg+xml"}
# Nothing but this origin: no script, style, image or connection from anywhere else.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Locked(LlamadocError):
    """Another reviewer holds the document (423)."""


@dataclass
class Holds:
    """Which review page has each document open: a lock per document as the batch's claims
    (an OS file lock, so two `llamadoc review` processes on one folder see each other's), and
    within this process, which page (session) holds it. One page holds one document at a time."""

    claims: Claims
    _by: dict[str, tuple[str, float]] = field(default_factory=dict)  # id -> (session, last heard)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, doc_id: str, session: str) -> None:
        with self._lock:
            self._expire()
            held = self._by.get(doc_id)
            if held is not None and held[0] != session:
                raise Locked("another review page has this document open",
                             hint=f"it is yours when that page moves on, or {HOLD_S:g} s after it was closed")
            for other, (owner, _) in list(self._by.items()):  # one document per page
                if owner == session and other != doc_id:
                    self._let_go(other)
            if held is None and not self.claims.claim(doc_id):
                raise Locked("another reviewer has this document open (another llamadoc review of this folder)",
                             hint="pick another document; this one is free when they move on")
            self._by[doc_id] = (session, time.monotonic())

    def release(self, doc_id: str, session: str) -> None:
        with self._lock:
            held = self._by.get(doc_id)
            if held is not None and held[0] == session:
                self._let_go(doc_id)

    def close(self) -> None:
        with self._lock:
            for doc_id in list(self._by):
                self._let_go(doc_id)

    def _expire(self) -> None:
        now = time.monotonic()
        for doc_id, (_, heard) in list(self._by.items()):
            if now - heard > HOLD_S:
                self._let_go(doc_id)

    def _let_go(self, doc_id: str) -> None:
        self._by.pop(doc_id, None)
        self.claims.release(doc_id)


def _asset(name: str) -> bytes:
    return resources.files("llamadoc.review").joinpath("assets", name).read_bytes()


def _error(status: int, message: str, hint: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message + (f" ({hint})" if hint else ""), "message": message, "hint": hint},
                        status_code=status, headers=HEADERS)


def _status(err: LlamadocError) -> int:
    if isinstance(err, NotFound | DocumentError):  # no such document, or no page of it to show
        return 404
    if isinstance(err, Locked):
        return 423
    if isinstance(err, Conflict):
        return 409
    if isinstance(err, DecisionError):
        return 409  # the decision on disk is damaged, or cannot be written: the state, not the request
    if isinstance(err, UsageError):
        return 400
    return 500


async def _library_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LlamadocError)
    return _error(_status(exc), exc.message, exc.hint)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, str(exc.detail))


async def _json(request: Request) -> dict[str, Any]:
    """The request's JSON object: JSON only, and small."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise HTTPException(415, "send JSON (Content-Type: application/json)")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise HTTPException(413, f"the request body is over {MAX_BODY >> 10} KiB")
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            raise HTTPException(413, f"the request body is over {MAX_BODY >> 10} KiB")
    try:
        body = json.loads(data, parse_constant=_not_a_number, parse_float=_finite)
    except (ValueError, RecursionError):
        raise HTTPException(400, "the request body is not JSON (of finite numbers)") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "the request body is not a JSON object")
    return body


def _not_a_number(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON has")


def _finite(text: str) -> float:
    """A JSON number as a float; 1e999 is refused, not taken as infinity (which no JSON file holds)."""
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:20]} is too large")
    return number


def _session(body: dict[str, Any]) -> str:
    session = body.get("session")
    if not isinstance(session, str) or not re.fullmatch(r"[A-Za-z0-9_-]{8,64}", session):
        raise HTTPException(400, "no session: the page sends one with every change")
    return session


def build(out: Path, documents: tuple[Path, ...] = ()) -> Starlette:
    """The review app over the -o folder ``out``; ``documents``: where relative sources are found
    besides the working directory and the folder above ``out``."""
    batch = Batch(out, documents)
    holds = Holds(Claims(batch.decisions.locks))
    reviewer = who()

    async def page(request: Request) -> Response:
        return Response(_asset("index.html"), media_type="text/html; charset=utf-8", headers=HEADERS)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            raise NotFound(f"no asset {name[:40]!r}")
        return Response(_asset(name), media_type=ASSETS[name], headers=HEADERS)

    def queue(request: Request) -> Response:
        return JSONResponse({**batch.queue(), "reviewer": reviewer}, headers=HEADERS)

    def document(request: Request) -> Response:
        doc_id = request.path_params["id"]
        return JSONResponse({**batch.document(doc_id), "reviewer": reviewer}, headers=HEADERS)

    def image(request: Request) -> Response:
        item = batch.item(request.path_params["id"])
        data = batch.pages.image(item, request.path_params["page"])
        return Response(data, media_type="image/jpeg", headers={**HEADERS, "Cache-Control": "private, max-age=300"})

    async def check(request: Request) -> Response:
        body = await _json(request)
        edits = body.get("values")
        if not isinstance(edits, dict):
            raise HTTPException(400, "send the edited values as {\"values\": {path: value}}")
        checked = await run_in_threadpool(batch.checks, request.path_params["id"], edits)
        return JSONResponse(checked, headers=HEADERS)

    async def hold(request: Request) -> Response:
        body = await _json(request)
        item = await run_in_threadpool(batch.item, request.path_params["id"])
        await run_in_threadpool(holds.take, item.id, _session(body))
        return JSONResponse({"held": True}, headers=HEADERS)

    async def release(request: Request) -> Response:
        body = await _json(request)
        item = await run_in_threadpool(batch.item, request.path_params["id"])
        await run_in_threadpool(holds.release, item.id, _session(body))
        return JSONResponse({"held": False}, headers=HEADERS)

    async def decide(request: Request) -> Response:
        body = await _json(request)
        # Files and locks (a decision may wait for another reviewer's write): off the event loop.
        made = await run_in_threadpool(decide_now, request.path_params["id"], body)
        return JSONResponse({"decision": made.to_json()}, headers=HEADERS)

    def decide_now(doc_id: str, body: dict[str, Any]) -> Decision:
        session = _session(body)
        item = batch.item(doc_id)
        decision, note, base, edits = body.get("decision"), body.get("note") or "", body.get("base", 0), \
            body.get("values") or {}
        if decision not in ("approved", "rejected"):
            raise HTTPException(400, "decision must be approved or rejected")
        if not isinstance(note, str) or len(note) > 4000:
            raise HTTPException(400, "the note is text of at most 4,000 characters")
        if isinstance(base, bool) or not isinstance(base, int) or not isinstance(edits, dict):
            raise HTTPException(400, "base is the revision the page saw, values {path: value}")
        holds.take(item.id, session)  # the page holds it already; a page that lost it gets 423
        entry, result = batch.entry(item)
        record: dict[str, Any] | None = None
        changed: dict[str, dict[str, Any]] = {}
        # A document that was not read has nothing to correct: it can only be rejected.
        if not (result.get("fields") is None and not edits and decision == "rejected"):
            record, _, changed = batch.changes(result, edits)  # refuses a document without fields
        if decision == "approved":
            assert record is not None
            failed = [c for c in record_checks(record, schema_of(result)) if c.name == "schema" and c.status == "fail"]
            if failed:
                raise UsageError(f"the values do not fit the batch's schema: {failed[0].detail}",
                                 hint="correct them before approving, or reject the document")
        return batch.decisions.decide(entry, item.source, decision, record, changed, note.strip(), base, reviewer)

    app = Starlette(
        routes=[
            Route("/", page), Route("/assets/{name}", asset), Route("/api/queue", queue),
            Route("/api/documents/{id}", document),
            Route("/api/documents/{id}/pages/{page:int}", image),
            Route("/api/documents/{id}/check", check, methods=["POST"]),
            Route("/api/documents/{id}/hold", hold, methods=["POST"]),
            Route("/api/documents/{id}/release", release, methods=["POST"]),
            Route("/api/documents/{id}/decision", decide, methods=["POST"]),
        ],
        exception_handlers={LlamadocError: _library_error, HTTPException: _http_error},
    )
    app.state.batch, app.state.holds = batch, holds
    batch.refresh()
    return app

