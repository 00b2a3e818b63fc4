"""The wire format of /v1/engine/*, both ends: `llamadoc serve`'s engine routes read and write it,
and models.remote's client; one module, so both ends read it the same way.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import struct
import warnings
from typing import TYPE_CHECKING, Any

from llamadoc import errors
from llamadoc.engines.base import GenerationRequest, GenerationResponse, JudgeRequest, Sampling
from llamadoc.errors import LlamadocError, UsageError

if TYPE_CHECKING:
    from PIL.Image import Image

# The errors a server reports by name, raised here as the same class, so a remote page fails
# with the same status, message and exit code as a local one.
_ERRORS: dict[str, type[LlamadocError]] = {
    cls.__name__: cls for cls in (
        errors.UsageError, errors.ConfigError, errors.ModelError, errors.OutputError, errors.ResourceError,
        errors.GuardError, errors.DownloadError, errors.DocumentError, errors.PageError, errors.EngineError)
}


def image_to_wire(image: Image) -> str:
    """A page image as base64 PNG: lossless, so the server's engine sees this run's pixels."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # level 1: 5x faster than the default, a little larger
    return base64.b64encode(buf.getvalue()).decode("ascii")


def image_from_wire(data: Any, max_pixels: int | None = None) -> Image:
    """A page image off the wire: PNG only (what ``image_to_wire`` writes), so no other decoder
    (PostScript's runs Ghostscript) ever sees a client's bytes; its size is read from the header
    and refused past ``max_pixels`` (default: Pillow's bomb limit) before anything is decoded."""
    from PIL import Image as PILImage

    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise UsageError("the page image is not base64") from None
    if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
        raise UsageError("the page image is not a PNG (the engine protocol carries PNG only)")
    limit = max_pixels or int(PILImage.MAX_IMAGE_PIXELS or 0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            img = PILImage.open(io.BytesIO(raw), formats=["PNG"])
        w, h = img.size
        if w * h > limit:
            img.close()
            raise UsageError(f"the page image is too large to decode safely ({w:,} x {h:,} pixels, over the limit "
                             f"of {limit:,})", hint="send pages within the model's pixel budget")
        img.load()
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
        raise UsageError(f"the page image is too large to decode safely (over the limit of {limit:,} pixels)",
                         hint="send pages within the model's pixel budget") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError) as err:
        reason = re.sub(r"\s*<_io\.\w+ object at 0x[0-9a-fA-F]+>", "", str(err)).strip() or type(err).__name__
        raise UsageError(f"the page image cannot be decoded ({reason})") from None
    return img


def request_to_wire(r: GenerationRequest, guard_mode: str) -> dict[str, Any]:
    if r.messages or r.stop:  # said, not dropped: the answer would be to another question
        raise UsageError("the engine protocol carries one turn (prompt, system, images): a conversation or stop "
                         "texts go to the server's /api/chat or /v1/chat/completions")
    return {
        "prompt": r.prompt, "images": [image_to_wire(i) for i in r.images], "system": r.system, "schema": r.schema,
        "max_tokens": r.max_tokens,
        "sampling": {"temperature": r.sampling.temperature, "top_p": r.sampling.top_p, "seed": r.sampling.seed},
        "guard": guard_mode,
    }


def request_from_wire(body: dict[str, Any], max_pixels: int | None = None) -> tuple[GenerationRequest, str]:
    """The request and the guard mode the client screens it under; a UsageError for anything
    malformed or out of range, checked before any image is decoded."""
    try:
        s = body["sampling"]
        prompt, system, schema, images = body["prompt"], body["system"], body["schema"], body["images"]
        sampling = Sampling(temperature=float(s["temperature"]), top_p=float(s["top_p"]), seed=int(s["seed"]))
        max_tokens, guard = body["max_tokens"], body["guard"]
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise UsageError(f"not an engine request ({type(err).__name__}: {err})") from None
    if not isinstance(prompt, str) or not (system is None or isinstance(system, str)):
        raise UsageError("not an engine request: prompt and system must be strings")
    if not (schema is None or isinstance(schema, dict)) or not isinstance(images, list):
        raise UsageError("not an engine request: schema must be an object and images a list")
    if len(images) > 1:  # every engine reads one page per request; each image is decoded whole
        raise UsageError(f"an engine request carries one page image, not {len(images):,}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise UsageError(f"max_tokens must be a positive integer, not {max_tokens!r}")
    if not (math.isfinite(sampling.temperature) and sampling.temperature >= 0):
        raise UsageError("temperature must be 0 or more")
    if not (math.isfinite(sampling.top_p) and 0 < sampling.top_p <= 1):
        raise UsageError("top_p must be above 0 and at most 1")
    request = GenerationRequest(prompt=prompt, images=tuple(image_from_wire(i, max_pixels) for i in images),
                                system=system, schema=schema, max_tokens=max_tokens, sampling=sampling)
    return request, str(guard)


def response_to_wire(r: GenerationResponse) -> dict[str, Any]:
    return {"text": r.text, "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "finish_reason": r.finish_reason, "timings_ms": r.timings_ms}


def response_from_wire(body: dict[str, Any]) -> GenerationResponse:
    return GenerationResponse(text=body["text"], prompt_tokens=body["prompt_tokens"],
                              completion_tokens=body["completion_tokens"], finish_reason=body["finish_reason"],
                              timings_ms=dict(body["timings_ms"]))


def judge_to_wire(r: JudgeRequest) -> dict[str, Any]:
    return {"prompt": r.prompt, "answer_prefix": r.answer_prefix, "grammar": r.grammar, "max_tokens": r.max_tokens,
            "unsafe_word": r.unsafe_word, "image": image_to_wire(r.image) if r.image is not None else None}


def error_to_wire(err: LlamadocError) -> dict[str, Any]:
    return {"error": str(err), "kind": type(err).__name__, "message": err.message, "hint": err.hint}


def error_from_wire(body: dict[str, Any]) -> LlamadocError | None:
    """The error a server reported by name, as the same class; None when it named none we know."""
    cls = _ERRORS.get(str(body.get("kind")))
    return cls(str(body.get("message")), hint=body.get("hint")) if cls is not None else None
