"""llama-cpp-python + libmtmd: any GGUF model + mmproj pair that llama.cpp supports.

The model is loaded once and answers every page. Images reach libmtmd only as
``data:`` URIs: a document can never make the tool fetch a URL.
"""

from __future__ import annotations

import base64
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llamadoc.engines import llamacpp
from llamadoc.engines.base import GenerationRequest, GenerationResponse, LoadOptions
from llamadoc.errors import EngineError, ModelError, PageError
from llamadoc.gguf_header import gguf_metadata


def _image_uri(image: Any) -> str:
    # BMP: lossless like PNG, but 25x faster to write (4 ms for an A4 page vs 100 ms),
    # and libmtmd's stb_image reads it into the same pixels.
    buf = io.BytesIO()
    image.save(buf, format="BMP")
    return "data:image/bmp;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# Projectors that resize every image to one fixed size; the others (Qwen2.5-VL,
# Pixtral, SmolVLM's tiles, ...) make more tokens from more pixels.
FIXED_SIZE_PROJECTORS = frozenset({"mlp", "mlp_norm", "ldp", "ldpv2", "gemma3", "adapter"})


@dataclass(frozen=True)
class Geometry:
    image_size: int
    patch: int
    merge: int
    fixed: bool

    def tokens(self, pixels: int) -> int:
        """An upper bound on the tokens an image of ``pixels`` becomes."""
        per_side = self.image_size // self.patch // self.merge
        count = per_side * per_side if self.fixed else math.ceil(pixels / (self.patch * self.merge) ** 2)
        return count + 16  # begin/end-of-image and row-break tokens


def projector_geometry(mmproj_path: str) -> Geometry:
    meta = gguf_metadata(
        mmproj_path,
        ("clip.projector_type", "clip.vision.image_size", "clip.vision.patch_size",
         "clip.vision.spatial_merge_size", "clip.vision.projector.scale_factor"),
    )
    if meta["general.architecture"] != "clip":
        raise ModelError(f"{mmproj_path} is not a vision projector (architecture {meta['general.architecture']})")
    merge = meta["clip.vision.spatial_merge_size"] or meta["clip.vision.projector.scale_factor"] or 1
    return Geometry(
        image_size=int(meta["clip.vision.image_size"] or 336),
        patch=int(meta["clip.vision.patch_size"] or 14),
        merge=int(merge),
        fixed=meta["clip.projector_type"] in FIXED_SIZE_PROJECTORS,
    )


class TokenChances:
    """The model's log probability of each token llama-cpp-python picks, read through its
    logits-processor hook (which sees each step's logits over the whole vocabulary before
    any grammar): the token picked at one step is the last input of the next, so each row
    waits one step for its token. ``logits_all`` (llama-cpp-python's own logprobs) would
    keep the logits of every prompt token too: gigabytes for a page image."""

    def __init__(self) -> None:
        self.picked: list[tuple[int, float]] = []
        self._row: Any = None  # the last step's logits, until its token is known

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self._settle(int(input_ids[-1]))
        self._row = scores.copy()
        return scores

    def _settle(self, token: int) -> None:
        if self._row is not None:
            import numpy as np

            top = float(self._row.max())
            self.picked.append((token, float(self._row[token]) - top - float(np.log(np.exp(self._row - top).sum()))))
            self._row = None

    def pieces(self, llm: Any, text: str) -> list[tuple[bytes, float]]:
        """(bytes, log probability) of the completion's tokens; the last one picked (never fed
        back) is found by tokenising what the known tokens leave of ``text``."""
        out = [(llm.detokenize([t]), lp) for t, lp in self.picked]
        rest = text.encode("utf-8")[sum(len(piece) for piece, _ in out):]
        if self._row is not None and rest:
            last = llm.tokenize(rest, add_bos=False, special=False)
            if len(last) == 1:
                self._settle(last[0])
                out.append((rest, self.picked[-1][1]))
        if b"".join(piece for piece, _ in out) != text.encode("utf-8"):
            return []  # the tokens do not spell the text (a stop string cut it): no per-value probabilities
        return out


def _data_uri_handler() -> type:
    from llama_cpp.llama_chat_format import MTMDChatHandler

    class DataUriHandler(MTMDChatHandler):
        """The stock handler would fetch any other URL with urllib; we never allow that."""

        @staticmethod
        def _load_image(image_url: str) -> bytes:
            if not image_url.startswith("data:"):
                raise ValueError("only data: URIs are accepted for images")
            return base64.b64decode(image_url.split(",", 1)[1])

    return DataUriHandler


class MtmdEngine:
    name = "mtmd"
    max_images = 1  # one page per request: answers must rest on one page
    max_batch = 1  # llama-cpp-python's chat handler decodes one sequence
    supports_schema = True

    def __init__(self, options: LoadOptions, max_pixels: int) -> None:
        if options.mmproj_path is None:
            raise ModelError(f"{options.model_path} needs a vision projector", hint="pass --mmproj PATH")
        llamacpp.set_logging(options.verbose)
        meta = _model_meta(options.model_path)
        self._geometry = projector_geometry(options.mmproj_path)
        gpu = llamacpp.gpu_available()
        self.gpu_layers = llamacpp.gpu_layers(options) if gpu else 0
        n_ctx = options.n_ctx or self._context_size(options, max_pixels, meta["context"])
        try:
            handler = _data_uri_handler()(clip_model_path=options.mmproj_path, verbose=options.verbose, use_gpu=gpu)
        except ValueError as err:
            raise ModelError(f"cannot use vision projector {options.mmproj_path}: {err}") from None
        self._llm = llamacpp.load_llama(
            options, n_ctx, options.threads or llamacpp.default_threads(), chat_handler=handler
        )
        if not isinstance(self._llm.metadata.get("tokenizer.chat_template"), str):
            raise ModelError(
                f"{options.model_path} has no chat template (tokenizer.chat_template)",
                hint="use an instruct/chat GGUF; base models cannot follow page prompts",
            )
        try:
            handler._init_mtmd_context(self._llm)  # pair the projector now, not at the first page
        except ValueError:
            raise ModelError(
                f"vision projector {options.mmproj_path} does not fit model {options.model_path}",
                hint="use the mmproj file published with this model; --verbose shows libmtmd's reason",
            ) from None
        self._handler = handler
        self.n_ctx = n_ctx
        self.device = "GPU" if self.gpu_layers else "CPU"
        self.architecture = meta["architecture"]

    def _context_size(self, options: LoadOptions, max_pixels: int, trained: int | None) -> int:
        need = self._geometry.tokens(max_pixels) + options.prompt_tokens + options.max_tokens
        size = llamacpp.round_up(need)
        return min(size, trained) if trained else size

    def _check_fits(self, request: GenerationRequest) -> None:
        """Refuse a page that cannot fit before llama.cpp fails on it less clearly."""
        text_tokens = len(self._llm.tokenize(request.prompt.encode("utf-8"), add_bos=True, special=True))
        for_images = sum(self._geometry.tokens(img.width * img.height) for img in request.images)
        need = text_tokens + for_images + 32  # + the chat template's own tokens
        if need >= self.n_ctx:
            raise PageError(
                f"the page needs about {need} tokens (image {for_images}, prompt {text_tokens}) "
                f"but the context holds {self.n_ctx}",
                hint="lower --max-pixels, or raise --ctx",
            )

    def generate(self, request: GenerationRequest) -> GenerationResponse:
        self._check_fits(request)
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": _image_uri(img)}} for img in request.images
        ]
        content.append({"type": "text", "text": request.prompt})
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": content})
        response_format = {"type": "json_object", "schema": request.schema} if request.schema else None
        import llama_cpp  # loaded already: the engine's model is a llama_cpp.Llama

        llama_cpp.llama_perf_context_reset(self._llm.ctx)  # llama.cpp's own prefill/decode clocks
        chances = TokenChances()
        started = time.perf_counter()
        try:
            out = self._llm.create_chat_completion(
                messages=messages,
                max_tokens=request.max_tokens,
                temperature=request.sampling.temperature,
                top_p=request.sampling.top_p,
                top_k=0,  # off: greedy by default, top_p when sampling
                min_p=0.0,
                repeat_penalty=1.0,  # a penalty would alter faithful copies of repeated figures
                seed=request.sampling.seed,
                response_format=response_format,
                logits_processor=llama_cpp.LogitsProcessorList([chances]),
            )
        except ValueError as err:
            message = str(err)
            if "n_ctx" in message or "exceed context" in message:
                raise PageError(
                    f"the page does not fit the model's context ({message})",
                    hint="lower --max-pixels, or raise --ctx",
                ) from None
            raise EngineError(f"the model failed on this page: {message}") from None
        elapsed = (time.perf_counter() - started) * 1000
        perf = llama_cpp.llama_perf_context(self._llm.ctx)
        choice = out["choices"][0]
        usage = out.get("usage", {})
        text = choice["message"]["content"] or ""
        return GenerationResponse(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            finish_reason=choice.get("finish_reason") or "stop",
            # prefill includes the image's embeddings; libmtmd does not time its encoder.
            timings_ms={"model": round(elapsed, 2), "prefill": round(perf.t_p_eval_ms, 2),
                        "decode": round(perf.t_eval_ms, 2)},
            logprobs=chances.pieces(self._llm, text),
        )

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResponse]:
        return [self.generate(r) for r in requests]

    def close(self) -> None:
        self._llm.close()


def _model_meta(path: str) -> dict[str, Any]:
    meta = gguf_metadata(path, ("{arch}.context_length",))
    context = meta["{arch}.context_length"]
    return {"architecture": meta["general.architecture"], "context": int(context) if context else None}
