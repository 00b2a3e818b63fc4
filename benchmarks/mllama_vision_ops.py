"""The vision encoder's operations one by one at a page's shape (6,432 tokens, width 1280, 16 heads
of 80): which weight type ggml multiplies fastest on this CPU, which attention form is fastest,
and whether more tokens per product (several pages in one graph) would run faster.

Times are CPU time of the process, best of --repeat: with --threads 1 (default) other work on a
shared machine does not inflate them. Random data; ggml's speed does not depend on the values.

    python -m benchmarks.mllama_vision_ops --threads 1
    python -m benchmarks.mllama_vision_ops --rows 1,16,64,128,256,512   # prompt-batch products only
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from llamadoc.engines.mllama import ggml
from llamadoc.engines.mllama.backend import (
    Runtime,
    cpu_repack_buffer_type,
    repack_supports,
)
from llamadoc.engines.mllama.ggml import lib
from llamadoc.engines.mllama.graph import Graph

T, E, FF, H, D = 6432, 1280, 5120, 16, 80
rng = np.random.default_rng(0)


def best(rt: Runtime, build: Callable[[Graph], dict[str, np.ndarray]], repeat: int) -> float:
    """CPU seconds of the graph ``build`` makes (it returns the inputs), best of ``repeat``."""
    g = Graph(rt)
    inputs = build(g)
    g.run(inputs)  # allocates
    times = []
    for _ in range(repeat):
        t = time.process_time()
        g.run(inputs)
        times.append(time.process_time() - t)
    g.free()
    return min(times)


def weight(rt: Runtime, keep: list[ggml.Context], ggml_type: int, k: int, n: int, repack: bool) -> int | None:
    ctx = ggml.Context(1)
    keep.append(ctx)
    w = ctx.new(ggml_type, k, n)
    buft = rt.buffer_type(False)
    if repack:
        rb = cpu_repack_buffer_type(rt.cpu)
        if rb is None or not repack_supports(rt.cpu, rb, ggml_type, (k, n)):
            return None
        buft = rb
    lib.backend_alloc_ctx_tensors_from_buft(ctx.ptr, buft)
    values = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
    data = {ggml.F32: lambda: values.tobytes(), ggml.F16: lambda: values.astype(np.float16).tobytes(),
            ggml.BF16: lambda: (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()}.get(
        ggml_type, lambda: ggml.quantize_rows(ggml_type, values))()
    buf = np.frombuffer(data, np.uint8)
    with ggml.LogCapture():  # the repack buffer logs the tensor it re-lays
        lib.backend_tensor_set(w, buf.ctypes.data, 0, buf.nbytes)
    return w


def matmuls(rt: Runtime, repeat: int, threads: int) -> None:
    print(f"matrix products at {T} tokens, GFLOP/s per thread (fc1 {E}->{FF}, fc2 {FF}->{E}, q/k/v/o {E}->{E})")
    keep: list[ggml.Context] = []
    for ggml_type in (ggml.F32, ggml.F16, ggml.BF16, ggml.Q8_0, ggml.Q4_0, ggml.Q4_K, ggml.Q6_K):
        for repack in (False, True):
            rates = []
            for k, n in ((E, FF), (FF, E), (E, E)):
                w = weight(rt, keep, ggml_type, k, n, repack)
                if w is None:
                    break
                x = rng.standard_normal((T, k)).astype(np.float32)

                def build(g: Graph, w: int = w, k: int = k, x: np.ndarray = x) -> dict[str, np.ndarray]:
                    g.expand(g.ops.mul_mat(w, g.input(ggml.F32, k, T, name="x")))
                    return {"x": x}

                rates.append(2 * k * n * T / best(rt, build, repeat) / 1e9 / threads)
            if rates:
                label = ggml.type_name(ggml_type) + (" (repacked)" if repack else "")
                print(f"  {label:<18}" + "".join(f"{r:>8.0f}" for r in rates))
    for ctx in keep:
        ctx.free()


def attention_forms(rt: Runtime, repeat: int) -> None:
    print(f"attention of one layer, {T} tokens, {H} heads of {D}: CPU seconds")
    x = rng.standard_normal((T, H * D)).astype(np.float32)
    zeros = np.zeros((T, T), np.float16)

    def qkv(g: Graph) -> tuple[int, int, int]:
        return tuple(g.input(ggml.F32, H * D, T, name=n) for n in "qkv")  # type: ignore[return-value]

    def heads(g: Graph, y: int, ggml_type: int) -> int:  # [D, T, H]
        y = g.ops.permute(g.ops.reshape_3d(y, D, H, T), 0, 2, 1, 3)
        return y if ggml_type == ggml.F32 else g.ops.cast(y, ggml_type)

    def flash(kv_type: int, masked: bool) -> Callable[[Graph], dict[str, np.ndarray]]:
        def build(g: Graph) -> dict[str, np.ndarray]:
            q, k, v = qkv(g)
            mask = g.input(ggml.F16, T, T, name="mask") if masked else None
            out = g.ops.flash_attn_ext(heads(g, q, ggml.F32), heads(g, k, kv_type), heads(g, v, kv_type), mask,
                                       D ** -0.5, 0.0, 0.0)
            lib.prec_set_acc(out, ggml.PREC_F32)
            g.expand(out)
            return {"q": x, "k": x, "v": x, **({"mask": zeros} if masked else {})}
        return build

    def products(g: Graph) -> dict[str, np.ndarray]:
        """mul_mat (F16 scores), soft_max, mul_mat (BF16 weighted sum), per head and half the queries."""
        ops = g.ops
        q, k, v = qkv(g)
        qh, kh = heads(g, q, ggml.F16), heads(g, k, ggml.F16)
        vt = ops.cast(ops.permute(ops.reshape_3d(v, D, H, T), 1, 2, 0, 3), ggml.BF16)  # [T, D, H]
        s, sv = ggml.tensor(qh), ggml.tensor(vt)
        for h in range(H):
            for c in range(2):
                part = ops.view_2d(qh, D, T // 2, s.nb[1], h * s.nb[2] + c * (T // 2) * s.nb[1])
                kq = ops.soft_max_ext(ops.mul_mat(ops.view_2d(kh, D, T, s.nb[1], h * s.nb[2]), part), None,
                                      D ** -0.5, 0.0)
                g.expand(ops.mul_mat(ops.view_2d(vt, T, D, sv.nb[1], h * sv.nb[2]), ops.cast(kq, ggml.BF16)))
        return {"q": x, "k": x, "v": x}

    for label, build in (("flash, F32 K/V, mask (the starting commit)", flash(ggml.F32, True)),
                         ("flash, F16 K/V, mask", flash(ggml.F16, True)),
                         ("flash, F32 K/V, no mask", flash(ggml.F32, False)),
                         ("flash, F16 K/V, no mask (this commit)", flash(ggml.F16, False)),
                         ("mul_mat + soft_max + mul_mat, F16/BF16, no mask", products)):
        print(f"  {label:<50}{best(rt, build, repeat):>8.2f}")


def tokens_per_product(rt: Runtime, repeat: int, threads: int) -> None:
    print(f"BF16 fc1 ({E}->{FF}) by tokens per product, GFLOP/s per thread (1 tile, 1 page, 2 and 4 pages)")
    keep: list[ggml.Context] = []
    w = weight(rt, keep, ggml.BF16, E, FF, False)
    assert w is not None
    for n in (1601, T, 2 * T, 4 * T):
        x = rng.standard_normal((n, E)).astype(np.float32)

        def build(g: Graph, n: int = n, x: np.ndarray = x) -> dict[str, np.ndarray]:
            g.expand(g.ops.mul_mat(w, g.input(ggml.F32, E, n, name="x")))
            return {"x": x}

        print(f"  {n:>6} tokens {2 * E * FF * n / best(rt, build, repeat) / 1e9 / threads:>8.0f}")
    keep[0].free()


def prompt_products(rt: Runtime, repeat: int, rows: list[int]) -> None:
    """A text layer's widest product (2048 -> 8192) by rows: the weight as stored, repacked, or
    dequantised inside the graph to a float type first (what a prompt batch could multiply)."""
    k, n = 2048, 8192
    print(f"ms per {k}x{n} product by rows (CPU time)")
    print(f"  {'weight':<26}" + "".join(f"{r:>9}" for r in rows))
    keep: list[ggml.Context] = []
    forms: list[tuple[int, bool, int | None]] = [
        (ggml.Q8_0, False, None), (ggml.Q8_0, False, ggml.F32), (ggml.Q8_0, False, ggml.BF16),
        (ggml.Q8_0, False, ggml.F16), (ggml.Q4_K, False, None), (ggml.Q4_K, True, None), (ggml.Q4_K, False, ggml.F32),
        (ggml.Q6_K, False, None), (ggml.Q6_K, False, ggml.F32)]
    for ggml_type, repack, via in forms:
        w = weight(rt, keep, ggml_type, k, n, repack)
        if w is None:
            continue
        out = []
        for m in rows:
            x = rng.standard_normal((m, k)).astype(np.float32)

            def build(g: Graph, w: int = w, x: np.ndarray = x, m: int = m,
                      via: int | None = via) -> dict[str, np.ndarray]:
                a = w
                if via is not None:  # ggml dequantises to F32 only; other float types go through it
                    a = g.ops.cast(w, ggml.F32)
                    a = a if via == ggml.F32 else g.ops.cast(a, via)
                g.expand(g.ops.mul_mat(a, g.input(ggml.F32, k, m, name="x")))
                return {"x": x}

            out.append(best(rt, build, repeat) * 1e3)
        label = ggml.type_name(ggml_type) + (" repacked" if repack else "") + \
            (f" -> {ggml.type_name(via)}" if via is not None else "")
        print(f"  {label:<26}" + "".join(f"{v:>9.2f}" for v in out))
    for ctx in keep:
        ctx.free()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rows", help="only the prompt-batch products, at these row counts (e.g. 1,16,512)")
    args = ap.parse_args()
    rt = Runtime(None, args.threads)
    if args.rows:
        print(f"command: python -m benchmarks.mllama_vision_ops --threads {args.threads} --rows {args.rows}")
        prompt_products(rt, args.repeat, [int(r) for r in args.rows.split(",")])
        rt.free()
        return
    print(f"command: python -m benchmarks.mllama_vision_ops --threads {args.threads} --repeat {args.repeat}")
    matmuls(rt, args.repeat, args.threads)
    attention_forms(rt, args.repeat)
    tokens_per_product(rt, args.repeat, args.threads)
    rt.free()


if __name__ == "__main__":
    main()
