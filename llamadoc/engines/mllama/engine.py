"""The mllama engine behind llamadoc's engine protocol: page questions (VisionEngine) and Llama Guard 3
Vision (a backend that runs a prompt the guard module rendered).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from llamadoc.engines.base import GenerationRequest, GenerationResponse, GuardOutput, JudgeRequest, LoadOptions
from llamadoc.errors import UsageError

from ..llamacpp import schema_grammar
from . import ggml
from .model import BatchItem, Completion, MllamaModel
from .scheduler import Scheduler


def _load(options: LoadOptions) -> MllamaModel:
    if options.mmproj_path:
        raise UsageError(f"{options.model_path} is an mllama model: its vision tower is inside the file",
                         hint="drop --mmproj")
    if options.verbose:
        ggml.ECHO_LOGS = True  # --verbose: ggml's own lines, as the libmtmd engine shows llama.cpp's
    # The image costs one token (<|image|>); its features reach the text through cross-attention.
    n_ctx = options.n_ctx or -(-(options.prompt_tokens + options.max_tokens) // 256) * 256
    return MllamaModel.load(options.model_path, n_gpu_layers=options.gpu_layers, n_ctx=n_ctx,
                            threads=options.threads, flash_attn=options.flash_attn)


class MllamaEngine:
    """Llama 3.2 Vision on ggml: one page image per request, JSON-schema constrained output."""

    name = "mllama"
    max_images = 1  # one page per request: answers must rest on one page
    max_batch = 8  # pages decoded together: each step reads the weights once for all of them
    supports_schema = True

    def __init__(self, options: LoadOptions) -> None:
        self.model = _load(options)
        self.gpu_layers = self.model.gpu_layers
        self.device = self.model.device
        self.n_ctx = self.model.n_ctx

    def item(self, request: GenerationRequest) -> BatchItem:
        if len(request.images) > self.max_images:
            raise UsageError(f"the mllama engine reads one page image per request, not {len(request.images)}")
        image = request.images[0] if request.images else None
        ids = self.model.tokenizer.chat(request.prompt, request.system, image is not None)
        s = request.sampling
        return BatchItem(image, ids, schema_grammar(request.schema) if request.schema else None,
                         request.max_tokens, s.temperature, s.top_p, s.seed)

    def response(self, c: Completion, elapsed_ms: float) -> GenerationResponse:
        piece = self.model.tokenizer.piece
        pieces = [(piece(t), lp) for t, lp in zip(c.tokens, c.logprobs, strict=False)]
        timings = {"model": round(elapsed_ms, 2)}
        # The model's "vision" is the protocol's "vision_encode", the name the pipeline records.
        timings.update({"vision_encode" if k == "vision" else k: round(v, 2) for k, v in c.timings_ms.items()
                        if k != "decode_steps"})
        return GenerationResponse(text=c.text, prompt_tokens=c.prompt_tokens, completion_tokens=len(c.tokens),
                                  finish_reason=c.finish_reason, timings_ms=timings, logprobs=pieces)

    def generate(self, request: GenerationRequest) -> GenerationResponse:
        return self.generate_batch([request])[0]

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResponse]:
        """Several requests (pages) decoded together: each step reads the weights once for all.

        Timings are the batch's; an image already seen is not encoded again.
        """
        items = [self.item(r) for r in requests]
        started = time.perf_counter()
        out = self.model.generate_batch(items)
        elapsed = (time.perf_counter() - started) * 1000
        return [self.response(c, elapsed) for c in out]

    def scheduler(self) -> Scheduler:
        """Continuous batching for a server: requests join the decoding batch at its next step."""
        return Scheduler(self.model, self.max_batch)

    def close(self) -> None:
        self.model.close()


class MllamaGuardEngine:
    """Llama Guard 3 11B Vision (the same architecture) as llamadoc's image-aware guard.

    The prompt comes rendered from llamadoc.guard; like the text guard, the request's
    answer prefix is forced, P(unsafe) is read from the next step's logits, and the
    verdict is decoded under the request's grammar.
    """

    sees_images = True

    def __init__(self, options: LoadOptions, model_name: str) -> None:
        self.model = _load(options)
        self.model_name = model_name
        self.n_ctx = self.model.n_ctx

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenizer.encode(text, special=True))

    def split(self, text: str, max_tokens: int) -> list[str]:
        tok = self.model.tokenizer
        ids = tok.encode(text)
        return [tok.decode(ids[i : i + max_tokens]) for i in range(0, len(ids), max_tokens)]

    def judge(self, request: JudgeRequest) -> GuardOutput:
        tok = self.model.tokenizer
        # The template carries its control tokens.
        ids = tok.encode(request.prompt, special=True) + tok.encode(request.answer_prefix)
        if request.image is not None and tok.image not in ids:
            raise UsageError("the guard prompt has no <|image|> token for its image")
        out = self.model.generate(request.image, ids, max_tokens=request.max_tokens, grammar=request.grammar,
                                  keep_logits=1)
        z = out.logits[0].astype(np.float64)
        weights = np.exp(z - z.max())  # softmax, without overflow
        unsafe = tok.encode(request.unsafe_word)[0]
        return GuardOutput(text=out.text, p_unsafe=round(float(weights[unsafe] / weights.sum()), 6))

    def close(self) -> None:
        self.model.close()
