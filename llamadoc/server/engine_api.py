"""llamadoc's engine routes, /v1/engine/*: the server's engines for `llamadoc ask|describe|extract
--server` (llamadoc.models.remote speaks the other end). The client's pipeline screens each page with
this server's guard model under its own policy.

The server's own policy is a floor: a request may ask for more screening than ``--guard`` (a
client under block, a server under flag), never less. A client that would go unscreened is
refused, and what the client says it does is not taken on trust: when this server screens, it
screens every generation here too, request and answer, under the stricter of the two policies.
The verdicts its client just asked for (/v1/engine/guard/judge) come from the guard's cache.
"""

from __future__ import annotations

import asyncio
from typing import Any

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llamadoc.engines.base import GenerationRequest, GenerationResponse
from llamadoc.errors import GuardError, LlamadocError, UsageError
from llamadoc.guard import MODES, Guard
from llamadoc.models.wire import image_from_wire, request_from_wire, response_to_wire
from llamadoc.server.answer import POLL_S, judged
from llamadoc.server.batcher import Busy, Ticket
from llamadoc.server.bounds import bounds, check_prompt, run
from llamadoc.server.failures import ApiError
from llamadoc.server.resident import Resident
from llamadoc.server.streams import json_body

STRICTNESS = {"off": 0, "flag": 1, "block": 2}
PAGE_IMAGES = 1  # what llamadoc.models.remote sends: one page per request, as every engine reads it


def _screened(resident: Resident, client_mode: Any) -> str:
    """The policy a request is screened under here: the stricter of the server's and the client's."""
    if client_mode not in MODES:
        raise UsageError(f"guard must be one of {', '.join(MODES)}, not {client_mode!r}")
    guard = resident.guard
    if guard is None:
        return "off"
    if guard.policy.mode != "off" and client_mode == "off":
        raise GuardError(f"this server screens every request (--guard {guard.policy.mode})",
                         hint="run with --guard block or --guard flag")
    return max(guard.policy.mode, str(client_mode), key=STRICTNESS.__getitem__)


async def info(request: Request) -> Response:
    resident: Resident = request.app.state.resident
    return JSONResponse(await to_thread.run_sync(resident.engine_info))


async def load(request: Request) -> Response:
    resident: Resident = request.app.state.resident
    _screened(resident, (await json_body(request)).get("guard"))
    with resident.use():
        engine = await to_thread.run_sync(resident.engine)
    return JSONResponse({"gpu_layers": engine.gpu_layers, "device": engine.device})


def _withheld(err: ApiError) -> LlamadocError | ApiError:
    """The guard's refusal as the client's pipeline knows it (a GuardError), other errors as they are."""
    return GuardError(err.message) if err.code == "content_policy_violation" else err


async def generate(request: Request) -> Response:
    resident: Resident = request.app.state.resident
    body = await json_body(request)
    prompt, system = body.get("prompt"), body.get("system")
    check_prompt(resident, prompt if isinstance(prompt, str) else None, system if isinstance(system, str) else None)
    images = body.get("images")
    if isinstance(images, list) and len(images) > PAGE_IMAGES:  # refused before any is decoded
        raise ApiError(413, f"an engine request carries one page image, not {len(images):,}",
                       code="request_too_large")
    mode = _screened(resident, body.get("guard"))  # before decoding: a client refused costs nothing
    gen, _ = await run("decode", request_from_wire, body, resident.options.max_image_pixels)
    most = resident.options.max_tokens
    if gen.max_tokens > most:  # every route honours --max-tokens: the context was sized for it
        gen = GenerationRequest(prompt=gen.prompt, images=gen.images, system=gen.system, schema=gen.schema,
                                max_tokens=most, sampling=gen.sampling)
    guard, warnings = resident.guard, list[str]()
    image = gen.images[0] if gen.images else None
    with resident.use():
        if guard is not None and mode != "off":
            verdicts = await run("guard", guard.check_request, gen.prompt, image,
                                 [gen.system] if gen.system else [])
            try:
                judged(verdicts, "the request", mode, warnings)
            except ApiError as err:
                raise _withheld(err) from None
        outcome = await _generated(request, resident, gen)
        if guard is not None and mode != "off":
            verdict = await run("guard", guard.check_output, gen.prompt, outcome.text)
            try:
                judged([verdict], "the answer", mode, warnings)
            except ApiError as err:
                raise _withheld(err) from None
    wire = response_to_wire(outcome)
    if warnings:
        wire["warnings"] = warnings  # what this server's guard flagged, or could not see
    return JSONResponse(wire)


async def _generated(request: Request, resident: Resident, gen: GenerationRequest) -> GenerationResponse:
    """The engine's answer; the request cancelled when its client goes away or the server stops."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[GenerationResponse | LlamadocError] = loop.create_future()

    def finished(outcome: GenerationResponse | LlamadocError) -> None:  # from the engine's thread
        loop.call_soon_threadsafe(done.set_result, outcome)

    ticket = Ticket(gen, on_done=finished)
    stopping = bounds(request).stopping
    try:
        resident.batcher.submit(ticket)
    except Busy as err:
        raise ApiError(503, f"the server is busy ({err}); retry shortly", headers={"Retry-After": "1"}) from None
    try:
        while not done.done():
            if stopping.is_set():
                raise ApiError(503, "the server is shutting down", headers={"Retry-After": "5"})
            try:
                await asyncio.wait_for(asyncio.shield(done), POLL_S)
            except TimeoutError:
                if await request.is_disconnected():
                    break
    finally:
        if not done.done():
            ticket.cancelled.set()
    outcome = done.result() if done.done() else None
    if outcome is None:
        raise ApiError(499, "the client went away")
    if isinstance(outcome, LlamadocError):
        raise outcome
    return outcome


def _guard(resident: Resident) -> Guard:
    guard = resident.guard
    if guard is None:
        raise GuardError("this server runs without a guard (llamadoc serve --guard off)",
                         hint="start it with --guard block, or pass --guard off to go unscreened")
    return guard


async def guard_load(request: Request) -> Response:
    resident: Resident = request.app.state.resident

    def loaded() -> dict[str, Any]:
        with resident.use(), _guard(resident).exclusive() as engine:
            return {"model_name": engine.model_name, "sees_images": engine.sees_images, "n_ctx": engine.n_ctx}

    return JSONResponse(await run("guard", loaded))


def _text(resident: Resident, body: dict[str, Any], name: str = "text") -> str:
    text = body.get(name)
    if not isinstance(text, str):
        raise ApiError(400, f"{name} must be a string")
    check_prompt(resident, text)
    return text


async def guard_tokens(request: Request) -> Response:
    resident: Resident = request.app.state.resident
    text = _text(resident, await json_body(request))

    def count() -> int:
        with resident.use(), _guard(resident).exclusive() as engine:
            return engine.count_tokens(text)

    return JSONResponse({"count": await run("guard", count)})


async def guard_split(request: Request) -> Response:
    resident: Resident = request.app.state.resident
    body = await json_body(request)
    text, most = _text(resident, body), body.get("max_tokens")
    if not isinstance(most, int) or isinstance(most, bool) or most < 1:
        raise ApiError(400, "text must be a string and max_tokens a positive integer")

    def split() -> list[str]:
        with resident.use(), _guard(resident).exclusive() as engine:
            return engine.split(text, most)

    return JSONResponse({"pieces": await run("guard", split)})


async def guard_judge(request: Request) -> Response:
    """A guard prompt the client rendered, judged by this server's guard under the verdict's own
    grammar and length (the client's are not taken: only the prompt and its image are)."""
    resident: Resident = request.app.state.resident
    body = await json_body(request)
    prompt = _text(resident, body, "prompt")
    data = body.get("image")
    image = await run("decode", image_from_wire, data, resident.options.max_image_pixels) \
        if data is not None else None

    def judge() -> dict[str, Any]:
        with resident.use():
            out, _cached = _guard(resident).judge(prompt, image)
        return {"text": out.text, "p_unsafe": out.p_unsafe}

    return JSONResponse(await run("guard", judge))


routes = [
    Route("/v1/engine/info", info, methods=["GET"]),
    Route("/v1/engine/load", load, methods=["POST"]),
    Route("/v1/engine/generate", generate, methods=["POST"]),
    Route("/v1/engine/guard/load", guard_load, methods=["POST"]),
    Route("/v1/engine/guard/tokens", guard_tokens, methods=["POST"]),
    Route("/v1/engine/guard/split", guard_split, methods=["POST"]),
    Route("/v1/engine/guard/judge", guard_judge, methods=["POST"]),
]
