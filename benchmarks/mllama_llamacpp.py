"""The llama-cpp-python baseline the mllama benchmarks compare with: load, prefill, greedy decode."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from llamadoc.engines.mllama.tokenizer import quiet_llama


def load(path: Path, threads: int, gpu: bool, n_ctx: int = 2048) -> Any:
    import llama_cpp

    with quiet_llama():
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
                       threads: int | None = None) -> dict[str, float]:
    llm = load(path, threads or os.cpu_count() or 1, gpu)
    llm.eval(prompt[:8])  # warm-up
    llm.reset()
    t = time.perf_counter()
    llm.eval(prompt)
    prefill = len(prompt) / (time.perf_counter() - t)
    decode = greedy_decode(llm, n_decode)
    llm.close()
    return {"prefill_tok_s": prefill, "decode_tok_s": decode}
