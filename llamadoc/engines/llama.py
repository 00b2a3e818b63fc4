"""llama-cpp-python text models as Llama Guard engines (Llama Guard 3 1B)."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from llamadoc.engines import llamacpp
from llamadoc.engines.base import GuardOutput, JudgeRequest, LoadOptions
from llamadoc.errors import EngineError, ModelError
from llamadoc.gguf_header import gguf_metadata

GUARD_CONTEXT = 4096  # a page of text per check; longer text is split into chunks


class LlamaGuardEngine:
    sees_images = False

    def __init__(self, options: LoadOptions, model_name: str) -> None:
        llamacpp.set_logging(options.verbose)
        meta = gguf_metadata(options.model_path, ("{arch}.context_length",))
        if meta["general.architecture"] == "clip":
            raise ModelError(f"{options.model_path} is a vision projector, not a guard model")
        trained = meta["{arch}.context_length"]
        self.n_ctx = options.n_ctx or min(GUARD_CONTEXT, int(trained) if trained else GUARD_CONTEXT)
        threads = options.threads or max(1, llamacpp.default_threads() // 2)  # it shares the CPU
        self._llm = llamacpp.load_llama(options, self.n_ctx, threads, what="guard model ")
        self.model_name = model_name

    def _tokens(self, text: str, special: bool) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=special))

    def count_tokens(self, text: str) -> int:
        return len(self._tokens(text, special=True))

    def split(self, text: str, max_tokens: int) -> list[str]:
        tokens = self._tokens(text, special=False)
        pieces = [tokens[i : i + max_tokens] for i in range(0, len(tokens), max_tokens)]
        return [self._llm.detokenize(p).decode("utf-8", errors="replace") for p in pieces]

    def judge(self, request: JudgeRequest) -> GuardOutput:
        if request.image is not None:
            raise EngineError(f"{self.model_name} is a text-only guard and cannot screen images")
        tokens = self._tokens(request.prompt, special=True) + self._tokens(request.answer_prefix, special=False)
        if len(tokens) + request.max_tokens > self.n_ctx:
            raise EngineError(f"guard prompt of {len(tokens)} tokens does not fit its context of {self.n_ctx}")
        self._llm.reset()
        self._llm.eval(tokens)
        # The last position's logits, straight from llama.cpp (Llama.scores only
        # keeps them with logits_all, which would cost a row per prompt token).
        raw = self._llm._ctx.get_logits_ith(-1)
        logits = np.ctypeslib.as_array(raw, shape=(self._llm.n_vocab(),)).astype(np.float64)
        weights = np.exp(logits - logits.max())  # softmax, without overflow
        unsafe_id = self._tokens(request.unsafe_word, special=False)[0]
        p_unsafe = float(weights[unsafe_id] / weights.sum())
        out = self._llm.create_completion(
            prompt=tokens,
            max_tokens=request.max_tokens,
            temperature=0.0,
            top_k=0,
            min_p=0.0,
            repeat_penalty=1.0,
            grammar=_grammar(request.grammar),
        )
        return GuardOutput(text=out["choices"][0]["text"], p_unsafe=round(p_unsafe, 6))

    def close(self) -> None:
        self._llm.close()


@cache
def _grammar(gbnf: str) -> Any:
    """A parsed grammar, once per text: every verdict uses the same one."""
    from llama_cpp.llama_grammar import LlamaGrammar  # imported here: loading llama.cpp is slow

    return LlamaGrammar.from_string(gbnf, verbose=False)
