"""The vision encoder and projector as one ggml graph, ending in each cross-attention layer's K and V.

Meta's semantics: the kept intermediate states are the INPUTS of the listed local layers, and
only pairs of invalid tokens (padded tiles, the per-tile padding) are masked from each other.
"""

from __future__ import annotations

import numpy as np

from . import ggml
from .backend import Runtime
from .cache import Buffers, CrossCache
from .graph import Graph, attention, layer_norm, mask_rows, rms_norm
from .loader import MllamaConfig, Weights
from .preprocess import Preprocessed


def vision_mask(n_tiles: int, max_tiles: int, n_pos: int, n_pos_padded: int) -> np.ndarray:
    """F16 [queries, keys] mask: -inf where both tokens are invalid (padded tile or tile padding)."""
    valid = np.zeros((max_tiles, n_pos_padded), dtype=bool)
    valid[:n_tiles, :n_pos] = True
    invalid = ~valid.reshape(-1)
    return mask_rows(invalid[:, None] & invalid[None, :])


def _encoder_layer(g: Graph, w: Weights, prefix: str, x: int, mask: int, n_head: int, eps: float,
                   flash: bool, gated: bool) -> int:
    ops, t = g.ops, w.t
    n_embd, n_tok = ggml.shape(x)[:2]
    hd = n_embd // n_head
    h = layer_norm(ops, x, t[prefix + "attn_norm.weight"], t[prefix + "attn_norm.bias"], eps)

    def heads(name: str) -> int:
        y = ops.reshape_3d(ops.mul_mat(t[prefix + name], h), hd, n_head, n_tok)
        return ops.permute(y, 0, 2, 1, 3)  # [hd, tokens, heads]

    a = attention(ops, heads("attn_q.weight"), heads("attn_k.weight"), heads("attn_v.weight"), mask,
                  hd ** -0.5, flash)
    a = ops.mul_mat(t[prefix + "attn_output.weight"], ops.reshape_2d(a, n_embd, n_tok))
    if gated:
        a = ops.scale(a, w.gates[prefix + "attn_gate"])
    x = ops.add(x, a)
    h = layer_norm(ops, x, t[prefix + "ffn_norm.weight"], t[prefix + "ffn_norm.bias"], eps)
    h = ops.gelu_erf(ops.add(ops.mul_mat(t[prefix + "ffn_up.weight"], h), t[prefix + "ffn_up.bias"]))
    h = ops.add(ops.mul_mat(t[prefix + "ffn_down.weight"], h), t[prefix + "ffn_down.bias"])
    if gated:
        h = ops.scale(h, w.gates[prefix + "ffn_gate"])
    return ops.add(x, h)


class VisionEncoder:
    """Encodes one preprocessed image into a cross-cache slot (and, on request, returns its features).

    The attention mask (6432 x 6432 in F16 for the 11B: 83 MB) depends only on the tile count,
    so it lives in its own buffer beside the vision weights and is rewritten only when that changes.
    """

    def __init__(self, runtime: Runtime, c: MllamaConfig, w: Weights, flash: bool, on_gpu: bool) -> None:
        self.runtime, self.c, self.w, self.flash = runtime, c, w, flash
        n = c.vision.max_tiles * c.vision.n_pos_padded
        self._mask_buf = Buffers(runtime)
        self._mask = self._mask_buf.new(on_gpu, ggml.F16, n, n, name="vision_mask")
        self._mask_buf.allocate("vision attention mask")
        self._mask_tiles = -1

    def close(self) -> None:
        self._mask_buf.free()

    def _build(self, cross: CrossCache, slot: int, features: bool) -> tuple[Graph, int | None]:
        v, txt, w = self.c.vision, self.c.text, self.w
        t, gates = w.t, w.gates
        g = Graph(self.runtime)
        ops = g.ops
        e, p, n_t, n_pos, n_pad = v.n_embd, v.patch_size, v.max_tiles, v.n_pos, v.n_pos_padded
        side = v.image_size // p
        pixels = g.input(ggml.F32, v.image_size, v.image_size, v.n_channels, n_t, name="pixels")
        ar = g.input(ggml.I32, 1, name="aspect_ratio")
        mask = self._mask

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
        x = ops.reshape_2d(ops.pad(x, 0, n_pad - n_pos, 0, 0), e, n_pad * n_t)

        kept = []
        for i in range(v.n_layer):
            if i in v.intermediate:
                kept.append(x)
            x = _encoder_layer(g, w, f"v.blk.{i}.", x, mask, v.n_head, v.eps, self.flash, gated=False)
        x = layer_norm(ops, x, t["v.post_ln.weight"], t["v.post_ln.bias"], v.eps)
        x = ops.add(ops.reshape_3d(x, e, n_pad, n_t), tile_embd("v.post_tile_position_embd", 1))
        x = ops.reshape_2d(x, e, n_pad * n_t)
        for i in range(v.n_global):
            x = _encoder_layer(g, w, f"v.global.blk.{i}.", x, mask, v.n_head, v.eps, self.flash, gated=True)

        def unpad(y: int, width: int) -> int:  # [width, n_pad * tiles] -> [width, n_pos, tiles]
            return ops.cont(ops.view_3d(y, width, n_pos, n_t, width * 4, width * 4 * n_pad, 0))

        # Kept states stacked on a new fastest axis: feature e + d*K + k, as the reference flattens them.
        stack = ops.reshape_2d(kept[0], 1, e * n_pad * n_t)
        for y in kept[1:]:
            stack = ops.concat(stack, ops.reshape_2d(y, 1, e * n_pad * n_t), 0)
        k = len(kept)
        feats = ops.concat(unpad(x, e), unpad(ops.reshape_2d(stack, k * e, n_pad * n_t), k * e), 0)
        out = g.output(feats) if features else None
        feats = ops.reshape_2d(feats, v.n_out, n_pos * n_t)
        states = ops.add(ops.mul_mat(t["mm.0.weight"], feats), t["mm.0.bias"])  # [text width, keys]

        hd, n_kv, n_keys = txt.head_dim, txt.n_head_kv, n_pos * n_t
        for i in txt.cross_layers:
            b = f"blk.{i}.cross_attn_"
            key = ops.reshape_3d(ops.mul_mat(t[b + "k_proj.weight"], states), hd, n_kv, n_keys)
            key = rms_norm(ops, key, t[b + "k_norm.weight"], txt.eps)
            val = ops.reshape_3d(ops.mul_mat(t[b + "v_proj.weight"], states), hd, n_kv, n_keys)
            for src, store, dims, order in (
                    (key, cross.k, (hd, n_keys), (0, 2, 1, 3)),
                    (val, cross.v, (n_keys, hd) if cross.v_transposed(i) else (hd, n_keys),
                     (1, 2, 0, 3) if cross.v_transposed(i) else (0, 2, 1, 3))):
                dst = cross.view(ops, store, i, slot, 1)
                s = ggml.tensor(dst)
                dst = ops.view_3d(dst, *dims, n_kv, s.nb[1], s.nb[2], 0)  # the image's keys, not padding
                g.expand(ops.cpy(ops.permute(src, *order), dst))
        return g, out

    def encode(self, pre: Preprocessed, cross: CrossCache, slot: int, features: bool = False) -> np.ndarray | None:
        """Run the encoder on one image; its K/V land in ``slot``. Returns the features if asked:

        (max_tiles, tokens per tile, n_out) float32, unused tiles included, as the reference returns them.
        """
        v = self.c.vision
        if pre.n_tiles != self._mask_tiles:
            ggml.set_data(self._mask, vision_mask(pre.n_tiles, v.max_tiles, v.n_pos, v.n_pos_padded))
            self._mask_tiles = pre.n_tiles
        g, out = self._build(cross, slot, features)
        try:
            g.run({"pixels": pre.pixel_values, "aspect_ratio": np.array([pre.aspect_ratio_id], dtype=np.int32)})
            result = ggml.get_data(out, 3) if out is not None else None
        finally:
            g.free()
        cross.slots[slot].n_keys = pre.n_tiles * v.n_pos
        return result
