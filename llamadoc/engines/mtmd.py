"""llama-cpp-python + libmtmd: any GGUF model + mmproj pair that llama.cpp supports.

The model is loaded once and answers every page. Images reach libmtmd only as
``data:`` URIs: a document can never make the tool fetch a URL.
"""

from __future__ import annotations

import base64
import io
import math
import time
from typing import Any

from llamadoc.engines import llamacpp
from llamadoc.engines.base import GenerationRequest, GenerationResponse, LoadOptions
from llamadoc.errors import EngineError, ModelError, PageError

PROMPT_HEADROOM = 2048  # tokens for the instructions, a schema and the chat template


def _image_uri(image: Any) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # lossless; speed over size
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def estimate_image_tokens(mmproj_path: str, max_pixels: int) -> int:
    """An upper bound on the tokens one page image becomes, from the projector's header.

    Fixed-size encoders give (image_size / patch)^2 / merge^2 tokens; dynamic-resolution
    ones (Qwen2.5-VL, Pixtral, ...) give about max_pixels / (patch * merge)^2. The
    larger of the two is safe for both kinds.
    """
    meta = llamacpp.gguf_metadata(
        mmproj_path,
        ("clip.vision.image_size", "clip.vision.patch_size", "clip.vision.spatial_merge_size",
         "clip.vision.projector.scale_factor"),
    )
    size = int(meta["clip.vision.image_size"] or 336)
    patch = int(meta["clip.vision.patch_size"] or 14)
    merge = int(meta["clip.vision.spatial_merge_size"] or meta["clip.vision.projector.scale_factor"] or 1)
    fixed = (size // patch) ** 2 // (merge * merge)
    dynamic = math.ceil(max_pixels / (patch * merge) ** 2)
    return max(fixed, dynamic) + 16  # begin/end-of-image and row-break tokens


def _data_uri_handler() -> type:
    from llama_cpp.llama_chat_format import MTMDChatHandler

    class DataUriHandler(MTMDChatHandler):  # type: ignore[misc]
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
    supports_schema = True

    def __init__(self, options: LoadOptions, max_pixels: int) -> None:
        import llama_cpp  # imported here: loading llama.cpp takes time and memory

        if options.mmproj_path is None:
            raise ModelError(f"{options.model_path} needs a vision projector", hint="pass --mmproj PATH")
        llamacpp.set_logging(options.verbose)
        gpu = llamacpp.gpu_available()
        self.gpu_layers = (options.gpu_layers if options.gpu_layers >= 0 else 10_000) if gpu else 0
        meta = _model_meta(options.model_path)
        n_ctx = options.n_ctx or self._context_size(options, max_pixels, meta["context"])
        threads = options.threads or llamacpp.default_threads()
        try:
            handler = _data_uri_handler()(clip_model_path=options.mmproj_path, verbose=options.verbose, use_gpu=gpu)
            self._llm = llama_cpp.Llama(
                model_path=options.model_path,
                chat_handler=handler,
                n_ctx=n_ctx,
                n_batch=min(n_ctx, 2048),
                n_ubatch=min(n_ctx, 2048),
                n_gpu_layers=self.gpu_layers,
                n_threads=threads,
                n_threads_batch=threads,
                flash_attn=options.flash_attn and gpu,
                verbose=options.verbose,
            )
        except ValueError as err:
            raise ModelError(f"llama.cpp cannot load {options.model_path}: {err}") from None
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
                hint="use the mmproj file published with this model (run with --verbose for libmtmd's reason)",
            ) from None
        self._handler = handler
        self.n_ctx = n_ctx
        self.device = "GPU" if self.gpu_layers else "CPU"
        self.architecture = meta["architecture"]

    @staticmethod
    def _context_size(options: LoadOptions, max_pixels: int, trained: int | None) -> int:
        assert options.mmproj_path is not None
        need = estimate_image_tokens(options.mmproj_path, max_pixels) + PROMPT_HEADROOM + options.max_tokens
        size = llamacpp.round_up(need)
        return min(size, trained) if trained else size

    def generate(self, request: GenerationRequest) -> GenerationResponse:
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": _image_uri(img)}} for img in request.images
        ]
        content.append({"type": "text", "text": request.prompt})
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": content})
        response_format = {"type": "json_object", "schema": request.schema} if request.schema else None
        started = time.perf_counter()
        try:
            out = self._llm.create_chat_completion(
                messages=messages,  # type: ignore[arg-type]
                max_tokens=request.max_tokens,
                temperature=request.sampling.temperature,
                top_p=request.sampling.top_p,
                top_k=0,  # off: greedy by default, top_p when sampling
                min_p=0.0,
                repeat_penalty=1.0,  # a penalty would alter faithful copies of repeated figures
                seed=request.sampling.seed,
                response_format=response_format,  # type: ignore[arg-type]
            )
        except ValueError as err:
            message = str(err)
            if message.startswith("Prompt exceeds n_ctx"):
                raise PageError(
                    f"the page does not fit the model's context ({message.split(': ', 1)[-1]} tokens)",
                    hint="lower --max-pixels or --max-tokens, or raise --ctx",
                ) from None
            raise EngineError(f"the model failed on this page: {message}") from None
        elapsed = (time.perf_counter() - started) * 1000
        choice = out["choices"][0]  # type: ignore[index]
        usage = out.get("usage", {})  # type: ignore[union-attr]
        return GenerationResponse(
            text=choice["message"]["content"] or "",
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            finish_reason=choice.get("finish_reason") or "stop",
            timings_ms={"model": round(elapsed, 2)},
        )

    def close(self) -> None:
        self._llm.close()


def _model_meta(path: str) -> dict[str, Any]:
    try:
        meta = llamacpp.gguf_metadata(path, ("{arch}.context_length",))
    except Exception as err:  # the gguf reader raises several types on bad files
        raise ModelError(f"{path} is not a readable GGUF file ({err})") from None
    context = meta["{arch}.context_length"]
    return {"architecture": meta["general.architecture"], "context": int(context) if context else None}
