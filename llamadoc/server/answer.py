"""The one path every chat request takes: screen the request, queue it for the engine, stream the
answer's text, screen the answer. Ollama's and OpenAI's routes only shape what it yields.

Under ``--guard block`` no text leaves before the whole answer has been judged: a stream then
arrives in one go at the end, in the pieces the engine decoded. With ``flag`` or ``off`` text
streams as it is decoded. A client that goes away is noticed within POLL_S (also while its
request waits in the queue, and while a request that does not stream is decoded): its
generation stops at the engine's next decoding step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from anyio import to_thread
from starlette.requests import Request

from llamadoc.engines.base import GenerationResponse
from llamadoc.errors import ContextFull, LlamadocError
from llamadoc.guard import NOT_SCREENED
from llamadoc.results import Verdict
from llamadoc.server.batcher import Busy, Ticket
from llamadoc.server.bounds import bounds, run
from llamadoc.server.chat import Chat
from llamadoc.server.failures import ApiError, withheld
from llamadoc.server.resident import DEFAULT, KeepAlive, Resident

POLL_S = 0.2  # how often a request checks that its client is still there


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
    for note in (f"the {v.subject} was {NOT_SCREENED}" for v in verdicts if v.screened == NOT_SCREENED):
        if note not in warnings:  # once, however many images went unseen
            warnings.append(note)
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


async def generate(resident: Resident, chat: Chat, client: Request, keep_alive: KeepAlive = DEFAULT,
                   num_ctx: int | None = None) -> AsyncIterator[str | Answer]:
    """Text as it may be shown, then the Answer. Errors before the first item keep their status.

    ``keep_alive`` is this request's (Ollama's): how long the models stay after it; ``num_ctx``
    a context the request needs, which may load the model again with a larger one.
    """
    started, loaded_before = time.perf_counter(), resident.loaded_at
    guard, warnings = resident.guard, list[str]()
    mode = guard.policy.mode if guard is not None else "off"
    stopping = bounds(client).stopping
    with resident.use(keep_alive):
        if num_ctx is not None:
            await to_thread.run_sync(resident.ensure_context, num_ctx)
        if guard is not None:
            verdicts = await run("guard", guard.check_request, chat.prompt, chat.image, chat.context(),
                                 chat.other_images)
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
        checked = time.monotonic()
        try:
            while done is None:
                if stopping.is_set():  # SIGTERM: the stream ends with an error line, in its own format
                    raise ApiError(503, "the server is shutting down", headers={"Retry-After": "5"})
                try:
                    item: str | _Done | None = await asyncio.wait_for(queue.get(), POLL_S)
                except TimeoutError:
                    item = None
                if time.monotonic() - checked >= POLL_S:  # also while text flows: a request that
                    checked = time.monotonic()            # does not stream sends nothing to fail on
                    if await client.is_disconnected():
                        return
                if item is None:
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
        if isinstance(done.outcome, ContextFull):
            raise context_full(done.outcome, resident) from None
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


def context_full(err: ContextFull, resident: Resident) -> ApiError:
    """A prompt over the loaded context: which num_ctx would hold it, if the model can take that."""
    trained = resident.trained_context()
    more = (f"send options.num_ctx {err.need} (up to the model's trained {trained}) to load it with a larger one"
            if trained is None or err.need <= trained else f"that is more than the model's trained {trained} tokens: "
            "shorten the conversation")
    return ApiError(400, f"{err.message}: {more}")


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
