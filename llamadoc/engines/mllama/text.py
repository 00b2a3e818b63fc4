"""The text decoder as a ggml graph over a batch of sequences: self-attention with a KV cache, gated
cross-attention to each sequence's image, and logits for the rows asked for.

A graph has a fixed shape (sequences x new tokens, key window, cache slots), so decoding builds
it once and reruns it, changing only its inputs; it is rebuilt when the window grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import ggml
from .backend import Runtime
from .cache import CrossCache, SelfCache
from .graph import Graph, attention, grouped_attention, rms_norm
from .loader import MllamaConfig, Weights

# Rows from which a graph multiplies the file-mapped twins of repacked matrices (Weights.plain):
# ggml's tiled K-quant GEMM overtakes the repacked kernels between 8 and 16 rows on x86 (Q4_K,
# 2048 x 8192: 2.58 against 3.06 ms at 8 rows, 3.90 against 3.14 at 16; benchmarks/README.md,
# "Prompts on the fastest kernel"). Decoding a full batch (8 sequences) stays repacked.
PLAIN_ROWS = 16


@dataclass(frozen=True)
class Shape:
    n_seq: int  # sequences in the batch
    n_new: int  # new tokens per sequence
    n_win: int  # keys each sequence attends to (a multiple of the cache's key block)
    first_seq: int  # cache row of the first sequence; the batch uses consecutive rows
    first_slot: int | None  # image slot of the first sequence (consecutive too); None: no cross layers
    n_out: int  # rows of logits


def build_decoder(runtime: Runtime, c: MllamaConfig, w: Weights, kv: SelfCache, cross: CrossCache | None,
                  s: Shape, flash: bool) -> tuple[Graph, int]:
    """The decoder graph for one shape; returns it with its logits tensor [n_vocab, n_out]."""
    txt = c.text
    g = Graph(runtime)
    ops = g.ops
    b, n, hd, n_rows = s.n_seq, s.n_new, txt.head_dim, s.n_seq * s.n_new
    t = {**w.t, **w.plain} if n_rows >= PLAIN_ROWS else w.t
    tokens = g.input(ggml.I32, n_rows, name="tokens")
    pos = g.input(ggml.I32, n_rows, name="positions")
    rows = g.input(ggml.I64, n_rows, name="cache_rows")
    mask = g.input(ggml.F16, s.n_win, n, 1, b, name="mask")
    out_rows = g.input(ggml.I32, s.n_out, name="out_rows")
    image = (cross, s.first_slot) if cross is not None and s.first_slot is not None else None
    if image is not None:
        cross = image[0]
        # One mask row per query head of a KV group: what the grouped products need (rows are alike).
        cmask = g.input(ggml.F16, cross.n_keys, n * txt.n_head // txt.n_head_kv, 1, b, name="cross_mask")
        after_image = g.input(ggml.F32, 1, n_rows, name="after_image")
    freqs = t.get("rope_freqs.weight")
    scale = hd ** -0.5

    def heads(y: int, n_head: int) -> int:  # [n_head*hd, rows] -> [hd, n, heads, b]
        return ops.permute(ops.reshape_4d(y, hd, n_head, n, b), 0, 2, 1, 3)

    def rope(y: int, n_head: int) -> int:  # Llama 3's RoPE: rope_freqs.weight carries its scaling
        y = ops.reshape_3d(y, hd, n_head, n_rows)
        return ops.rope_ext(y, pos, freqs, hd, ggml.ROPE_NORM, 0, txt.rope_base, 1.0, 0.0, 1.0, 0.0, 0.0)

    def mlp(prefix: str, x: int) -> int:
        h = rms_norm(ops, x, t[prefix + "ffn_norm.weight"], txt.eps)
        h = ops.swiglu_split(ops.mul_mat(t[prefix + "ffn_gate.weight"], h), ops.mul_mat(t[prefix + "ffn_up.weight"], h))
        return ops.mul_mat(t[prefix + "ffn_down.weight"], h)

    x = ops.get_rows(t["token_embd.weight"], tokens)
    for i in range(txt.n_layer):
        p = f"blk.{i}."
        if i in txt.cross_layers:
            if image is None:
                continue  # text-only: the reference skips cross-attention layers entirely
            cross, first_slot = image
            h = rms_norm(ops, x, t[p + "attn_norm.weight"], txt.eps)
            q = ops.reshape_3d(ops.mul_mat(t[p + "cross_attn_q_proj.weight"], h), hd, txt.n_head, n_rows)
            q = rms_norm(ops, q, t[p + "cross_attn_q_norm.weight"], txt.eps)
            k = cross.view(ops, cross.k, i, first_slot, b)
            v = cross.view(ops, cross.v, i, first_slot, b)
            if cross.v_transposed(i):
                a = grouped_attention(ops, q, k, v, cmask, scale, txt.n_head_kv, n, b)
            else:
                a = ops.reshape_2d(attention(ops, heads(q, txt.n_head), k, v, cmask, scale, True),
                                   txt.n_head * hd, n_rows)
            a = ops.mul_mat(t[p + "cross_attn_o_proj.weight"], a)
            # Rows before the image see no image: Meta zeroes both outputs for them.
            gate_a = np.tanh(np.float32(w.gates[p + "cross_attn_attn_gate"]))
            x = ops.add(x, ops.scale(ops.mul(a, after_image), float(gate_a)))
            gate_m = np.tanh(np.float32(w.gates[p + "cross_attn_mlp_gate"]))
            x = ops.add(x, ops.scale(ops.mul(mlp(p, x), after_image), float(gate_m)))
            continue
        h = rms_norm(ops, x, t[p + "attn_norm.weight"], txt.eps)
        q = heads(rope(ops.mul_mat(t[p + "attn_q.weight"], h), txt.n_head), txt.n_head)
        k_new = rope(ops.mul_mat(t[p + "attn_k.weight"], h), txt.n_head_kv)
        v_new = ops.mul_mat(t[p + "attn_v.weight"], h)
        k = _write_and_window(g, kv.k[i], k_new, rows, s, hd, txt.n_head_kv, n_rows)
        v = _write_and_window(g, kv.v[i], v_new, rows, s, hd, txt.n_head_kv, n_rows)
        a = ops.reshape_2d(attention(ops, q, k, v, mask, scale, flash), txt.n_head * hd, n_rows)
        x = ops.add(x, ops.mul_mat(t[p + "attn_output.weight"], a))
        x = ops.add(x, mlp(p, x))
    x = ops.get_rows(x, out_rows)  # only the rows whose logits are wanted
    x = rms_norm(ops, x, t["output_norm.weight"], txt.eps)
    out_w = (w.plain if s.n_out >= PLAIN_ROWS else {}).get("output.weight", w.t["output.weight"])
    logits = g.output(ops.mul_mat(out_w, x))
    return g, logits


def _write_and_window(g: Graph, cache: int, new: int, rows: int, s: Shape, hd: int, n_kv: int,
                      n_rows: int) -> int:
    """Write new K or V rows into the cache; return the batch's key window [hd, n_win, kv_heads, b].

    The window is a view of ggml_set_rows' result, so the graph orders the write before the read.
    """
    ops = g.ops
    c = ggml.tensor(cache)
    flat = ops.view_2d(cache, hd * n_kv, c.ne[2] * c.ne[3], c.nb[2], 0)
    written = ops.set_rows(flat, ops.reshape_2d(new, hd * n_kv, n_rows), rows)
    window = ops.view_4d(written, hd, n_kv, s.n_win, s.n_seq, c.nb[1], c.nb[2], c.nb[3], s.first_seq * c.nb[3])
    return ops.permute(window, 0, 2, 1, 3)
