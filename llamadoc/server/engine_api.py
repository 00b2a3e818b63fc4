"""llamadoc's engine routes, /v1/engine/*: the server's engines for `llamadoc ask|describe|extract
--server` (llamadoc.models.remote speaks the other end). The client's pipeline screens each page with
this server's guard model under its own policy; when this server screens its own requests, a
client that would go unscreened is refused."""

from __future__ import annotations

import asyncio
from typing import Any

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llamadoc.engines.base import GenerationResponse
from llamadoc.errors import GuardError, LlamadocError
from llamadoc.guard import Guard
from llamadoc.models.wire import judge_from_wire, request_from_wire, response_to_wire
from llamadoc.server.answer import POLL_S
from llamadoc.server.batcher import Busy, Ticket
from llamadoc.server.failures import ApiError
from llamadoc.server.resident import Resident
from llamadoc.server.streams import json_body


def _screened(resident: Resident, client_mode: Any) -> None:
    guard = resident.guard
    if guard is not None and guard.policy.mode != "off" and client_mode == "off":
        raise GuardError(f"this server screens every request (--guard {guard.policy.mode})",
                         hint="run with --guard block or --guard flag")


async def info(request: Request) -> Response:
    resident: Resident = request.app.state.resident
    return JSONResponse(await to_thread.run_sync(resident.engine_info))


async def load(request: Request) -> Response:
    resident: Resident = request.app.state.resident
    _screened(resident, (await json_body(request)).get("guard"))
    with resident.use():
        engine = await to_thread.run_sync(resident.engine)
    return JSONResponse({"gpu_layers": engine.gpu_layers, "device": engine.device})


async def generate(request: Request) -> Response:
    resident: Resident = request.app.state.resident
    gen, mode = request_from_wire(await json_body(request))
    _screened(resident, mode)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[GenerationResponse | LlamadocError] = loop.create_future()

    def finished(outcome: GenerationResponse | LlamadocError) -> None:  # from the engine's thread
        loop.call_soon_threadsafe(done.set_result, outcome)

    ticket = Ticket(gen, on_done=finished)
    with resident.use():
        try:
            resident.batcher.submit(ticket)
        except Busy as err:
            raise ApiError(503, f"the server is busy ({err}); retry shortly", headers={"Retry-After": "1"}) from None
        try:
            while not done.done():
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
    return JSONResponse(response_to_wire(outcome))


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

    return JSONResponse(await to_thread.run_sync(loaded))


async def guard_tokens(request: Request) -> Response:
    resident: Resident = request.app.state.resident
    text = (await json_body(request)).get("text")
    if not isinstance(text, str):
        raise ApiError(400, "text must be a string")

    def count() -> int:
        with resident.use(), _guard(resident).exclusive() as engine:
            return engine.count_tokens(text)

    return JSONResponse({"count": await to_thread.run_sync(count)})


async def guard_split(request: Request) -> Response:
    resident: Resident = request.app.state.resident
    body = await json_body(request)
    text, most = body.get("text"), body.get("max_tokens")
    if not isinstance(text, str) or not isinstance(most, int) or isinstance(most, bool) or most < 1:
        raise ApiError(400, "text must be a string and max_tokens a positive integer")

    def split() -> list[str]:
        with resident.use(), _guard(resident).exclusive() as engine:
            return engine.split(text, most)

    return JSONResponse({"pieces": await to_thread.run_sync(split)})


async def guard_judge(request: Request) -> Response:
    resident: Resident = request.app.state.resident
    judge = judge_from_wire(await json_body(request))

    def run() -> dict[str, Any]:
        with resident.use(), _guard(resident).exclusive() as engine:
            out = engine.judge(judge)
        return {"text": out.text, "p_unsafe": out.p_unsafe}

    return JSONResponse(await to_thread.run_sync(run))


routes = [
    Route("/v1/engine/info", info, methods=["GET"]),
    Route("/v1/engine/load", load, methods=["POST"]),
    Route("/v1/engine/generate", generate, methods=["POST"]),
    Route("/v1/engine/guard/load", guard_load, methods=["POST"]),
    Route("/v1/engine/guard/tokens", guard_tokens, methods=["POST"]),
    Route("/v1/engine/guard/split", guard_split, methods=["POST"]),
    Route("/v1/engine/guard/judge", guard_judge, methods=["POST"]),
]
