"""The llama-cpp-python baseline the mllama benchmarks compare with: load, prefill, greedy decode."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from llamadoc.engines.mllama.tokenizer import quiet_llama


@contextmanager
def _no_extra_buffers() -> Iterator[None]:
    """llama.cpp's --no-extra-bufts, which llama_cpp.Llama does not expose: its constructor takes
    llama_cpp.llama_cpp.llama_model_default_params() and sets some fields, so that function is
    wrapped meanwhile."""
    import llama_cpp.llama_cpp

    bindings: Any = llama_cpp.llama_cpp
    default = bindings.llama_model_default_params

    def params() -> Any:
        p = default()
        p.use_extra_bufts = False
        return p

    bindings.llama_model_default_params = params
    try:
        yield
    finally:
        bindings.llama_model_default_params = default


def load(path: Path, threads: int, gpu: bool, n_ctx: int = 2048, extra_bufts: bool = True) -> Any:
    """extra_bufts=False keeps CPU weights out of ggml's extra buffer types (AMX, repack). A
    llama-cpp-python built natively on an Intel CPU with AMX died in ldtilecfg (SIGSEGV) on every
    quantised model in a VM that lists AMX but faults on it (2026-12-05); without them it runs."""
    import llama_cpp

    with quiet_llama(), (_no_extra_buffers() if not extra_bufts else nullcontext()):
        return llama_cpp.Llama(model_path=str(path), n_gpu_layers=-1 if gpu else 0, n_ctx=n_ctx, n_batch=512,
                               n_ubatch=512, flash_attn=True, verbose=False, n_threads=threads,
                               n_threads_batch=threads)


def greedy_decode(llm: Any, n: int) -> float:
    """Decode n tokens after whatever was evaluated, picking the argmax of the last logits; tokens/s."""
    import llama_cpp

    n_vocab = llm.n_vocab()
    t = time.perf_counter()
    for _ in range(n):
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        llm.eval([int(np.argmax(row))])
    return n / (time.perf_counter() - t)


def prefill_and_decode(path: Path, prompt: list[int], n_decode: int, gpu: bool,
                       threads: int | None = None, extra_bufts: bool = True) -> dict[str, float]:
    llm = load(path, threads or os.cpu_count() or 1, gpu, extra_bufts=extra_bufts)
    llm.eval(prompt[:8])  # warm-up
    llm.reset()
    t = time.perf_counter()
    llm.eval(prompt)
    prefill = len(prompt) / (time.perf_counter() - t)
    decode = greedy_decode(llm, n_decode)
    llm.close()
    return {"prefill_tok_s": prefill, "decode_tok_s": decode}
