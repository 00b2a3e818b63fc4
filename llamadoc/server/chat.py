"""Ollama and OpenAI requests -> what the engine takes: a prompt, a system text, at most one page
image, a JSON Schema, a token budget and sampling. Each bad input is one clear 4xx line.

Images go through the same code as image files on the command line (inputs/raster.py: EXIF
orientation, transparency, the model's pixel budget), and only data the request carries is
read: an image URL that is not a data: URI is refused, never fetched.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llamadoc.engines.base import GenerationRequest, Sampling
from llamadoc.errors import LlamadocError
from llamadoc.inputs.raster import RasterOptions, open_document
from llamadoc.inputs.sniff import HEAD, IMAGE_FORMATS, sniff
from llamadoc.inputs.sources import Source
from llamadoc.server.failures import ApiError
from llamadoc.tasks.schema import check_bounds

if TYPE_CHECKING:
    from PIL.Image import Image

ANY_OBJECT: dict[str, Any] = {"type": "object"}  # "format": "json" / json_object: some JSON object


@dataclass
class Chat:
    """One request as the engine takes it."""

    prompt: str
    system: str | None
    image: Image | None
    schema: dict[str, Any] | None
    max_tokens: int
    sampling: Sampling

    def request(self) -> GenerationRequest:
        return GenerationRequest(prompt=self.prompt, images=(self.image,) if self.image is not None else (),
                                 system=self.system, schema=self.schema, max_tokens=self.max_tokens,
                                 sampling=self.sampling)


@dataclass
class Turn:
    role: str
    text: str
    images: list[bytes]


def conversation(turns: list[Turn]) -> tuple[str | None, str, list[bytes]]:
    """(system, prompt, images) from a conversation: system messages, then one user turn."""
    system = "\n\n".join(t.text for t in turns if t.role in ("system", "developer") and t.text) or None
    rest = [t for t in turns if t.role not in ("system", "developer")]
    if not rest:
        raise ApiError(400, "the request has no user message")
    if any(t.role not in ("user", "assistant", "system", "developer") for t in turns):
        role = next(t.role for t in turns if t.role not in ("user", "assistant", "system", "developer"))
        raise ApiError(400, f"messages with role {role!r} are not supported (tools are not)")
    if len(rest) > 1 or rest[0].role != "user":
        raise ApiError(400, "this server answers one user message (with an optional system message) per request; "
                            "send earlier turns in that message")
    return system, rest[0].text, rest[0].images


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
