"""The wire format of /v1/engine/*, both ends: `llamadoc serve`'s engine routes read and write it,
and models.remote's client; one module, so both ends read it the same way.
"""

from __future__ import annotations

import base64
import io
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


def image_from_wire(data: str) -> Image:
    from PIL import Image as PILImage

    try:
        img = PILImage.open(io.BytesIO(base64.b64decode(data, validate=True)))
        img.load()
    except PILImage.DecompressionBombError:
        raise UsageError(f"the page image is too large to decode safely (over {PILImage.MAX_IMAGE_PIXELS:,} pixels)",
                         hint="send pages within the model's pixel budget") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise UsageError(f"the page image cannot be decoded ({err})") from None
    return img


def request_to_wire(r: GenerationRequest, guard_mode: str) -> dict[str, Any]:
    return {
        "prompt": r.prompt, "images": [image_to_wire(i) for i in r.images], "system": r.system, "schema": r.schema,
        "max_tokens": r.max_tokens,
        "sampling": {"temperature": r.sampling.temperature, "top_p": r.sampling.top_p, "seed": r.sampling.seed},
        "guard": guard_mode,
    }


def request_from_wire(body: dict[str, Any]) -> tuple[GenerationRequest, str]:
    """The request and the guard mode the client screens it under."""
    try:
        s = body["sampling"]
        request = GenerationRequest(
            prompt=str(body["prompt"]), images=tuple(image_from_wire(i) for i in body["images"]),
            system=body["system"], schema=body["schema"], max_tokens=int(body["max_tokens"]),
            sampling=Sampling(temperature=float(s["temperature"]), top_p=float(s["top_p"]), seed=int(s["seed"])),
        )
        return request, str(body["guard"])
    except (KeyError, TypeError, ValueError) as err:
        raise UsageError(f"not an engine request ({type(err).__name__}: {err})") from None


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


def judge_from_wire(body: dict[str, Any]) -> JudgeRequest:
    try:
        return JudgeRequest(prompt=str(body["prompt"]), answer_prefix=str(body["answer_prefix"]),
                            grammar=str(body["grammar"]), max_tokens=int(body["max_tokens"]),
                            unsafe_word=str(body["unsafe_word"]),
                            image=image_from_wire(body["image"]) if body["image"] is not None else None)
    except (KeyError, TypeError, ValueError) as err:
        raise UsageError(f"not a guard request ({type(err).__name__}: {err})") from None


def error_to_wire(err: LlamadocError) -> dict[str, Any]:
    return {"error": str(err), "kind": type(err).__name__, "message": err.message, "hint": err.hint}


def error_from_wire(body: dict[str, Any]) -> LlamadocError | None:
    """The error a server reported by name, as the same class; None when it named none we know."""
    cls = _ERRORS.get(str(body.get("kind")))
    return cls(str(body.get("message")), hint=body.get("hint")) if cls is not None else None
