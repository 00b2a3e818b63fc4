"""Graph building blocks shared by the vision encoder and the text decoder: norms, attention, a graph holder."""

from __future__ import annotations

import numpy as np

from . import ggml
from .backend import Runtime
from .ggml import lib

GRAPH_NODES = 8192  # the 11B text decoder builds about 2,000 nodes, its vision encoder 1,500


class Graph:
    """One ggml graph with its (metadata-only) context; built once per shape and reused.

    Inputs are tensors marked as graph inputs; the scheduler allocates them and they must be
    set before every run, because the allocator reuses their memory for intermediates.
    """

    def __init__(self, runtime: Runtime, n_tensors: int = GRAPH_NODES) -> None:
        self.runtime = runtime
        self.ctx = ggml.Context(n_tensors, GRAPH_NODES)
        self.ops = self.ctx.ops
        self.gf = self.ctx.graph()
        self.inputs: dict[str, int] = {}

    def input(self, ggml_type: int, *ne: int, name: str) -> int:
        t = self.ctx.input(ggml_type, *ne, name=name)
        self.inputs[name] = t
        return t

    def output(self, t: int) -> int:
        lib.set_output(t)
        lib.build_forward_expand(self.gf, t)
        return t

    def expand(self, t: int) -> None:
        lib.build_forward_expand(self.gf, t)

    def run(self, values: dict[str, np.ndarray]) -> None:
        self.runtime.compute(self.gf, {self.inputs[k]: v for k, v in values.items()})

    def free(self) -> None:
        if self.ctx.ptr:
            self.runtime.forget(self.gf)
            self.ctx.free()

    def __del__(self) -> None:
        self.free()


def layer_norm(ops: ggml.Ops, x: int, weight: int, bias: int, eps: float) -> int:
    return ops.add(ops.mul(ops.norm(x, eps), weight), bias)


def rms_norm(ops: ggml.Ops, x: int, weight: int, eps: float) -> int:
    return ops.mul(ops.rms_norm(x, eps), weight)


def attention(ops: ggml.Ops, q: int, k: int, v: int, mask: int | None, scale: float, flash: bool) -> int:
    """Multi-head attention; returns [head_dim, heads, queries, batch] (contiguous).

    q: [head_dim, queries, heads, batch]; k, v: [head_dim, keys, kv_heads, batch] (views are fine);
    mask: F16 [keys, queries, 1, batch] of 0 / -inf. Grouped-query heads broadcast: query head h
    reads KV head h // (heads / kv_heads), as the reference's repeat_kv does.
    """
    if flash:
        out = ops.flash_attn_ext(q, k, v, mask, scale, 0.0, 0.0)
        lib.prec_set_acc(out, ggml.PREC_F32)
        return out
    kq = ops.mul_mat(k, q)  # [keys, queries, heads, batch]
    lib.prec_set_acc(kq, ggml.PREC_F32)
    kq = ops.soft_max_ext(kq, mask, scale, 0.0)
    vt = ops.cont(ops.permute(v, 1, 0, 2, 3))  # [keys, head_dim, kv_heads, batch]
    kqv = ops.mul_mat(vt, kq)  # [head_dim, queries, heads, batch]
    return ops.cont(ops.permute(kqv, 0, 2, 1, 3))


def grouped_attention(ops: ggml.Ops, q: int, k: int, vt: int, mask: int, scale: float, n_kv: int, n: int,
                      b: int) -> int:
    """Attention as two matrix products with the query heads of each KV head side by side.

    For few queries over many keys (decoding against an image's 6,400 keys) the CPU's flash
    attention walks every key once per query head; here each KV head's keys are read once for
    its whole group. q: [hd, heads, n*b] (n queries of b sequences; n == 1 or b == 1);
    k: [hd, keys, kv_heads, b]; vt: V transposed, [keys, hd, kv_heads, b]; mask: F16
    [keys, >= heads/kv_heads*n, 1, b]. Returns [hd*heads, n*b].
    """
    hd, n_head = ggml.shape(q)[:2]
    r = n_head // n_kv
    if n == 1:
        qg = ops.reshape_4d(q, hd, r, n_kv, b)
    else:
        assert b == 1
        qg = ops.cont(ops.permute(ops.reshape_4d(q, hd, r, n_kv, n), 0, 1, 3, 2))  # [hd, r, n, kv]
        qg = ops.reshape_4d(qg, hd, r * n, n_kv, 1)
    kq = ops.mul_mat(k, qg)  # [keys, r*n, kv_heads, b]
    lib.prec_set_acc(kq, ggml.PREC_F32)
    out = ops.mul_mat(vt, ops.soft_max_ext(kq, mask, scale, 0.0))  # [hd, r*n, kv_heads, b]
    if n > 1:
        out = ops.cont(ops.permute(ops.reshape_4d(out, hd, r, n, n_kv), 0, 1, 3, 2))
    return ops.reshape_2d(out, hd * n_head, n * b)


def mask_rows(blocked: np.ndarray) -> np.ndarray:
    """A boolean "blocked" array as an F16 attention mask (0 allowed, -inf blocked)."""
    return np.where(blocked, np.float16(-np.inf), np.float16(0))
