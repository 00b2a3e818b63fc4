"""Where the mllama text decoder's time goes in prefill and in decode, node by node on the CPU.

The same eval-callback timing as mllama_vision_profile (ggml's scheduler computes one node at a
time and calls back): a prompt is prefilled (one graph per --batch tokens) and --tokens steps are
decoded, with a page image in the cross-attention layers or without. CPU time of the one
computing thread with --threads 1 (other work on a shared machine does not inflate it).

    python -m benchmarks.mllama_text_profile --preset cpu-mid --quant Q8_0 --prompt 700 --tokens 16
    python -m benchmarks.mllama_text_profile --cross-forms 512   # one cross layer's attention, two forms
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


def cross_forms(n: int) -> None:
    """One cross-attention layer of cpu-mid (16 heads of 128, 4 KV heads) over a page's 6,404 keys
    for n prompt tokens: the CPU's grouped products (padded keys, a mask) against flash attention
    over the valid keys only (no mask; it needs V untransposed, which the CPU cache does not keep)."""
    from llamadoc.engines.mllama.backend import Runtime
    from llamadoc.engines.mllama.graph import Graph, attention, grouped_attention

    hd, heads, kv, keys, pad = 128, 16, 4, 6404, 6656
    rt, rng, r = Runtime(None, 1), np.random.default_rng(0), heads // kv
    q = rng.standard_normal((n, heads * hd)).astype(np.float32)
    k, v = (rng.standard_normal((kv, pad, hd)).astype(np.float16) for _ in range(2))
    vt = np.ascontiguousarray(v.transpose(0, 2, 1))
    mask = np.zeros((1, 1, r * n, pad), np.float16)
    mask[..., keys:] = -np.inf

    def grouped(g: Graph) -> dict[str, np.ndarray]:
        qi, ki = g.input(ggml.F32, hd, heads, n, name="q"), g.input(ggml.F16, hd, pad, kv, 1, name="k")
        vi, mi = g.input(ggml.F16, pad, hd, kv, 1, name="vt"), g.input(ggml.F16, pad, r * n, 1, 1, name="m")
        g.expand(grouped_attention(g.ops, qi, ki, vi, mi, hd ** -0.5, kv, n, 1))
        return {"q": q, "k": k, "vt": vt, "m": mask}

    def flash(g: Graph) -> dict[str, np.ndarray]:
        ops = g.ops
        qi, ki = g.input(ggml.F32, hd, heads, n, name="q"), g.input(ggml.F16, hd, pad, kv, 1, name="k")
        vi = g.input(ggml.F16, hd, pad, kv, 1, name="v")
        nb = ggml.tensor(ki).nb
        valid = [ops.view_4d(x, hd, keys, kv, 1, nb[1], nb[2], nb[3], 0) for x in (ki, vi)]
        qh = ops.permute(ops.reshape_4d(qi, hd, heads, n, 1), 0, 2, 1, 3)
        g.expand(attention(ops, qh, valid[0], valid[1], None, hd ** -0.5, True))
        return {"q": q, "k": k, "v": v}

    print(f"command: python -m benchmarks.mllama_text_profile --cross-forms {n}")
    for label, build in (("grouped products, padded keys, mask", grouped), ("flash, valid keys, no mask", flash)):
        g = Graph(rt)
        inputs = build(g)
        g.run(inputs)
        times = []
        for _ in range(3):
            t = time.thread_time()
            g.run(inputs)
            times.append(time.thread_time() - t)
        g.free()
        print(f"  {label:<40}{min(times) * 1e3:>8.0f} ms  {4 * n * keys * hd * heads / min(times) / 1e9:>6.1f} GFLOP/s")
    rt.free()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu-mid", choices=sorted(PRESETS))
    ap.add_argument("--quant", default="Q8_0", choices=("Q8_0", "Q4_K_M"))
    ap.add_argument("--prompt", type=int, default=700)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--text-only", action="store_true", help="no image: the cross-attention layers are skipped")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/llamadoc-bench"))
    ap.add_argument("--cross-forms", type=int, metavar="N", help="only time two forms of cross-attention")
    args = ap.parse_args()
    if args.cross_forms:
        cross_forms(args.cross_forms)
        return
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
