"""Ollama and OpenAI requests -> what the engine takes: a conversation (system, user, assistant and
tool messages, their images), a JSON Schema, stop texts, a token budget and sampling. Each bad
input is one clear 4xx line.

Images go through the same code as image files on the command line (inputs/raster.py: EXIF
orientation, transparency, the model's pixel budget), and only data the request carries is
read: an image URL that is not a data: URI is refused, never fetched.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llamadoc.engines.base import GenerationRequest, Message, Sampling
from llamadoc.errors import LlamadocError
from llamadoc.inputs.raster import RasterOptions, open_document
from llamadoc.inputs.sniff import HEAD, IMAGE_FORMATS, sniff
from llamadoc.inputs.sources import Source
from llamadoc.server.failures import ApiError
from llamadoc.tasks.schema import check_bounds

if TYPE_CHECKING:
    from PIL.Image import Image

ANY_OBJECT: dict[str, Any] = {"type": "object"}  # "format": "json" / json_object: some JSON object
MAX_STOPS = 16  # OpenAI takes 4; LangChain and others send a few more
MAX_IMAGES = 16  # images decoded for one request (Llama 3.2 Vision decodes only its conversation's last)


@dataclass
class Turn:
    """One message as the client sent it: role, text, and its images (bytes as sent, or an image
    the server kept from an earlier turn)."""

    role: str
    text: str
    images: list[bytes | Image]


@dataclass
class Chat:
    """One request as the engine takes it: a conversation, its images decoded."""

    messages: list[Message]
    schema: dict[str, Any] | None
    max_tokens: int
    sampling: Sampling
    stop: tuple[str, ...] = ()

    @property
    def system(self) -> str | None:
        return "\n\n".join(m.text for m in self.messages if m.role == "system" and m.text) or None

    @property
    def prompt(self) -> str:
        """What the request asks: its last user (or tool) message; what the guard screens as the prompt."""
        return next((m.text for m in reversed(self.messages) if m.role in ("user", "tool")), "")

    @property
    def image(self) -> Image | None:
        """The conversation's most recent image (the one the guard sees)."""
        return next((m.images[-1] for m in reversed(self.messages) if m.images), None)

    @property
    def other_images(self) -> list[Image]:
        """The images the engine reads besides ``image``: a conversation's earlier ones (only
        libmtmd's models get them; with_images leaves them out for Llama 3.2 Vision)."""
        images = [i for m in self.messages for i in m.images]
        return images[:-1]

    def context(self) -> list[str]:
        """The conversation's other texts, screened beside the prompt (the guard caches verdicts,
        so a history screened in an earlier turn costs nothing again)."""
        last = max((i for i, m in enumerate(self.messages) if m.role in ("user", "tool")), default=-1)
        return [m.text for i, m in enumerate(self.messages) if i != last and m.text]

    def request(self) -> GenerationRequest:
        return GenerationRequest(prompt=self.prompt, system=self.system, schema=self.schema,
                                 max_tokens=self.max_tokens, sampling=self.sampling,
                                 messages=tuple(self.messages), stop=self.stop)


ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool",
         "function": "tool", "ipython": "tool"}


def conversation(turns: list[Turn]) -> list[Turn]:
    """A client's messages, checked: known roles (OpenAI's developer is a system message, a
    function's result a tool's), and something to answer."""
    for i, t in enumerate(turns):
        if t.role not in ROLES:
            raise ApiError(400, f"message {i + 1} has role {t.role!r}; roles are system, user, assistant and tool")
        t.role = ROLES[t.role]
    if not any(t.role != "system" for t in turns):
        raise ApiError(400, "the request has no user message")
    return turns


async def with_images(turns: list[Turn], one_image: bool,
                      decode: Callable[[bytes, str], Awaitable[Image]]) -> list[Message]:
    """The conversation with its images decoded by ``decode`` (server/bounds.py: off the event
    loop, in turn, within the pixel budget and ceiling). A model that reads one image (Llama 3.2
    Vision) sees the most recent one, as Ollama fed it, and refuses one message with more; the
    earlier ones are never decoded. The others get every image, and the context says how many fit."""
    if one_image:
        crowded = next((i for i, t in enumerate(turns) if len(t.images) > 1), None)
        if crowded is not None:
            raise ApiError(400, f"message {crowded + 1} has {len(turns[crowded].images)} images: this model reads "
                                "one image per message (send one image, or one message per image)")
        last = max((i for i, t in enumerate(turns) if t.images), default=None)
        turns = [Turn(t.role, t.text, t.images if i == last else []) for i, t in enumerate(turns)]
    count = sum(len(t.images) for t in turns)
    if count > MAX_IMAGES:  # each is decoded and held at the model's budget: thousands of small PNGs would not fit
        raise ApiError(413, f"the conversation carries {count} images; this server reads at most {MAX_IMAGES} "
                            "per request (leave earlier images out of the history)", code="request_too_large")
    messages = []
    for i, t in enumerate(turns):
        images = [await decode(data, f"message {i + 1} image {j}") if isinstance(data, bytes) else data
                  for j, data in enumerate(t.images, 1)]
        messages.append(Message(t.role, t.text, tuple(images)))
    return messages


def stop_texts(value: Any, name: str) -> tuple[str, ...]:
    """Texts that end the answer: one string or a list of them."""
    if value is None:
        return ()
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, f"{name} must be a string or a list of strings")
    if len(texts) > MAX_STOPS:
        raise ApiError(400, f"{name} has {len(texts)} texts; at most {MAX_STOPS} are taken")
    return tuple(t for t in texts if t)


def tool_choice(value: Any, model: str) -> None:
    """``tools`` are accepted and the model answers in text: none of the served models' templates
    call tools, so nothing is ever passed off as a tool call. A request that insists on a call
    cannot be met, and says so."""
    if value in (None, "none", "auto"):
        return
    if value == "required" or isinstance(value, dict):
        raise ApiError(400, f"tool_choice {json.dumps(value)} cannot be met: {model} cannot call tools (it answers "
                            "in text); send tool_choice \"auto\" or \"none\", or leave it out")
    raise ApiError(400, "tool_choice must be \"none\", \"auto\", \"required\" or a function")


def page_image(data: bytes, label: str, budget: int, ceiling: int | None = None) -> Image:
    """A page image from a request's bytes, sized to the model's pixel budget; past ``ceiling``
    pixels refused from its header, before anything is decoded."""
    kind = sniff(data[:HEAD])
    if kind == "pdf":
        raise ApiError(400, f"{label} is a PDF, not an image: send page images here, "
                            "or the PDF itself to /v1/documents/ask")
    if kind != "image":
        raise ApiError(400, f"{label} is not an image ({', '.join(IMAGE_FORMATS)})")
    try:
        with open_document(Source(label=label, data=data), RasterOptions(max_pixels=budget, ceiling=ceiling)) as doc:
            return next(doc.pages([1])).image
    except LlamadocError as err:
        raise ApiError(400, str(err)) from None


def base64_image(value: Any, label: str) -> bytes:
    if not isinstance(value, str):
        raise ApiError(400, f"{label} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{label} is not valid base64") from None


def data_uri(url: Any, label: str) -> bytes:
    """The bytes of a data: URI; any other URL is refused (this server never fetches the network)."""
    if not isinstance(url, str) or not url.startswith("data:"):
        raise ApiError(400, f"{label}: only data: URIs are accepted; this server never fetches a URL")
    head, _, payload = url.partition(",")
    if not head.endswith(";base64"):
        raise ApiError(400, f"{label}: a data: URI must be base64-encoded")
    return base64_image(payload, label)


def checked_schema(schema: Any, what: str) -> dict[str, Any]:
    """A JSON Schema the engine can decode under, or a 400 saying why not."""
    import jsonschema

    from llamadoc import engines

    if not isinstance(schema, dict):
        raise ApiError(400, f"{what} must be \"json\" or a JSON Schema object")
    try:
        check_bounds(schema, what)  # before anything walks it whole or builds its grammar
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as err:
        raise ApiError(400, f"{what} is not a valid JSON Schema: {err.message}") from None
    except LlamadocError as err:
        raise ApiError(400, str(err)) from None
    try:
        engines.check_grammar(schema)
    except LlamadocError as err:
        raise ApiError(400, f"{what}: {err}") from None
    return schema


def number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(400, f"{name} must be a number")
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low:g} and {high:g}")
    return float(value)


def integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name} must be an integer")
    return value


def sampling(temperature: Any, top_p: Any, seed: Any) -> Sampling:
    """Greedy unless asked otherwise: documents want the same answer every time."""
    return Sampling(
        temperature=number(temperature, "temperature", 0.0, 2.0) if temperature is not None else 0.0,
        top_p=number(top_p, "top_p", 0.0, 1.0) if top_p is not None else 1.0,
        seed=integer(seed, "seed") if seed is not None else 0,
    )


def token_budget(value: Any, name: str, most: int) -> int:
    """A request's answer length, at most the server's --max-tokens (the context is sized for it);
    absent, or Ollama's -1 (until done) and -2 (fill the context): that most."""
    if value is None:
        return most
    n = integer(value, name)
    if n in (-1, -2):
        return most
    if n < 1:
        raise ApiError(400, f"{name} must be at least 1")
    return min(n, most)
