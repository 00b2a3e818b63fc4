"""The mllama engine behind llamadoc's engine protocol: page questions (VisionEngine) and Llama Guard 3
Vision (a backend that runs a prompt the guard module rendered).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from llamadoc.engines.base import GenerationRequest, GenerationResponse, LoadOptions
from llamadoc.errors import UsageError

from .model import BatchItem, Completion, MllamaModel
from .sampling import schema_grammar

if TYPE_CHECKING:
    from PIL.Image import Image

GUARD_VERDICT_STEPS = 4  # the verdict word follows at most a few whitespace tokens ("\n\n")

def _load(options: LoadOptions) -> MllamaModel:
    if options.mmproj_path:
        raise UsageError(f"{options.model_path} is an mllama model: its vision tower is inside the file",
                         hint="drop --mmproj")
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
        timings.update({k: round(v, 2) for k, v in c.timings_ms.items() if k != "decode_steps"})
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


class MllamaGuardBackend:
    """Runs Llama Guard 3 11B Vision (same architecture) on a prompt rendered by llamadoc's guard module.

    ``run`` returns the generated text and P(unsafe): the probability the model gives the verdict
    word "unsafe" at the step where it writes its verdict (after the leading "\\n\\n").
    """

    def __init__(self, options: LoadOptions) -> None:
        self.model = _load(options)
        tok = self.model.tokenizer
        self._unsafe = tok.encode("unsafe")[0]
        self.gpu_layers = self.model.gpu_layers
        self.device = self.model.device

    def _is_blank(self, token: int) -> bool:
        return not self.model.tokenizer.piece(token).strip()

    def run(self, prompt: str, image: Image | None, max_tokens: int = 32) -> tuple[str, float | None]:
        tok = self.model.tokenizer
        ids = tok.encode(prompt, special=True)  # the rendered template carries its own control tokens
        if not ids or ids[0] != tok.bos:
            ids = [tok.bos, *ids]
        if image is not None and tok.image not in ids:
            raise UsageError("the guard prompt has no <|image|> token for its image")
        out = self.model.generate(image, ids, max_tokens=max_tokens, keep_logits=GUARD_VERDICT_STEPS)
        score = None
        for token, logits in zip(out.tokens, out.logits, strict=False):
            if not self._is_blank(token):
                z = logits.astype(np.float64) - logits.max()
                score = float(np.exp(z[self._unsafe]) / np.exp(z).sum())
                break
        return out.text, score

    def close(self) -> None:
        self.model.close()
