"""The vision encoder and projector as one ggml graph, ending in each cross-attention layer's K and V.

Meta's semantics: the kept intermediate states are the INPUTS of the listed local layers, and
only pairs of invalid tokens (padded tiles, the per-tile padding) are masked from each other.

Inside the graph the tokens are reordered, valid ones first: every tile's class token and
patches (tile-major, so the first max_tiles * n_pos tokens are the unpadded output), then the
per-tile padding tokens. Attention does not care about token order, and with valid tokens in
one block no mask is needed: valid queries attend to every key, invalid queries to the valid
keys only (a second, smaller attention call). ggml's CPU flash attention spends a fifth of its
time reading a mask (benchmarks/README.md).
"""

from __future__ import annotations

import itertools

import numpy as np

from . import ggml
from .backend import Runtime
from .cache import CrossCache
from .graph import Graph, attention, layer_norm, rms_norm
from .loader import MllamaConfig, Weights
from .preprocess import Preprocessed

MLP_CHUNKS = 4


def _encoder_layer(g: Graph, w: Weights, prefix: str, x: int, n_valid: int, n_head: int, eps: float,
                   flash: bool, kv_type: int, gated: bool) -> int:
    ops, t = g.ops, w.t
    n_embd, n_tok = ggml.shape(x)[:2]
    hd = n_embd // n_head
    h = layer_norm(ops, x, t[prefix + "attn_norm.weight"], t[prefix + "attn_norm.bias"], eps)

    def heads(name: str, ggml_type: int) -> int:  # [hd, tokens, heads]
        y = ops.permute(ops.reshape_3d(ops.mul_mat(t[prefix + name], h), hd, n_head, n_tok), 0, 2, 1, 3)
        return y if ggml_type == ggml.F32 else ops.cast(y, ggml_type)  # a node, freed after use

    # K and V (narrow) before Q (F32, as the CPU's tiled flash attention wants it): a lower peak.
    k, v = heads("attn_k.weight", kv_type), heads("attn_v.weight", kv_type)
    g.expand(k)
    g.expand(v)
    q = heads("attn_q.weight", ggml.F32)

    def first(y: int, start: int, n: int) -> int:  # tokens start..start+n of [hd, tokens, heads]
        s = ggml.tensor(y)
        return ops.view_3d(y, hd, n, n_head, s.nb[1], s.nb[2], start * s.nb[1])

    scale = hd ** -0.5
    rest = attention(ops, first(q, n_valid, n_tok - n_valid), first(k, 0, n_valid), first(v, 0, n_valid),
                     None, scale, flash)  # invalid queries: the valid keys only
    g.expand(rest)  # before the large call, so q's memory is free once that one is done
    a = attention(ops, first(q, 0, n_valid), k, v, None, scale, flash)  # valid queries: every key
    a = ops.concat(a, rest, 2)  # [hd, heads, tokens]
    a = ops.mul_mat(t[prefix + "attn_output.weight"], ops.reshape_2d(a, n_embd, n_tok))
    if gated:
        a = ops.scale(a, w.gates[prefix + "attn_gate"])
    x = ops.add(x, a)
    normed = layer_norm(ops, x, t[prefix + "ffn_norm.weight"], t[prefix + "ffn_norm.bias"], eps)

    def mlp(start: int, n: int) -> int:  # tokens start..start+n
        y = ops.view_2d(normed, n_embd, n, n_embd * 4, start * n_embd * 4)
        y = ops.gelu_erf(ops.add(ops.mul_mat(t[prefix + "ffn_up.weight"], y), t[prefix + "ffn_up.bias"]))
        return ops.add(ops.mul_mat(t[prefix + "ffn_down.weight"], y), t[prefix + "ffn_down.bias"])

    # A quarter of the tokens at a time: the hidden state (4x the width: 132 MB for a page) would
    # be the graph's largest tensor.
    bounds = [n_tok * i // MLP_CHUNKS for i in range(MLP_CHUNKS + 1)]
    h = mlp(0, bounds[1])
    for start, end in itertools.pairwise(bounds[1:]):
        h = ops.concat(h, mlp(start, end - start), 1)
    if gated:
        h = ops.scale(h, w.gates[prefix + "ffn_gate"])
    return ops.add(x, h)


class VisionEncoder:
    """Encodes one preprocessed image into a cross-cache slot (or returns its features).

    kv_type: the attention's K/V type: F16 as llama.cpp's own CLIP encoder (measured faster on
    the CPU), F32 for reference-exact runs.
    """

    def __init__(self, runtime: Runtime, c: MllamaConfig, w: Weights, flash: bool, kv_type: int) -> None:
        self.runtime, self.c, self.w, self.flash, self.kv_type = runtime, c, w, flash, kv_type

    def _build(self, cross: CrossCache | None, slot: int, n_tiles: int, features: bool) -> tuple[Graph, int | None]:
        v, txt, w = self.c.vision, self.c.text, self.w
        t, gates = w.t, w.gates
        g = Graph(self.runtime)
        ops = g.ops
        e, p, n_t, n_pos, n_pad = v.n_embd, v.patch_size, v.max_tiles, v.n_pos, v.n_pos_padded
        side = v.image_size // p
        pixels = g.input(ggml.F32, v.image_size, v.image_size, v.n_channels, n_t, name="pixels")
        ar = g.input(ggml.I32, 1, name="aspect_ratio")
        n_keys, n_valid = n_pos * n_t, n_pos * n_tiles

        # Patch embedding: a 14x14 stride-14 convolution as im2col (kept in F32: exact) + matmul.
        kernel = t["v.patch_embd.weight"]
        cols = ops.im2col(kernel, pixels, p, p, 0, 0, 1, 1, True, ggml.F32)
        cols = ops.reshape_2d(cols, p * p * v.n_channels, side * side * n_t)
        x = ops.mul_mat(ops.reshape_2d(kernel, p * p * v.n_channels, e), cols)
        x = ops.reshape_3d(x, e, v.n_patches, n_t)

        def tile_embd(name: str, rows: int) -> int:  # the aspect ratio's embedding, gated
            y = ops.reshape_3d(ops.get_rows(t[name + ".weight"], ar), e, rows, n_t)
            return ops.scale(y, gates[name + ".gate"])

        x = ops.add(x, tile_embd("v.pre_tile_position_embd", 1))
        x = ops.concat(ops.repeat_4d(t["v.class_embd"], e, 1, n_t, 1), x, 1)  # class token first
        x = ops.add(x, ops.scale(t["v.position_embd.weight"], gates["v.position_embd.gate"]))
        x = ops.add(x, tile_embd("v.tile_position_embd", n_pos))
        x = layer_norm(ops, x, t["v.pre_ln.weight"], t["v.pre_ln.bias"], v.eps)
        # The tiles' tokens, then every tile's padding (zeros, as the reference pads after pre_ln).
        x = ops.pad(ops.reshape_2d(x, e, n_keys), 0, (n_pad - n_pos) * n_t, 0, 0)

        def unpad(y: int) -> int:  # the tiles' tokens: the first n_keys, contiguous
            return ops.view_2d(y, e, n_keys, e * 4, 0)

        # The projector multiplies each kept state (the input of an intermediate layer) as soon as
        # it exists, with its own block of columns, one tile's tokens at a time (the products are
        # as wide as the text model); features=True keeps the states for the reference instead.
        kept: list[int] = []
        states: list[int | None] = [None] * n_t  # per tile: the projector's sum so far

        def project(block: int, y: int) -> None:
            for i in range(n_t):
                part = ops.mul_mat(t[f"mm.0.weight.{block}"], ops.view_2d(y, e, n_pos, e * 4, i * n_pos * e * 4))
                prev = states[i]
                acc = part if prev is None else ops.add(prev, part)
                g.expand(acc)  # computed now: y's memory is free once the layer is done
                states[i] = acc

        for i in range(v.n_layer):
            if i in v.intermediate:
                if features:
                    kept.append(x)
                else:
                    project(1 + v.intermediate.index(i), x)
            x = _encoder_layer(g, w, f"v.blk.{i}.", x, n_valid, v.n_head, v.eps, self.flash, self.kv_type,
                               gated=False)
        x = layer_norm(ops, x, t["v.post_ln.weight"], t["v.post_ln.bias"], v.eps)
        post = tile_embd("v.post_tile_position_embd", 1)  # tile i's to its tokens and to its padding
        parts = [ops.view_3d(x, e, n, n_t, e * 4, e * 4 * n, e * 4 * start)
                 for start, n in ((0, n_pos), (n_keys, n_pad - n_pos))]
        x = ops.concat(*(ops.reshape_2d(ops.add(y, post), e, ggml.shape(y)[1] * n_t) for y in parts), 1)
        for i in range(v.n_global):
            x = _encoder_layer(g, w, f"v.global.blk.{i}.", x, n_valid, v.n_head, v.eps, self.flash,
                               self.kv_type, gated=True)

        if features:  # the final state, then the kept ones interleaved (feature e + d*K + k)
            stack = ops.reshape_2d(unpad(kept[0]), 1, e * n_keys)
            for y in kept[1:]:
                stack = ops.concat(stack, ops.reshape_2d(unpad(y), 1, e * n_keys), 0)
            return g, g.output(ops.concat(unpad(x), ops.reshape_2d(stack, len(kept) * e, n_keys), 0))
        assert cross is not None
        project(0, x)
        hd, n_kv = txt.head_dim, txt.n_head_kv
        for tile, acc in enumerate(states):
            assert acc is not None
            y = ops.add(acc, t["mm.0.bias"])  # [text width, this tile's keys]
            for i in txt.cross_layers:
                b = f"blk.{i}.cross_attn_"
                key = ops.reshape_3d(ops.mul_mat(t[b + "k_proj.weight"], y), hd, n_kv, n_pos)
                key = rms_norm(ops, key, t[b + "k_norm.weight"], txt.eps)
                val = ops.reshape_3d(ops.mul_mat(t[b + "v_proj.weight"], y), hd, n_kv, n_pos)
                transposed = cross.v_transposed(i)
                for src, store, order in ((key, cross.k, (0, 2, 1, 3)),
                                          (val, cross.v, (1, 2, 0, 3) if transposed else (0, 2, 1, 3))):
                    dst = cross.view(ops, store, i, slot, 1)
                    s = ggml.tensor(dst)
                    if store is cross.v and transposed:  # [keys, hd, kv heads]: this tile's columns
                        dst = ops.view_3d(dst, n_pos, hd, n_kv, s.nb[1], s.nb[2], tile * n_pos * s.nb[0])
                    else:  # [hd, keys, kv heads]: this tile's rows
                        dst = ops.view_3d(dst, hd, n_pos, n_kv, s.nb[1], s.nb[2], tile * n_pos * s.nb[1])
                    g.expand(ops.cpy(ops.permute(src, *order), dst))
        return g, None

    def _run(self, g: Graph, pre: Preprocessed) -> None:
        try:
            g.run({"pixels": pre.pixel_values, "aspect_ratio": np.array([pre.aspect_ratio_id], dtype=np.int32)})
        except BaseException:
            g.free()
            raise

    def encode(self, pre: Preprocessed, cross: CrossCache, slot: int) -> None:
        """Run the encoder and projector on one image; its K/V land in ``slot``."""
        g, _ = self._build(cross, slot, pre.n_tiles, features=False)
        self._run(g, pre)
        g.free()
        cross.slots[slot].n_keys = pre.n_tiles * self.c.vision.n_pos

    def features(self, pre: Preprocessed) -> np.ndarray:
        """The encoder's output before the projector (no cache is touched):

        (max_tiles, tokens per tile, n_out) float32, unused tiles included, as the reference returns them.
        """
        v = self.c.vision
        g, out = self._build(None, 0, pre.n_tiles, features=True)
        self._run(g, pre)
        assert out is not None
        result = ggml.get_data(out).reshape(v.max_tiles, v.n_pos, v.n_out)
        g.free()
        return result
