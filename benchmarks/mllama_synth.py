"""Synthetic GGUF files with real shapes and random weights, for speed measurements only.

Speed does not depend on the weights' values, so quantised blocks are a repeated random pattern
with valid fp16 scales (no quantiser run): an 11B-shaped file is written at disk speed.
Writes an mllama file for our engine and a same-shape llama file for llama-cpp-python.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from llamadoc.engines.mllama import ggml
from llamadoc.engines.mllama.convert import (
    PlannedTensor,
    choose_types,
    rope_freq_factors,
)
from llamadoc.engines.mllama.gguf_io import GGUFWriter
from llamadoc.engines.mllama.loader import (
    CONV,
    MATMUL,
    ROWS,
    MllamaConfig,
    TextConfig,
    VisionConfig,
    expected_tensors,
)

# type -> (bytes per block, offsets of fp16 scales in a block, scale value): scales keep weights ~0.05
_BLOCKS = {
    ggml.Q4_0: (18, (0,), 3e-3), ggml.Q8_0: (34, (0,), 4e-4), ggml.Q5_0: (22, (0,), 2e-3),
    ggml.Q4_K: (144, (0, 2), 1e-4), ggml.Q6_K: (210, (208,), 2e-5),
}
_PATTERN_BYTES = 1 << 22
_KIND = {MATMUL: "matmul", ROWS: "rows", CONV: "conv"}
LLAMA3_SPECIALS = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|start_header_id|>": 128006,
                   "<|end_header_id|>": 128007, "<|eom_id|>": 128008, "<|eot_id|>": 128009}


@dataclass(frozen=True)
class Shape:
    text: TextConfig
    vision: VisionConfig
    n_vocab_tokens: int  # tokenizer size (the image token included for mllama)


LLAMA_3_2_11B = Shape(
    TextConfig(n_layer=40, n_embd=4096, n_ff=14336, n_head=32, n_head_kv=8, head_dim=128, rope_base=500000.0,
               eps=1e-5, n_vocab=128256, n_ctx_train=131072, cross_layers=(3, 8, 13, 18, 23, 28, 33, 38)),
    VisionConfig(n_layer=32, n_global=8, intermediate=(3, 7, 15, 23, 30), n_embd=1280, n_ff=5120, n_head=16,
                 eps=1e-5, image_size=560, patch_size=14, max_tiles=4, n_channels=3),
    128257,
)
# A 2-core CPU can decode this in reasonable time; vision is small, its geometry (6404 keys) real.
CPU_MID = replace(
    LLAMA_3_2_11B,
    text=replace(LLAMA_3_2_11B.text, n_layer=16, n_embd=2048, n_ff=8192, n_head=16, n_head_kv=4,
                 cross_layers=(3, 8, 13)),
    vision=replace(LLAMA_3_2_11B.vision, n_layer=2, n_global=1, intermediate=(0, 1), n_embd=64, n_ff=128,
                   n_head=2),
)
# The vision encoder's real width and token count (6,432 per 4-tile page, a 7,680-wide projector
# input) with a quarter of its depth (8 local + 2 global layers): a page in tens of seconds on a CPU.
CPU_PAGE = replace(
    CPU_MID,
    vision=replace(LLAMA_3_2_11B.vision, n_layer=8, n_global=2, intermediate=(0, 1, 3, 5, 7)),
)
# Seconds on a CPU: the GPU script's --tiny mode runs every code path with it.
TINY = replace(
    CPU_MID,
    text=replace(CPU_MID.text, n_layer=4, n_embd=256, n_ff=512, n_head=4, n_head_kv=2, head_dim=64,
                 cross_layers=(1, 3)),
    vision=replace(CPU_MID.vision, n_embd=32, n_ff=64, image_size=112),
)
# Llama 3.2 90B Vision: Llama 3.1 70B's text model with 20 cross-attention layers (every fifth from
# the fourth), the 11B's vision tower. About 50 GiB as Q4_K_M.
LLAMA_3_2_90B = replace(
    LLAMA_3_2_11B,
    text=replace(LLAMA_3_2_11B.text, n_layer=100, n_embd=8192, n_ff=28672, n_head=64,
                 cross_layers=tuple(range(3, 100, 5))),
)
# The GPU script's --dry-run stands this in for the 90B: the tiny shape with more layers.
TINY_DEEP = replace(TINY, text=replace(TINY.text, n_layer=8, cross_layers=(1, 4, 7)))
PRESETS = {"11b": LLAMA_3_2_11B, "90b": LLAMA_3_2_90B, "cpu-mid": CPU_MID, "cpu-page": CPU_PAGE, "tiny": TINY,
           "tiny-deep": TINY_DEEP}


def _pattern(ggml_type: int, rng: np.random.Generator) -> bytes:
    if ggml_type == ggml.F32:
        return (rng.standard_normal(_PATTERN_BYTES // 4) * 0.02).astype("<f4").tobytes()
    if ggml_type == ggml.F16:
        return (rng.standard_normal(_PATTERN_BYTES // 2) * 0.02).astype("<f2").tobytes()
    size, scale_offsets, scale = _BLOCKS[ggml_type]
    n = _PATTERN_BYTES // size
    blocks = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    d = np.full(n, scale, dtype="<f2").view(np.uint8).reshape(n, 2)
    for off in scale_offsets:
        blocks[:, off:off + 2] = d
    return blocks.tobytes()


def _fill(pattern: bytes, nbytes: int) -> Iterator[bytes]:
    while nbytes > 0:
        piece = pattern[:nbytes]
        nbytes -= len(piece)
        yield piece


def _vocab(n_tokens: int, image_token: int | None) -> dict[str, Any]:
    """A byte-level BPE vocabulary of Llama 3's size with its special tokens where Llama 3 has them."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, extra = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    byte_text = {b: chr(c) for b, c in zip(bs, cs, strict=True)}
    tokens = [byte_text[b] for b in range(256)] + [f"w{i}" for i in range(256, n_tokens)]
    types = [1] * n_tokens
    specials = dict(LLAMA3_SPECIALS, **({"<|image|>": image_token} if image_token is not None else {}))
    for text, i in specials.items():
        tokens[i], types[i] = text, 3
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": ["Ġ t", "h e", "Ġt he"],
            "tokenizer.ggml.bos_token_id": 128000, "tokenizer.ggml.eos_token_id": 128009}


def _rope(t: TextConfig) -> np.ndarray:
    return rope_freq_factors(t.head_dim, t.rope_base, {"factor": 8.0, "low_freq_factor": 1.0,
                                                       "high_freq_factor": 4.0,
                                                       "original_max_position_embeddings": 8192})


def _types(planned: list[PlannedTensor], quant: str, vision_type: int | None) -> dict[str, int]:
    types = choose_types(planned, quant)
    if vision_type is not None:  # the vision tower's and projector's matrices (Q8_0 in a Q4_K_M file)
        for p in planned:
            if p.name.startswith(("v.", "mm.")) and p.kind == "matmul":
                types[p.name] = vision_type
    return types


def _nbytes(ggml_type: int, ne: tuple[int, ...]) -> int:
    ctx = ggml.Context(1)
    try:
        return int(ggml.lib.nbytes(ctx.new(ggml_type, *ne)))
    finally:
        ctx.free()


def _write(path: Path, metadata: dict[str, Any], planned: list[PlannedTensor], quant: str,
           exact: dict[str, np.ndarray], seed: int, vision_type: int | None = None) -> int:
    rng = np.random.default_rng(seed)
    types = _types(planned, quant, vision_type)
    patterns: dict[int, bytes] = {}
    writer = GGUFWriter(path, metadata)
    for p in planned:
        ggml_type = types[p.name]
        ne = tuple(reversed(p.shape))
        if p.name in exact:
            value = exact[p.name]
            writer.add_tensor(p.name, ggml.F32, ne, lambda v=value: [v.astype("<f4").tobytes()])
            continue
        if ggml_type not in patterns:
            patterns[ggml_type] = _pattern(ggml_type, rng)
        nbytes = _nbytes(ggml_type, ne)
        writer.add_tensor(p.name, ggml_type, ne, lambda pat=patterns[ggml_type], n=nbytes: _fill(pat, n))
    return writer.write()


def _plan_mllama(shape: Shape) -> tuple[dict[str, Any], list[PlannedTensor], dict[str, np.ndarray]]:
    t, v = shape.text, shape.vision
    c = MllamaConfig(t, v)
    planned = [PlannedTensor("token_embd.weight", np.zeros, (t.n_vocab + 8, t.n_embd), "rows"),
               PlannedTensor("rope_freqs.weight", np.zeros, (t.head_dim // 2,), "dense")]
    exact: dict[str, np.ndarray] = {"rope_freqs.weight": _rope(t)}
    for name, e in expected_tensors(c).items():
        planned.append(PlannedTensor(name, np.zeros, tuple(reversed(e.ne)), _KIND.get(e.use, "dense")))
        if e.use not in _KIND:  # norms, biases, gates, embeddings: sane exact values
            n = math.prod(e.ne)
            exact[name] = np.full(n, 0.5 if n == 1 else 1.0, dtype=np.float32) if ("norm" in name or n == 1) \
                else np.random.default_rng(len(name)).standard_normal(n).astype(np.float32) * 0.02
    meta = {"general.name": "synthetic mllama", "general.file_type": 15, **c.gguf_metadata(),
            **_vocab(shape.n_vocab_tokens, image_token=t.n_vocab)}
    return meta, planned, exact


def write_mllama(path: Path, shape: Shape, quant: str = "Q4_K_M", seed: int = 0,
                 vision_type: int | None = None) -> int:
    """vision_type: a ggml type for the vision tower's and projector's matrices instead of the
    quant's choice (Q8_0 for Q4_K_M), e.g. ggml.F16 to compare the two on a GPU."""
    meta, planned, exact = _plan_mllama(shape)
    return _write(path, meta, planned, quant, exact, seed, vision_type)


def mllama_bytes(shape: Shape, quant: str = "Q4_K_M", vision_type: int | None = None) -> int:
    """The tensor bytes write_mllama would write (the file is a few MB larger: metadata, vocabulary),
    without writing anything: to check disk and GPU memory before a 50 GB file."""
    _, planned, exact = _plan_mllama(shape)
    return _planned_bytes(planned, exact, _types(planned, quant, vision_type))


def _plan_llama(shape: Shape) -> tuple[dict[str, Any], list[PlannedTensor], dict[str, np.ndarray]]:
    t = shape.text
    q, kv = t.n_head * t.head_dim, t.n_head_kv * t.head_dim
    planned = [PlannedTensor("token_embd.weight", np.zeros, (t.n_vocab, t.n_embd), "rows"),
               PlannedTensor("rope_freqs.weight", np.zeros, (t.head_dim // 2,), "dense"),
               PlannedTensor("output_norm.weight", np.zeros, (t.n_embd,), "dense"),
               PlannedTensor("output.weight", np.zeros, (t.n_vocab, t.n_embd), "matmul")]
    exact = {"rope_freqs.weight": _rope(t), "output_norm.weight": np.ones(t.n_embd, dtype=np.float32)}
    for i in range(t.n_layer):
        b = f"blk.{i}."
        for name, shp in (("attn_q.weight", (q, t.n_embd)), ("attn_k.weight", (kv, t.n_embd)),
                          ("attn_v.weight", (kv, t.n_embd)), ("attn_output.weight", (t.n_embd, q)),
                          ("ffn_gate.weight", (t.n_ff, t.n_embd)), ("ffn_up.weight", (t.n_ff, t.n_embd)),
                          ("ffn_down.weight", (t.n_embd, t.n_ff))):
            planned.append(PlannedTensor(b + name, np.zeros, shp, "matmul"))
        for name in ("attn_norm.weight", "ffn_norm.weight"):
            planned.append(PlannedTensor(b + name, np.zeros, (t.n_embd,), "dense"))
            exact[b + name] = np.ones(t.n_embd, dtype=np.float32)
    meta = {"general.architecture": "llama", "general.name": "synthetic llama", "general.file_type": 15,
            **t.gguf_metadata("llama"), **_vocab(t.n_vocab, image_token=None)}
    return meta, planned, exact


def write_llama(path: Path, shape: Shape, quant: str = "Q4_K_M", seed: int = 0) -> int:
    """A Llama 3.1-style text model with as many layers as the mllama's text model (all self-attention)."""
    meta, planned, exact = _plan_llama(shape)
    return _write(path, meta, planned, quant, exact, seed)


def _planned_bytes(planned: list[PlannedTensor], exact: dict[str, np.ndarray], types: dict[str, int]) -> int:
    return sum(_nbytes(ggml.F32 if p.name in exact else types[p.name], tuple(reversed(p.shape))) for p in planned)


def llama_bytes(shape: Shape, quant: str = "Q4_K_M") -> int:
    """The tensor bytes write_llama would write, without writing (as mllama_bytes)."""
    _, planned, exact = _plan_llama(shape)
    return _planned_bytes(planned, exact, _types(planned, quant, None))
