"""OpenAI's chat completions, the subset document tools use: content parts with image_url data
URIs, response_format json_object and json_schema, streaming as server-sent events, and the
model list. Shapes as OpenAI's API reference and its Python client read them."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llamadoc import __version__
from llamadoc.errors import LlamadocError
from llamadoc.server import accesslog
from llamadoc.server.answer import Answer, complete, generate, primed
from llamadoc.server.bounds import decode_conversation
from llamadoc.server.chat import (
    ANY_OBJECT,
    Chat,
    Turn,
    checked_schema,
    conversation,
    data_uri,
    sampling,
    stop_texts,
    token_budget,
    tool_choice,
)
from llamadoc.server.failures import ApiError, body, shown
from llamadoc.server.resident import Resident
from llamadoc.server.streams import Stream, json_body

if TYPE_CHECKING:
    from PIL.Image import Image

FINGERPRINT = f"llamadoc-{__version__}"


def _turn(i: int, message: dict[str, Any]) -> Turn:
    content = message.get("content")
    role = str(message.get("role"))
    if not content and message.get("tool_calls"):  # another model's calls in the history: shown as they were
        return Turn(role, json.dumps(message["tool_calls"]), [])
    if content is None or isinstance(content, str):
        return Turn(role, content or "", [])
    if not isinstance(content, list):
        raise ApiError(400, f"messages[{i}].content must be a string or a list of parts")
    texts: list[str] = []
    images: list[bytes | Image] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text"):
            if not isinstance(part.get("text"), str):
                raise ApiError(400, f"messages[{i}].content[{j}].text must be a string")
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            images.append(data_uri(url.get("url") if isinstance(url, dict) else url, f"messages[{i}].content[{j}]"))
        else:
            raise ApiError(400, f"messages[{i}].content[{j}]: parts of type {shown(kind)} are not supported "
                                "(text and image_url are)")
    return Turn(role, "\n".join(texts), images)


def _schema(fmt: Any) -> dict[str, Any] | None:
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return ANY_OBJECT
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        return checked_schema(spec.get("schema") if isinstance(spec, dict) else None, "response_format.json_schema")
    raise ApiError(400, "response_format.type must be text, json_object or json_schema")


async def completions(request: Request) -> Response:
    resident: Resident = request.app.state.resident
    req = await json_body(request)
    name = req.get("model")
    if not isinstance(name, str) or not resident.serves(name):
        raise ApiError(404, f"the model {shown(name)} does not exist: this server serves {resident.name}",
                       code="model_not_found")
    accesslog.model(request, name)
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "messages must be a non-empty list of objects")
    tools = req.get("tools", req.get("functions"))
    if tools is not None and not isinstance(tools, list):
        raise ApiError(400, "tools must be a list")
    tool_choice(req.get("tool_choice", req.get("function_call")) if tools else None, name)
    if req.get("n") not in (None, 1):
        raise ApiError(400, "n must be 1: the server gives one answer per request")
    turns = conversation([_turn(i, m) for i, m in enumerate(messages)])
    limit = req.get("max_completion_tokens", req.get("max_tokens"))
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):  # -1 is Ollama's
        raise ApiError(400, "max_tokens must be a positive integer", code="invalid_value")
    schema = _schema(req.get("response_format"))
    accesslog.asked(request, bool(req.get("stream")), len(tools or []), sum(len(t.images) for t in turns),
                    schema is not None)
    chat = Chat(messages=await decode_conversation(resident, turns), schema=schema,
                max_tokens=token_budget(limit, "max_tokens", resident.options.max_tokens),
                sampling=sampling(req.get("temperature"), req.get("top_p"), req.get("seed")),
                stop=stop_texts(req.get("stop"), "stop"))
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": ident, "created": created, "model": name, "system_fingerprint": FINGERPRINT}
    stream = generate(resident, chat, request)
    if not req.get("stream"):
        answer = await complete(stream)
        accesslog.tokens(request, answer.response)
        r = answer.response
        out = {**head, "object": "chat.completion",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": r.text, "refusal": None},
                            "logprobs": None, "finish_reason": r.finish_reason}],
               "usage": _usage(answer)}
        if answer.warnings:
            out["warnings"] = answer.warnings  # --guard flag: what the guard judged unsafe
        return JSONResponse(out)
    options = req.get("stream_options") or {}
    usage = isinstance(options, dict) and bool(options.get("include_usage"))
    first, rest = await primed(stream)

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        value = {**head, "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(value)}\n\n".encode()

    async def events() -> AsyncIterator[bytes]:
        item = first
        try:
            yield chunk({"role": "assistant", "content": ""})
            while not isinstance(item, Answer):
                yield chunk({"content": item})
                item = await anext(rest)
            accesslog.tokens(request, item.response)
            yield chunk({}, item.response.finish_reason, **({"warnings": item.warnings} if item.warnings else {}))
            if usage:
                final = {**head, "object": "chat.completion.chunk", "choices": [], "usage": _usage(item)}
                yield f"data: {json.dumps(final)}\n\n".encode()
            yield b"data: [DONE]\n\n"
        except StopAsyncIteration:  # the client went away
            return
        except (LlamadocError, ApiError) as err:  # the status has gone out: the error goes in the stream
            accesslog.refused(request, str(err))
            yield f"data: {json.dumps(body(request.url.path, 500, str(err)))}\n\n".encode()

    return Stream(events(), rest, media_type="text/event-stream")


def _usage(answer: Answer) -> dict[str, int]:
    r = answer.response
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens}


def _card(resident: Resident, name: str) -> dict[str, Any]:
    created = int(resident.models.resolve().model_path.stat().st_mtime)
    return {"id": name, "object": "model", "created": created, "owned_by": "llamadoc"}


async def models(request: Request) -> Response:
    resident: Resident = request.app.state.resident
    return JSONResponse({"object": "list", "data": [_card(resident, resident.name)]})


async def model(request: Request) -> Response:
    """GET /v1/models/{id} (openai's models.retrieve): any name the server answers to."""
    resident: Resident = request.app.state.resident
    name = request.path_params["name"]
    if not resident.serves(name):
        raise ApiError(404, f"the model {shown(name)} does not exist: this server serves {resident.name}",
                       code="model_not_found")
    return JSONResponse(_card(resident, name))


routes = [
    Route("/v1/chat/completions", completions, methods=["POST"]),
    Route("/v1/models", models, methods=["GET"]),
    Route("/v1/models/{name:path}", model, methods=["GET"]),
]
