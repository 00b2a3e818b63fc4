"""The one path every chat request takes: screen the request, queue it for the engine, stream the
answer's text, screen the answer. Ollama's and OpenAI's routes only shape what it yields.

Under ``--guard block`` no text leaves before the whole answer has been judged: a stream then
arrives in one go at the end, in the pieces the engine decoded. With ``flag`` or ``off`` text
streams as it is decoded. A client that goes away is noticed within half a second (also while
its request waits in the queue) and its sequence freed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from starlette.requests import Request

from llamadoc.engines.base import GenerationResponse
from llamadoc.errors import LlamadocError
from llamadoc.guard import NOT_SCREENED
from llamadoc.results import Verdict
from llamadoc.server.batcher import Busy, Ticket
from llamadoc.server.bounds import bounds, run
from llamadoc.server.chat import Chat
from llamadoc.server.failures import ApiError, withheld
from llamadoc.server.resident import Resident

POLL_S = 0.5  # how often a waiting request checks that its client is still there


@dataclass
class Answer:
    """The end of a generation: the engine's response and what the guard said of it."""

    response: GenerationResponse
    total_ns: int
    load_ns: int
    warnings: list[str] = field(default_factory=list)  # --guard flag: what was judged unsafe


@dataclass
class _Done:
    outcome: GenerationResponse | LlamadocError


def judged(verdicts: Sequence[Verdict], what: str, mode: str, warnings: list[str]) -> None:
    """Apply the server's policy: raise (withheld) under block, note under flag. Unjudged is not safe.
    What a text-only guard could not see is said in every answer, as the CLI's results record it."""
    warnings.extend(f"the {v.subject} was {NOT_SCREENED}" for v in verdicts if v.screened == NOT_SCREENED)
    failure = next((v.error for v in verdicts if v.error), None)
    codes = sorted({f"{c} {n}" for v in verdicts if v.safe is False for c, n in zip(v.categories, v.category_names,
                                                                                    strict=True)})
    if failure is None and not any(v.safe is False for v in verdicts):
        return
    message = failure or f"{what} was judged unsafe ({', '.join(codes) or 'above the threshold'})"
    if mode == "block":
        if failure:
            raise ApiError(503, f"{what} could not be screened: {failure}", headers={"Retry-After": "5"})
        raise withheld(message)
    warnings.append(message)


async def generate(resident: Resident, chat: Chat, client: Request) -> AsyncIterator[str | Answer]:
    """Text as it may be shown, then the Answer. Errors before the first item keep their status."""
    started, loaded_before = time.perf_counter(), resident.loaded_at
    guard, warnings = resident.guard, list[str]()
    mode = guard.policy.mode if guard is not None else "off"
    stopping = bounds(client).stopping
    with resident.use():
        if guard is not None:
            context = [chat.system] if chat.system else []
            verdicts = await run("guard", guard.check_request, chat.prompt, chat.image, context)
            judged(verdicts, "the request", mode, warnings)
        live = mode != "block"
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | _Done] = asyncio.Queue()
        def put(item: str | _Done) -> None:  # from the engine's thread
            loop.call_soon_threadsafe(queue.put_nowait, item)

        ticket = Ticket(chat.request(), on_text=put, on_done=lambda r: put(_Done(r)))
        try:
            resident.batcher.submit(ticket)
        except Busy as err:
            raise ApiError(503, f"the server is busy ({err}); retry shortly", headers={"Retry-After": "2"}) from None
        held: list[str] = []
        done: _Done | None = None
        try:
            while done is None:
                if stopping.is_set():  # SIGTERM: the stream ends with an error line, in its own format
                    raise ApiError(503, "the server is shutting down", headers={"Retry-After": "5"})
                try:
                    item = await asyncio.wait_for(queue.get(), POLL_S)
                except TimeoutError:
                    if await client.is_disconnected():
                        return
                    continue
                if isinstance(item, _Done):
                    done = item
                elif live:
                    if item:
                        yield item
                else:
                    held.append(item)
        finally:
            if done is None:
                ticket.cancelled.set()  # the client went away, or stopped reading: free its sequence
        if isinstance(done.outcome, LlamadocError):
            raise done.outcome
        response = done.outcome
        if guard is not None:
            verdict = await run("guard", guard.check_output, chat.prompt, response.text)
            judged([verdict], "the answer", mode, warnings)
        for piece in held:
            if piece:
                yield piece
        load_ns = int(resident.load_ms * 1e6) if loaded_before is None and resident.loaded_at is not None else 0
        yield Answer(response, int((time.perf_counter() - started) * 1e9), load_ns, warnings)


async def primed(stream: AsyncIterator[str | Answer]) -> tuple[str | Answer, AsyncIterator[str | Answer]]:
    """The first item, awaited before any response starts: errors up to it keep their HTTP status."""
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        raise ApiError(499, "the client went away") from None
    return first, stream


async def complete(stream: AsyncIterator[str | Answer]) -> Answer:
    """The whole answer of a request that does not stream."""
    async for item in stream:
        if isinstance(item, Answer):
            return item
    raise ApiError(499, "the client went away")
