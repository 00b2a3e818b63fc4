"""Where the mllama text decoder's time goes in prefill and in decode, node by node on the CPU.

The same eval-callback timing as mllama_vision_profile (ggml's scheduler computes one node at a
time and calls back): a prompt is prefilled (one graph per --batch tokens) and --tokens steps are
decoded, with a page image in the cross-attention layers or without. CPU time of the one
computing thread with --threads 1 (other work on a shared machine does not inflate it).

    python -m benchmarks.mllama_text_profile --preset cpu-mid --quant Q8_0 --prompt 700 --tokens 16
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.mllama_synth import PRESETS, write_mllama
from benchmarks.mllama_vision_profile import EvalCallback, _base_lib
from llamadoc.engines.mllama import ggml
from llamadoc.engines.mllama.model import MllamaModel

_VIEWS = (b"RESHAPE", b"VIEW", b"PERMUTE", b"TRANSPOSE")


def _named(t: int) -> str:
    """The name of the tensor a view/reshape chain starts from: a weight or a cache ("" for none)."""
    while t:
        s = ggml.tensor(t)
        name: str = s.name.decode(errors="replace").split(" ")[0]
        if name.startswith(("blk.", "output", "token_embd", "cross_", "cache_")):
            return name
        t = s.view_src or (s.src[0] if ggml.lib.op_desc(t) in _VIEWS else 0)
    return ""


def category(t: int) -> str:
    op = ggml.lib.op_desc(t).decode()
    srcs = [_named(x) for x in ggml.tensor(t).src[:4] if x]
    w = next((n for n in srcs if n), "")
    if op == "SOFT_MAX" or any(n.startswith("cross_") for n in srcs):
        return "cross-attention over the image (products, softmax)"
    if op == "FLASH_ATTN_EXT":
        return "self-attention (flash attention)"
    if op == "MUL_MAT":
        if w.startswith("output"):
            return "output projection"
        if "cross_attn" in w:
            return "cross-attention q, o projections"
        if "ffn_" in w:
            return "MLP matmuls (gate, up, down)"
        if w.startswith("blk."):
            return "self-attention q, k, v, o projections"
        return "other products"
    if op in ("RMS_NORM", "MUL", "ADD", "SCALE", "GLU", "UNARY"):
        return "norms, residuals, gates, SwiGLU"
    if op in ("ROPE", "SET_ROWS", "CPY", "CONT", "GET_ROWS"):
        return "RoPE, cache writes, copies, lookups"
    return "views, reshapes" if op in ("RESHAPE", "VIEW", "PERMUTE", "TRANSPOSE") else f"other ({op})"


def profiled(model: MllamaModel, run: Callable[[], object]) -> dict[str, dict[str, float]]:
    """ms per category, split by the graphs' rows: {"prefill": ..., "decode": ...}."""
    lib = _base_lib()
    times: dict[str, dict[str, float]] = {"prefill": defaultdict(float), "decode": defaultdict(float)}
    last, kind = [0.0], ["decode"]

    def observe(t: int, ask: bool, _user: int) -> bool:
        if not ask:
            now = time.thread_time()
            times[kind[0]][category(t)] += (now - last[0]) * 1e3
            last[0] = time.thread_time()
        return True

    cb = EvalCallback(observe)
    lib.ggml_backend_sched_set_eval_callback(model.runtime.sched, cb, None)
    real = model.runtime.compute

    def compute(graph: int, inputs: dict[int, np.ndarray]) -> None:
        rows = next((v.size for k, v in inputs.items() if ggml.tensor(k).name == b"tokens"), 1)
        kind[0] = "prefill" if rows > 1 else "decode"
        last[0] = time.thread_time()
        real(graph, inputs)

    try:
        model.runtime.compute = compute  # type: ignore[method-assign]
        run()
    finally:
        model.runtime.compute = real  # type: ignore[method-assign]
        lib.ggml_backend_sched_set_eval_callback(model.runtime.sched, EvalCallback(), None)
    return {k: dict(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu-mid", choices=sorted(PRESETS))
    ap.add_argument("--quant", default="Q8_0", choices=("Q8_0", "Q4_K_M"))
    ap.add_argument("--prompt", type=int, default=700)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--text-only", action="store_true", help="no image: the cross-attention layers are skipped")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/llamadoc-bench"))
    args = ap.parse_args()
    shape = PRESETS[args.preset]
    path = args.dir / f"mllama-{args.preset}-{args.quant}.gguf"
    if not path.exists():
        args.dir.mkdir(parents=True, exist_ok=True)
        write_mllama(path, shape, quant=args.quant)
    model = MllamaModel.load(path, threads=1, n_ctx=args.prompt + args.tokens + 64)
    image = None if args.text_only else Image.fromarray(
        (np.random.default_rng(0).random((900, 700, 3)) * 255).astype(np.uint8))
    ids = [128000] + ([] if image is None else [model.tokenizer.image]) + [1000 + i % 5000 for i in range(args.prompt)]
    ids = ids[:args.prompt]
    model.generate(image, ids[:8], max_tokens=2, stop=())  # encodes and caches the image, sizes buffers
    out = profiled(model, lambda: model.generate(image, ids, max_tokens=args.tokens + 1, stop=()))
    model.close()
    print(f"command: python -m benchmarks.mllama_text_profile --preset {args.preset} --quant {args.quant} "
          f"--prompt {args.prompt} --tokens {args.tokens}{' --text-only' if args.text_only else ''}")
    for kind, n in (("prefill", args.prompt), ("decode", args.tokens)):
        total = sum(out[kind].values())
        print(f"{kind}: {total:.0f} ms CPU for {n} tokens ({n / total * 1e3:.1f} tok/s)")
        for c, ms in sorted(out[kind].items(), key=lambda kv: -kv[1]):
            print(f"  {c:<46}{ms:>9.1f}{ms / total:>8.1%}")


if __name__ == "__main__":
    main()
