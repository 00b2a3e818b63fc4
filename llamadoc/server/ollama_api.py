"""Ollama's API, the subset its clients use, in the shapes its docs/api.md gives: /api/chat and
/api/generate (NDJSON when streaming, Ollama's default), /api/tags, /api/show, /api/ps,
/api/version and /api/pull. Durations are nanoseconds, as Ollama's."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llamadoc import __version__, registry
from llamadoc.engines.base import Message
from llamadoc.errors import LlamadocError
from llamadoc.server import accesslog
from llamadoc.server.answer import POLL_S, Answer, complete, generate, primed
from llamadoc.server.bounds import bounds, decode_conversation
from llamadoc.server.chat import (
    ANY_OBJECT,
    Chat,
    Turn,
    base64_image,
    checked_schema,
    conversation,
    integer,
    sampling,
    stop_texts,
    token_budget,
)
from llamadoc.server.failures import ApiError, shown
from llamadoc.server.options import parse_duration
from llamadoc.server.resident import DEFAULT, KeepAlive, Resident
from llamadoc.server.streams import Stream, check_unicode, json_body

NDJSON = "application/x-ndjson"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _stamp(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):  # past year 9999: as Ollama writes "for good"
        return "9999-12-31T23:59:59Z"


def _model(request: Request, resident: Resident, body: dict[str, Any]) -> str:
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "model is required")
    accesslog.model(request, name)
    if not resident.serves(name):
        raise ApiError(404, f"model {shown(name)} not found: this server serves {resident.name}")
    return name


def keep_alive(body: dict[str, Any]) -> KeepAlive:
    """This request's keep_alive (Ollama's: a duration, seconds, or negative for good)."""
    if body.get("keep_alive") is None:
        return DEFAULT
    try:
        return parse_duration(body["keep_alive"], "keep_alive")
    except LlamadocError as err:
        raise ApiError(400, str(err)) from None


def _options(body: dict[str, Any]) -> dict[str, Any]:
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "options must be an object")
    return options


def _num_ctx(options: dict[str, Any]) -> int | None:
    if options.get("num_ctx") is None:
        return None
    n = integer(options["num_ctx"], "num_ctx")
    if n < 1:
        raise ApiError(400, "num_ctx must be at least 1")
    return n


async def _chat(resident: Resident, body: dict[str, Any], turns: list[Turn]) -> Chat:
    options = _options(body)
    fmt = body.get("format")
    schema = None if fmt in (None, "") else ANY_OBJECT if fmt == "json" else checked_schema(fmt, "format")
    return Chat(messages=await decode_conversation(resident, conversation(turns)), schema=schema,
                max_tokens=token_budget(options.get("num_predict"), "num_predict", resident.options.max_tokens),
                sampling=sampling(options.get("temperature"), options.get("top_p"), options.get("seed")),
                stop=stop_texts(options.get("stop"), "options.stop"))


def _line(value: dict[str, Any]) -> bytes:
    return (json.dumps(value) + "\n").encode()


def _stats(answer: Answer) -> dict[str, Any]:
    r = answer.response
    stats: dict[str, Any] = {
        "done": True, "done_reason": r.finish_reason, "total_duration": answer.total_ns,
        "load_duration": answer.load_ns, "prompt_eval_count": r.prompt_tokens, "eval_count": r.completion_tokens,
    }
    t = r.timings_ms
    if "prefill" in t:  # the mllama engine splits its time; libmtmd's does not
        stats["prompt_eval_duration"] = int((t["prefill"] + t.get("vision_encode", 0.0)) * 1e6)
    if "decode" in t:
        stats["eval_duration"] = int(t["decode"] * 1e6)
    if answer.warnings:
        stats["warnings"] = answer.warnings  # --guard flag: what the guard judged unsafe
    return stats


async def _respond(request: Request, resident: Resident, name: str, chat: Chat, body: dict[str, Any],
                   key: str) -> Response:
    """Answer as /api/chat (key "message") or /api/generate (key "response", with the ``context``
    that continues the conversation)."""

    def piece(text: str) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": text}} if key == "message" else {"response": text}

    def last(answer: Answer) -> dict[str, Any]:
        accesslog.tokens(request, answer.response)
        if key == "message":
            return _stats(answer)
        said = Message("assistant", answer.response.text)
        return {**_stats(answer), "context": encode_context(resident, [*chat.messages, said])}

    stream = generate(resident, chat, request, keep_alive(body), _num_ctx(_options(body)))
    if body.get("stream", True) is False:
        answer = await complete(stream)
        return JSONResponse({"model": name, "created_at": _now(), **piece(answer.response.text), **last(answer)})
    first, rest = await primed(stream)

    async def lines() -> AsyncIterator[bytes]:
        item = first
        try:
            while not isinstance(item, Answer):
                yield _line({"model": name, "created_at": _now(), **piece(item), "done": False})
                item = await anext(rest)
            yield _line({"model": name, "created_at": _now(), **piece(""), **last(item)})
        except StopAsyncIteration:  # the client went away
            return
        except (LlamadocError, ApiError) as err:  # the status has gone out: the error goes in the stream
            accesslog.refused(request, str(err))
            yield _line({"error": str(err)})

    return Stream(lines(), rest, media_type=NDJSON)


async def chat(request: Request) -> Response:
    resident: Resident = request.app.state.resident
    body = await json_body(request)
    name = _model(request, resident, body)
    messages = body.get("messages") or []
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "messages must be a list of objects")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise ApiError(400, "tools must be a list")  # accepted; the model answers in text (chat.tool_choice)
    if not messages:
        return await _load_or_unload(resident, name, body, "message")
    turns = []
    for i, m in enumerate(messages, 1):
        content = m.get("content") or ""
        if not isinstance(content, str):
            raise ApiError(400, f"message {i}: content must be a string")
        images = m.get("images") or []
        if not isinstance(images, list):
            raise ApiError(400, f"message {i}: images must be a list of base64 strings")
        if not content and m.get("tool_calls"):  # another model's calls in the history: shown as what they were
            content = json.dumps(m["tool_calls"])
        turns.append(Turn(str(m.get("role")), content, [base64_image(x, f"message {i} image {j}")
                                                         for j, x in enumerate(images, 1)]))
    accesslog.asked(request, body.get("stream", True) is not False, len(tools or []),
                    sum(len(t.images) for t in turns), body.get("format") not in (None, ""))
    return await _respond(request, resident, name, await _chat(resident, body, turns), body, "message")


async def generate_route(request: Request) -> Response:
    resident: Resident = request.app.state.resident
    body = await json_body(request)
    name = _model(request, resident, body)
    for unsupported in ("suffix", "template"):
        if body.get(unsupported):
            raise ApiError(400, f"{unsupported} is not supported by this server")
    if body.get("raw"):
        raise ApiError(400, "raw prompts are not supported: this server renders every prompt with the model's "
                            "chat template (send the text without raw)")
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string")
    if not prompt:
        return await _load_or_unload(resident, name, body, "response")
    images = body.get("images") or []
    if not isinstance(images, list):
        raise ApiError(400, "images must be a list of base64 strings")
    system = body.get("system") or None
    if system is not None and not isinstance(system, str):
        raise ApiError(400, "system must be a string")
    turns = decode_context(resident, body.get("context"))
    if system is not None:
        turns = [t for t in turns if t.role != "system"]
        turns.insert(0, Turn("system", system, []))
    turns.append(Turn("user", prompt, [base64_image(x, f"image {j}") for j, x in enumerate(images, 1)]))
    accesslog.asked(request, body.get("stream", True) is not False, 0, sum(len(t.images) for t in turns),
                    body.get("format") not in (None, ""))
    return await _respond(request, resident, name, await _chat(resident, body, turns), body, "response")


def encode_context(resident: Resident, messages: list[Message]) -> list[int]:
    """/api/generate's ``context``: the conversation so far, for the client to send back with its
    next prompt. Ollama's are token ids; ours carry the turns themselves (their bytes, each an
    int, so clients that treat it as opaque numbers keep working), and images by their hash,
    which the server keeps for a while."""
    turns = [[m.role, m.text, [resident.images.keep(img) for img in m.images]] for m in messages]
    return list(json.dumps({"v": 1, "turns": turns}, separators=(",", ":")).encode())


def decode_context(resident: Resident, value: Any) -> list[Turn]:
    if value in (None, []):
        return []
    bad = ApiError(400, "context is not one this server gave (send back the context of its last answer)")
    if not isinstance(value, list) or not all(isinstance(b, int) and 0 <= b < 256 for b in value):
        raise bad
    try:
        data = json.loads(bytes(value))
        check_unicode(data)  # as any body: a \ud800 escape would fail only when rendered
        if not all(isinstance(keys, list) and all(isinstance(k, str) for k in keys) for _, _, keys in data["turns"]):
            raise bad
        turns = [Turn(str(role), str(text), [resident.images.recall(k) for k in keys])
                 for role, text, keys in data["turns"]]
    except KeyError:
        raise ApiError(400, "context refers to an image this server no longer holds: send it again in images"
                       ) from None
    except (ValueError, TypeError, RecursionError):
        raise bad from None
    return turns


async def _load_or_unload(resident: Resident, name: str, body: dict[str, Any], key: str) -> Response:
    """An empty request loads the model, or with keep_alive 0 unloads it (Ollama's way); either
    way its keep_alive is the one in force after it."""
    empty = {"role": "assistant", "content": ""} if key == "message" else ""
    wanted = keep_alive(body)
    with resident.use(wanted):
        if wanted != 0:
            await to_thread.run_sync(resident.engine)
    if wanted == 0:  # now, or as soon as the requests under way are done
        await to_thread.run_sync(resident.unload_if_idle)
    reason = "unload" if wanted == 0 else "load"
    return JSONResponse({"model": name, "created_at": _now(), key: empty, "done_reason": reason, "done": True})


def _details(resident: Resident) -> dict[str, Any]:
    s = resident.summary()
    size = s.parameters
    label = f"{size / 1e9:.1f}B" if size >= 1e9 else f"{size / 1e6:.1f}M" if size >= 1e6 else f"{size / 1e3:.1f}K"
    return {"parent_model": "", "format": "gguf", "family": s.architecture, "families": [s.architecture],
            "parameter_size": label, "quantization_level": s.quantisation or ""}


def _entry(resident: Resident) -> dict[str, Any]:
    r = resident.models.resolve()
    files = [r.model_path, *([r.mmproj_path] if r.mmproj_path else [])]
    name = resident.name  # a name, never the model's path on this machine
    return {"name": name, "model": name, "modified_at": _stamp(r.model_path.stat().st_mtime),
            "size": sum(Path(f).stat().st_size for f in files), "digest": resident.models.sha256(),
            "details": _details(resident)}


async def tags(request: Request) -> Response:
    resident: Resident = request.app.state.resident
    return JSONResponse({"models": [await to_thread.run_sync(_entry, resident)]})


async def show(request: Request) -> Response:
    resident: Resident = request.app.state.resident
    _model(request, resident, await json_body(request))
    s = await to_thread.run_sync(resident.summary)
    r = resident.models.resolve()
    info: dict[str, Any] = {"general.architecture": s.architecture, "general.parameter_count": s.parameters}
    if s.context:
        info[f"{s.architecture}.context_length"] = s.context
    return JSONResponse({
        "modelfile": f"# served by llamadoc {__version__}\nFROM {resident.name}\n", "parameters": "", "template": "",
        "details": _details(resident), "model_info": info, "capabilities": ["completion", "vision"],
        "modified_at": _stamp(r.model_path.stat().st_mtime),
    })


async def ps(request: Request) -> Response:
    resident: Resident = request.app.state.resident
    engine = resident.models.loaded  # never loads it: an unloaded model is not running
    if engine is None:
        return JSONResponse({"models": []})
    entry = await to_thread.run_sync(_entry, resident)
    expires = resident.expires_at()
    entry.update({
        "expires_at": _stamp(expires) if expires is not None else "9999-12-31T23:59:59Z",
        "size_vram": entry["size"] if engine.gpu_layers else 0,
        "context_length": getattr(engine, "n_ctx", None),
    })
    return JSONResponse({"models": [entry]})


async def version(request: Request) -> Response:
    return JSONResponse({"version": __version__})


async def pull(request: Request) -> Response:
    """Download a model of the registry (`llamadoc models pull`); this server still serves its own."""
    resident: Resident = request.app.state.resident
    body = await json_body(request)
    name = body.get("model") or body.get("name")
    settings = resident.models.settings
    if not isinstance(name, str) or name not in settings.models:
        raise ApiError(404, f"model {shown(name)} is not in the registry (see `llamadoc models list`)")
    spec = settings.model(name)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def run() -> None:
        def say(message: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, {"status": message})

        try:
            registry.pull(settings, spec, say)
            say("success")
        except LlamadocError as err:
            loop.call_soon_threadsafe(queue.put_nowait, {"error": str(err)})

    task = asyncio.ensure_future(to_thread.run_sync(run))
    if body.get("stream", True) is False:
        await task
        last: dict[str, Any] = {}
        while not queue.empty():
            last = queue.get_nowait()
        if "error" in last:
            raise ApiError(502, last["error"])
        return JSONResponse(last)

    stopping = bounds(request).stopping

    async def lines() -> AsyncIterator[bytes]:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), POLL_S)
            except TimeoutError:
                if stopping.is_set():  # the download goes on in its thread; the stream ends saying why
                    yield _line({"error": "the server is shutting down"})
                    return
                continue
            yield _line(item)
            if "error" in item or item.get("status") == "success":
                return

    return Stream(lines(), None, media_type=NDJSON)


async def root(request: Request) -> Response:
    return Response("llamadoc is running", media_type="text/plain")


routes = [
    Route("/", root, methods=["GET", "HEAD"]),
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/generate", generate_route, methods=["POST"]),
    Route("/api/tags", tags, methods=["GET"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/ps", ps, methods=["GET"]),
    Route("/api/version", version, methods=["GET"]),
    Route("/api/pull", pull, methods=["POST"]),
]
