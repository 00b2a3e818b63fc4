"""Token sampling through llama.cpp's sampler chain: greedy, temperature, top-p, seed, and GBNF grammars.

The engine computes logits itself, so it hands them to the samplers as a token array; a grammar
(for example one llama-cpp-python builds from a JSON schema) constrains every step exactly as
llama.cpp's own decoding does.
"""

from __future__ import annotations

import ctypes

import llama_cpp
import numpy as np

from llamadoc.errors import UsageError

from .tokenizer import Tokenizer, quiet_llama

_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # struct llama_token_data
assert _TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)


class Sampler:
    """One sequence's sampler state: a chain (temperature, top-p, pick) and an optional grammar."""

    def __init__(self, tok: Tokenizer, n_vocab: int, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0, grammar: str | None = None) -> None:
        self._greedy = temperature <= 0 and grammar is None
        self._chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if temperature <= 0:
            llama_cpp.llama_sampler_chain_add(self._chain, llama_cpp.llama_sampler_init_greedy())
        else:
            if top_p < 1.0:
                llama_cpp.llama_sampler_chain_add(self._chain, llama_cpp.llama_sampler_init_top_p(top_p, 1))
            llama_cpp.llama_sampler_chain_add(self._chain, llama_cpp.llama_sampler_init_temp(temperature))
            llama_cpp.llama_sampler_chain_add(self._chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        self._grammar = None
        if grammar is not None:
            with quiet_llama():
                self._grammar = llama_cpp.llama_sampler_init_grammar(tok.vocab, grammar.encode(), b"root")
            if not self._grammar:
                raise UsageError("the grammar does not parse (llama.cpp rejected it)")
        self.logprobs: list[float] = []  # of each token picked, as the model gave it (temperature 1, no grammar)
        self._data = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._one = np.zeros(1, dtype=_TOKEN_DATA)

    def _apply(self, sampler: int, data: np.ndarray) -> llama_cpp.llama_token_data_array:
        arr = llama_cpp.llama_token_data_array(
            data=ctypes.cast(data.ctypes.data, llama_cpp.llama_token_data_p), size=len(data), selected=-1,
            sorted=False)
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(arr))
        return arr

    def _fill(self, logits: np.ndarray) -> None:
        self._data["id"] = self._ids
        self._data["logit"] = logits
        self._data["p"] = 0.0

    def sample(self, logits: np.ndarray) -> int:
        """Pick the next token from one row of logits and advance the grammar past it."""
        token = self._pick(logits)
        top = float(logits.max())
        self.logprobs.append(float(logits[token]) - top - float(np.log(np.exp(logits - top).sum())))
        return token

    def _pick(self, logits: np.ndarray) -> int:
        if self._greedy:  # what llama.cpp's greedy sampler picks (the first maximum), minus the copying
            return int(np.argmax(logits))
        self._fill(logits)
        arr = self._apply(self._chain, self._data)
        token = int(arr.data[arr.selected].id)
        if self._grammar is not None:
            # Checking one token against the grammar is cheap; masking the whole vocabulary is
            # not. Only when the free choice breaks the grammar is the vocabulary masked (as
            # llama.cpp's common sampler does). Greedy picks are identical either way.
            self._one[0] = (token, 0.0, 0.0)
            if np.isneginf(self._apply(self._grammar, self._one).data[0].logit):
                self._fill(logits)
                self._apply(self._grammar, self._data)
                arr = self._apply(self._chain, self._data)
                token = int(arr.data[arr.selected].id)
            llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self._chain, token)
        return token

    def close(self) -> None:
        for s in (self._chain, self._grammar):
            if s:
                llama_cpp.llama_sampler_free(s)
        self._chain = self._grammar = None

    def __del__(self) -> None:
        self.close()
