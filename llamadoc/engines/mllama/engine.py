"""The mllama engine behind llamadoc's engine protocol: page questions (VisionEngine) and Llama Guard 3
Vision (a backend that runs a prompt the guard module rendered).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from llamadoc.engines.base import GenerationRequest, GenerationResponse, GuardOutput, LoadOptions
from llamadoc.errors import UsageError
from llamadoc.guard import ANSWER_PREFIX, MAX_VERDICT_TOKENS, VERDICT_GRAMMAR

from . import ggml
from .model import BatchItem, Completion, MllamaModel
from .sampling import schema_grammar

if TYPE_CHECKING:
    from PIL.Image import Image


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

    def _item(self, request: GenerationRequest) -> BatchItem:
        if len(request.images) > self.max_images:
            raise UsageError(f"the mllama engine reads one page image per request, not {len(request.images)}")
        image = request.images[0] if request.images else None
        ids = self.model.tokenizer.chat(request.prompt, request.system, image is not None)
        s = request.sampling
        return BatchItem(image, ids, schema_grammar(request.schema) if request.schema else None,
                         request.max_tokens, s.temperature, s.top_p, s.seed)

    @staticmethod
    def _response(c: Completion, elapsed_ms: float) -> GenerationResponse:
        timings = {"model": round(elapsed_ms, 2)}
        # The model's "vision" is the protocol's "vision_encode", the name the pipeline records.
        timings.update({"vision_encode" if k == "vision" else k: round(v, 2) for k, v in c.timings_ms.items()
                        if k != "decode_steps"})
        return GenerationResponse(text=c.text, prompt_tokens=c.prompt_tokens, completion_tokens=len(c.tokens),
                                  finish_reason=c.finish_reason, timings_ms=timings)

    def generate(self, request: GenerationRequest) -> GenerationResponse:
        return self.generate_batch([request])[0]

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResponse]:
        """Several requests (pages) decoded together: each step reads the weights once for all.

        Timings are the batch's; an image already seen is not encoded again.
        """
        items = [self._item(r) for r in requests]
        started = time.perf_counter()
        out = self.model.generate_batch(items)
        elapsed = (time.perf_counter() - started) * 1000
        return [self._response(c, elapsed) for c in out]

    def close(self) -> None:
        self.model.close()


class MllamaGuardEngine:
    """Llama Guard 3 11B Vision (the same architecture) as llamadoc's image-aware guard.

    The prompt comes rendered from llamadoc.guard; like the text guard, the verdict's
    leading "\n\n" is forced, P(unsafe) is read from the next step's logits, and the
    verdict is decoded under the grammar of its forms.
    """

    sees_images = True

    def __init__(self, options: LoadOptions, model_name: str) -> None:
        self.model = _load(options)
        self.model_name = model_name
        self.n_ctx = self.model.n_ctx
        tok = self.model.tokenizer
        self._prefix = tok.encode(ANSWER_PREFIX)
        self._unsafe = tok.encode("unsafe")[0]

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenizer.encode(text, special=True))

    def split(self, text: str, max_tokens: int) -> list[str]:
        tok = self.model.tokenizer
        ids = tok.encode(text)
        return [tok.decode(ids[i : i + max_tokens]) for i in range(0, len(ids), max_tokens)]

    def judge(self, prompt: str, image: Image | None = None) -> GuardOutput:
        tok = self.model.tokenizer
        ids = tok.encode(prompt, special=True) + self._prefix  # the template carries its control tokens
        if image is not None and tok.image not in ids:
            raise UsageError("the guard prompt has no <|image|> token for its image")
        out = self.model.generate(image, ids, max_tokens=MAX_VERDICT_TOKENS, grammar=VERDICT_GRAMMAR, keep_logits=1)
        z = out.logits[0].astype(np.float64)
        weights = np.exp(z - z.max())  # softmax, without overflow
        return GuardOutput(text=out.text, p_unsafe=round(float(weights[self._unsafe] / weights.sum()), 6))

    def close(self) -> None:
        self.model.close()
