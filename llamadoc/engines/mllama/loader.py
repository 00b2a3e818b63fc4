"""Read an mllama GGUF (Ollama's one-file layout): hyperparameters, tensor checks, weights on backends.

Every tensor's presence, type and shape is checked in Python before ggml sees it, so a bad
file ends in a one-line ModelError naming the file and the tensor, never in a ggml abort.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llamadoc.errors import ModelError

from . import ggml
from .backend import Runtime
from .ggml import lib
from .gguf_io import GGUFFile, TensorInfo
from .graph import Graph

ARCH = "mllama"
BUFFER_USAGE_WEIGHTS = 1  # enum ggml_backend_buffer_usage


def aspect_ratios(max_tiles: int) -> list[tuple[int, int]]:
    """Tile grids (rows, columns) in the reference's order; aspect-ratio id = 1 + index."""
    return [(h, w) for h in range(1, max_tiles + 1) for w in range(1, max_tiles + 1) if h * w <= max_tiles]


@dataclass(frozen=True)
class VisionConfig:
    n_layer: int
    n_global: int
    intermediate: tuple[int, ...]
    n_embd: int
    n_ff: int
    n_head: int
    eps: float
    image_size: int
    patch_size: int
    max_tiles: int
    n_channels: int

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def n_pos(self) -> int:  # patches + the class token
        return self.n_patches + 1

    @property
    def n_pos_padded(self) -> int:  # the reference pads each tile to a multiple of 8 tokens
        return -(-self.n_pos // 8) * 8

    @property
    def n_ar(self) -> int:  # rows of the aspect-ratio embeddings: the ids plus 0 for "none"
        return len(aspect_ratios(self.max_tiles)) + 1

    @property
    def n_out(self) -> int:  # projector input: the final state and each kept intermediate
        return self.n_embd * (1 + len(self.intermediate))

    @property
    def n_tokens(self) -> int:  # cross-attention keys per image
        return self.max_tiles * self.n_pos


@dataclass(frozen=True)
class TextConfig:
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rope_base: float
    eps: float
    n_vocab: int  # rows of the output projection
    n_ctx_train: int
    cross_layers: tuple[int, ...]


    def gguf_metadata(self, arch: str) -> dict[str, Any]:
        """The text model's keys as llama.cpp spells them under ``arch`` (read back by from_gguf)."""
        return {
            f"{arch}.block_count": self.n_layer, f"{arch}.context_length": self.n_ctx_train,
            f"{arch}.embedding_length": self.n_embd, f"{arch}.feed_forward_length": self.n_ff,
            f"{arch}.attention.head_count": self.n_head, f"{arch}.attention.head_count_kv": self.n_head_kv,
            f"{arch}.rope.freq_base": self.rope_base, f"{arch}.rope.dimension_count": self.head_dim,
            f"{arch}.attention.layer_norm_rms_epsilon": self.eps, f"{arch}.vocab_size": self.n_vocab,
        }


@dataclass(frozen=True)
class MllamaConfig:
    text: TextConfig
    vision: VisionConfig

    def gguf_metadata(self) -> dict[str, Any]:
        """Ollama's mllama keys for this configuration: what from_gguf reads back."""
        a, v = ARCH, self.vision
        return {
            "general.architecture": ARCH,
            **self.text.gguf_metadata(ARCH),
            f"{a}.attention.cross_attention_layers": list(self.text.cross_layers),
            f"{a}.vision.block_count": v.n_layer, f"{a}.vision.global.block_count": v.n_global,
            f"{a}.vision.intermediate_layers_indices": list(v.intermediate),
            f"{a}.vision.embedding_length": v.n_embd, f"{a}.vision.feed_forward_length": v.n_ff,
            f"{a}.vision.attention.head_count": v.n_head, f"{a}.vision.attention.layer_norm_epsilon": v.eps,
            f"{a}.vision.image_size": v.image_size, f"{a}.vision.patch_size": v.patch_size,
            f"{a}.vision.max_num_tiles": v.max_tiles, f"{a}.vision.num_channels": v.n_channels,
        }

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> MllamaConfig:
        arch = f.get("general.architecture")
        if arch != ARCH:
            what = f"architecture {arch!r}" if arch else "no architecture key"
            raise ModelError(f"{f.path}: not a Llama 3.2 Vision (mllama) model ({what})")
        if f.get("mllama.vision.block_count") is None:
            raise ModelError(f"{f.path}: a text-only mllama file without the vision tower "
                             "(older Ollama model + projector pairs are not supported)")

        def k(key: str) -> object:
            return f.require(f"{ARCH}.{key}")

        def num(key: str) -> int:
            value = k(key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelError(f"{f.path}: metadata key {ARCH}.{key} is {value!r}, not a positive integer")
            return value

        def ints(key: str) -> tuple[int, ...]:
            value = k(key)
            if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
                raise ModelError(f"{f.path}: metadata key {ARCH}.{key} is not a list of integers")
            return tuple(int(v) for v in value)

        n_embd, n_head = num("embedding_length"), num("attention.head_count")
        head_dim = f.get(f"{ARCH}.rope.dimension_count") or n_embd // n_head
        out = f.tensors.get("output.weight")
        text = TextConfig(
            n_layer=num("block_count"), n_embd=n_embd, n_ff=num("feed_forward_length"), n_head=n_head,
            n_head_kv=f.get(f"{ARCH}.attention.head_count_kv") or n_head, head_dim=int(head_dim),
            rope_base=float(f.get(f"{ARCH}.rope.freq_base", 10000.0)),
            eps=float(k("attention.layer_norm_rms_epsilon")),  # type: ignore[arg-type]
            n_vocab=out.ne[1] if out is not None and len(out.ne) == 2 else int(f.get(f"{ARCH}.vocab_size", 0)),
            n_ctx_train=int(f.get(f"{ARCH}.context_length", 131072)),
            cross_layers=ints("attention.cross_attention_layers"),
        )
        vision = VisionConfig(
            n_layer=num("vision.block_count"), n_global=num("vision.global.block_count"),
            intermediate=ints("vision.intermediate_layers_indices"), n_embd=num("vision.embedding_length"),
            n_ff=num("vision.feed_forward_length"), n_head=num("vision.attention.head_count"),
            eps=float(f.get(f"{ARCH}.vision.attention.layer_norm_epsilon", 1e-5)),
            image_size=num("vision.image_size"), patch_size=num("vision.patch_size"),
            max_tiles=num("vision.max_num_tiles"), n_channels=int(f.get(f"{ARCH}.vision.num_channels", 3)),
        )
        _check_config(f.path, text, vision)
        return cls(text, vision)


def _check_config(path: Path, t: TextConfig, v: VisionConfig) -> None:
    problems = []
    if t.n_head % t.n_head_kv or t.head_dim * t.n_head != t.n_embd or t.head_dim % 2:
        problems.append(f"{t.n_head} heads, {t.n_head_kv} KV heads and head size {t.head_dim} "
                        f"do not fit width {t.n_embd}")
    if any(not 0 <= i < t.n_layer for i in t.cross_layers) or len(set(t.cross_layers)) != len(t.cross_layers):
        problems.append(f"cross-attention layers {list(t.cross_layers)} outside 0..{t.n_layer - 1}")
    if v.n_embd % v.n_head:
        problems.append(f"vision width {v.n_embd} is not a multiple of {v.n_head} heads")
    if v.image_size % v.patch_size:
        problems.append(f"image size {v.image_size} is not a multiple of patch size {v.patch_size}")
    if any(not 0 <= i < v.n_layer for i in v.intermediate):
        problems.append(f"intermediate layers {list(v.intermediate)} outside 0..{v.n_layer - 1}")
    if t.n_vocab <= 0:
        problems.append("the vocabulary size is unknown")
    if problems:
        raise ModelError(f"{path}: inconsistent hyperparameters: {problems[0]}")


# What each tensor is used for decides which types it may have.
MATMUL = "matmul"  # second operand of ggml_mul_mat: any type ggml multiplies
ROWS = "rows"  # a ggml_get_rows table: any type
CONV = "conv"  # the patch kernel, multiplied with F32 im2col columns: F32 or F16
DENSE = "dense"  # element-wise operand: held in F32 (converted at load when stored narrower)
SCALAR = "scalar"  # a gate: read once into Python


@dataclass(frozen=True)
class Expected:
    ne: tuple[int, ...]
    use: str
    group: str  # "embd", "vision", "text.N", "output"


def expected_tensors(c: MllamaConfig) -> dict[str, Expected]:
    """Every tensor the engine reads, with its shape in ggml order."""
    t, v = c.text, c.vision
    q, kv = t.n_head * t.head_dim, t.n_head_kv * t.head_dim
    out: dict[str, Expected] = {
        "output_norm.weight": Expected((t.n_embd,), DENSE, "output"),
        "output.weight": Expected((t.n_embd, t.n_vocab), MATMUL, "output"),
    }
    for i in range(t.n_layer):
        g, b = f"text.{i}", f"blk.{i}."
        out[b + "attn_norm.weight"] = Expected((t.n_embd,), DENSE, g)
        out[b + "ffn_norm.weight"] = Expected((t.n_embd,), DENSE, g)
        out[b + "ffn_gate.weight"] = Expected((t.n_embd, t.n_ff), MATMUL, g)
        out[b + "ffn_up.weight"] = Expected((t.n_embd, t.n_ff), MATMUL, g)
        out[b + "ffn_down.weight"] = Expected((t.n_ff, t.n_embd), MATMUL, g)
        if i in t.cross_layers:
            out[b + "cross_attn_q_proj.weight"] = Expected((t.n_embd, q), MATMUL, g)
            out[b + "cross_attn_k_proj.weight"] = Expected((t.n_embd, kv), MATMUL, g)
            out[b + "cross_attn_v_proj.weight"] = Expected((t.n_embd, kv), MATMUL, g)
            out[b + "cross_attn_o_proj.weight"] = Expected((q, t.n_embd), MATMUL, g)
            out[b + "cross_attn_q_norm.weight"] = Expected((t.head_dim,), DENSE, g)
            out[b + "cross_attn_k_norm.weight"] = Expected((t.head_dim,), DENSE, g)
            out[b + "cross_attn_attn_gate"] = Expected((1,), SCALAR, g)
            out[b + "cross_attn_mlp_gate"] = Expected((1,), SCALAR, g)
        else:
            out[b + "attn_q.weight"] = Expected((t.n_embd, q), MATMUL, g)
            out[b + "attn_k.weight"] = Expected((t.n_embd, kv), MATMUL, g)
            out[b + "attn_v.weight"] = Expected((t.n_embd, kv), MATMUL, g)
            out[b + "attn_output.weight"] = Expected((q, t.n_embd), MATMUL, g)
    e, n_ar = v.n_embd, v.n_ar
    out.update({
        "v.patch_embd.weight": Expected((v.patch_size, v.patch_size, v.n_channels, e), CONV, "vision"),
        "v.class_embd": Expected((e,), DENSE, "vision"),
        "v.position_embd.weight": Expected((e, v.n_pos), DENSE, "vision"),
        "v.position_embd.gate": Expected((1,), SCALAR, "vision"),
        "v.tile_position_embd.weight": Expected((v.max_tiles * v.n_pos * e, n_ar), ROWS, "vision"),
        "v.tile_position_embd.gate": Expected((1,), SCALAR, "vision"),
        "v.pre_tile_position_embd.weight": Expected((v.max_tiles * e, n_ar), ROWS, "vision"),
        "v.pre_tile_position_embd.gate": Expected((1,), SCALAR, "vision"),
        "v.post_tile_position_embd.weight": Expected((v.max_tiles * e, n_ar), ROWS, "vision"),
        "v.post_tile_position_embd.gate": Expected((1,), SCALAR, "vision"),
        "v.pre_ln.weight": Expected((e,), DENSE, "vision"),
        "v.pre_ln.bias": Expected((e,), DENSE, "vision"),
        "v.post_ln.weight": Expected((e,), DENSE, "vision"),
        "v.post_ln.bias": Expected((e,), DENSE, "vision"),
        "mm.0.weight": Expected((v.n_out, t.n_embd), MATMUL, "vision"),
        "mm.0.bias": Expected((t.n_embd,), DENSE, "vision"),
    })
    blocks = [f"v.blk.{i}." for i in range(v.n_layer)] + [f"v.global.blk.{i}." for i in range(v.n_global)]
    for b in blocks:
        for norm in ("attn_norm", "ffn_norm"):
            out[f"{b}{norm}.weight"] = Expected((e,), DENSE, "vision")
            out[f"{b}{norm}.bias"] = Expected((e,), DENSE, "vision")
        for proj in ("attn_q", "attn_k", "attn_v", "attn_output"):
            out[f"{b}{proj}.weight"] = Expected((e, e), MATMUL, "vision")
        out[f"{b}ffn_up.weight"] = Expected((e, v.n_ff), MATMUL, "vision")
        out[f"{b}ffn_up.bias"] = Expected((v.n_ff,), DENSE, "vision")
        out[f"{b}ffn_down.weight"] = Expected((v.n_ff, e), MATMUL, "vision")
        out[f"{b}ffn_down.bias"] = Expected((e,), DENSE, "vision")
        if b.startswith("v.global."):
            out[f"{b}attn_gate"] = Expected((1,), SCALAR, "vision")
            out[f"{b}ffn_gate"] = Expected((1,), SCALAR, "vision")
    return out


def placement(c: MllamaConfig, n_gpu_layers: int, gpu: bool) -> dict[str, bool]:
    """Which tensor groups go on the GPU, llama.cpp-style: the last N text layers.

    -1: everything; N > 0: the vision tower and the last N text layers (N above the layer
    count adds the output layer); 0 or no GPU: nothing. Token embeddings stay on the CPU,
    where a row lookup is cheap (and where llama.cpp keeps them: on an H100 a lookup from
    a GPU graph read garbage token ids).
    """
    n = c.text.n_layer
    n_text = 0 if not gpu else (n if n_gpu_layers < 0 else min(n_gpu_layers, n))
    return {"embd": False, "vision": gpu and n_gpu_layers != 0,
            "output": gpu and (n_gpu_layers < 0 or n_gpu_layers > n),
            **{f"text.{i}": i >= n - n_text for i in range(n)}}


_FLOAT_TYPES = {ggml.F32: np.float32, ggml.F16: np.float16}


def check_tensors(f: GGUFFile, c: MllamaConfig) -> dict[str, Expected]:
    """Check presence, shape and type of every tensor the engine will read; the first problem raises."""
    expected = expected_tensors(c)
    embd = f.tensors.get("token_embd.weight")
    if embd is None:
        raise ModelError(f"{f.path}: tensor token_embd.weight is missing")
    if len(embd.ne) != 2 or embd.ne[0] != c.text.n_embd or embd.ne[1] <= c.text.n_vocab:
        raise ModelError(f"{f.path}: tensor token_embd.weight has shape {list(embd.ne)}, expected "
                         f"[{c.text.n_embd}, more than {c.text.n_vocab}] (the image token has its own row)")
    rope = f.tensors.get("rope_freqs.weight")
    if rope is not None and rope.ne != (c.text.head_dim // 2,):
        raise ModelError(f"{f.path}: tensor rope_freqs.weight has shape {list(rope.ne)}, "
                         f"expected [{c.text.head_dim // 2}]")
    for name, exp in expected.items():
        info = f.tensors.get(name)
        if info is None:
            raise ModelError(f"{f.path}: tensor {name} is missing")
        if info.ne != exp.ne:
            raise ModelError(f"{f.path}: tensor {name} has shape {list(info.ne)}, expected {list(exp.ne)}")
        if exp.use in (DENSE, SCALAR, CONV) and info.type not in _FLOAT_TYPES:
            raise ModelError(f"{f.path}: tensor {name} is stored as {ggml.type_name(info.type)}; "
                             "it must be F32 or F16")
    for name in ("token_embd.weight", "rope_freqs.weight"):
        if name in f.tensors:
            expected[name] = Expected(f.tensors[name].ne, ROWS if name == "token_embd.weight" else DENSE,
                                      "embd" if name == "token_embd.weight" else "output")
    return expected


def read_floats(data: np.ndarray, info: TensorInfo) -> np.ndarray:
    """A float tensor's values as float32 (numpy order), read from the mapped file."""
    raw = data[info.offset: info.offset + info.nbytes]
    return raw.view(_FLOAT_TYPES[info.type]).astype(np.float32).reshape(tuple(reversed(info.ne)))


@dataclass
class Weights:
    """Model tensors placed on backend buffers; ``t[name]`` is the ggml tensor, ``gates[name]`` a float."""

    t: dict[str, int] = field(default_factory=dict)
    gates: dict[str, float] = field(default_factory=dict)
    # File-mapped twins of repacked matrices, for graphs with many rows (prefill): see load_weights.
    plain: dict[str, int] = field(default_factory=dict)
    _contexts: list[ggml.Context] = field(default_factory=list)
    _buffers: list[int] = field(default_factory=list)
    _mapped: np.ndarray | None = None

    def free(self) -> None:
        for buf in self._buffers:
            lib.backend_buffer_free(buf)
        self._buffers.clear()
        for ctx in self._contexts:
            ctx.free()
        self._contexts.clear()
        self._mapped = None


def interleave_halves(w: np.ndarray) -> np.ndarray:
    """The row order of ggml's RoPE layout applied to a per-head vector: [a0 b0 a1 b1 ...] from [a..., b...]."""
    return w.reshape(2, -1).T.reshape(w.shape)


def cross_norm_fixes(c: MllamaConfig) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Ollama's converter permutes the cross-attention q/k projections' rows per head (its rule for
    RoPE'd self-attention matched their names too) but not the per-head q/k RMSNorm weights, so
    the norms multiply the wrong features and the scores change. Permuting the norm weights the
    same way restores the reference exactly (checked against it in tests/test_mllama_reference.py).
    """
    return {f"blk.{i}.cross_attn_{w}_norm.weight": interleave_halves for i in c.text.cross_layers for w in "qk"}


def load_weights(f: GGUFFile, expected: dict[str, Expected], where: dict[str, int],
                 cpu_buft: int, fixes: dict[str, Callable[[np.ndarray], np.ndarray]],
                 repack: tuple[int, Callable[[int, tuple[int, ...]], bool]] | None = None,
                 keep_plain: Collection[str] = (), twin_types: Collection[int] = ()) -> Weights:
    """Create every tensor on its device: CPU tensors map the file, others are copied.

    ``where`` maps a group ("vision", "text.3", ...) to its buffer type.
    Tensors whose file type the engine uses as is are bound zero-copy to a read-only map of
    the file on the CPU; dense tensors stored as F16, and those ``fixes`` transforms, are
    read into F32 and copied. ``repack`` (buffer type, supports(type, ne)) moves the CPU's
    matrix weights it supports into the CPU's repack buffers, as llama.cpp does, except those in
    ``keep_plain`` (to be cast: ggml copies no repacked tensor).

    A repacked matrix of a type in ``twin_types`` also gets a twin in ``plain``: the same tensor
    bound to the file's pages, which the repacking has read already (nothing is allocated; a
    prompt batch reads those pages again, which model.twin_types weighs against memory). The
    repacked layout is faster for a few rows (decode); for a prompt batch ggml's tiled K-quant
    GEMM, which skips repacked weights, is faster on x86 (1.7x for Q4_K at 512 rows,
    benchmarks/README.md).
    """
    w = Weights()
    mapped = np.memmap(f.path, dtype=np.uint8, mode="r")
    w._mapped = mapped
    base = mapped.ctypes.data
    # (buft, direct-map?) -> names
    plan: dict[tuple[int, bool], list[str]] = {}
    twins: list[str] = []
    for name, exp in expected.items():
        info = f.tensors[name]
        if exp.use == SCALAR:
            w.gates[name] = float(read_floats(mapped, info).reshape(-1)[0])
            continue
        buft = where[exp.group]
        widen = exp.use == DENSE and (info.type != ggml.F32 or name in fixes)
        if (repack is not None and buft == cpu_buft and exp.use == MATMUL and name not in keep_plain
                and repack[1](info.type, info.ne)):
            buft = repack[0]
            if info.type in twin_types and info.offset % 32 == 0:
                twins.append(name)
        direct = buft == cpu_buft and not widen and info.offset % 32 == 0
        plan.setdefault((buft, direct), []).append(name)
    try:
        for (buft, direct), names in plan.items():
            ctx = ggml.Context(len(names))
            w._contexts.append(ctx)
            for name in names:
                info, exp = f.tensors[name], expected[name]
                ggml_type = ggml.F32 if exp.use == DENSE else info.type
                w.t[name] = ctx.new(ggml_type, *info.ne, name=name)
            if direct:
                # Zero-copy: the file's pages back the tensors; nothing is read until used.
                buf = lib.backend_cpu_buffer_from_ptr(base, mapped.nbytes)
                if not buf:
                    raise ModelError(f"{f.path}: cannot map the file for the CPU backend")
                w._buffers.append(buf)
                for name in names:
                    if lib.backend_tensor_alloc(buf, w.t[name], base + f.tensors[name].offset) != 0:
                        raise ModelError(f"{f.path}: cannot place tensor {name}")
            else:
                with ggml.LogCapture() as log:
                    buf = lib.backend_alloc_ctx_tensors_from_buft(ctx.ptr, buft)
                if not buf:
                    raise ModelError(f"{f.path}: not enough memory for the weights on "
                                     f"{lib.backend_buft_name(buft).decode()} ({log.last or 'allocation failed'})")
                w._buffers.append(buf)
                with ggml.LogCapture():  # the repack buffer logs every tensor it re-lays
                    for name in names:
                        info = f.tensors[name]
                        if expected[name].use == DENSE and (info.type != ggml.F32 or name in fixes):
                            values = read_floats(mapped, info)
                            ggml.set_data(w.t[name], fixes[name](values) if name in fixes else values)
                        else:
                            lib.backend_tensor_set(w.t[name], base + info.offset, 0, info.nbytes)
            lib.backend_buffer_set_usage(buf, BUFFER_USAGE_WEIGHTS)
        if twins:
            ctx = ggml.Context(len(twins))
            w._contexts.append(ctx)
            buf = lib.backend_cpu_buffer_from_ptr(base, mapped.nbytes)
            if not buf:
                raise ModelError(f"{f.path}: cannot map the file for the CPU backend")
            w._buffers.append(buf)
            for name in twins:
                info = f.tensors[name]
                w.plain[name] = ctx.new(info.type, *info.ne, name=name)
                if lib.backend_tensor_alloc(buf, w.plain[name], base + info.offset) != 0:
                    raise ModelError(f"{f.path}: cannot place tensor {name}")
            lib.backend_buffer_set_usage(buf, BUFFER_USAGE_WEIGHTS)
    except BaseException:
        w.free()
        raise
    return w



def image_only_weights(c: MllamaConfig, expected: dict[str, Expected], on_gpu: dict[str, bool]) -> list[str]:
    """The CPU-held matrices that only encoding an image multiplies, always with thousands of
    tokens: the vision tower's, the projector's, and the cross-attention layers' K/V projections."""
    cross_kv = {f"blk.{i}.cross_attn_{p}_proj.weight" for i in c.text.cross_layers for p in "kv"}
    return [n for n, e in expected.items()
            if e.use == MATMUL and not on_gpu[e.group] and (e.group == "vision" or n in cross_kv)]


def _derive(runtime: Runtime, w: Weights, on_gpu: bool, specs: list[tuple[str, int, tuple[int, ...]]],
            fill: Callable[[ggml.Ops, dict[str, int]], list[int]]) -> None:
    """New weights (name, type, ne) in one buffer on one device, filled by the copies ``fill``
    builds (ggml runs them, on every thread or on the GPU). The tensors they come from stay
    where they were, unused from now on."""
    ctx = ggml.Context(len(specs))
    w._contexts.append(ctx)
    new = {n: ctx.new(ggml_type, *ne, name=n) for n, ggml_type, ne in specs}
    with ggml.LogCapture() as log:
        buf = lib.backend_alloc_ctx_tensors_from_buft(ctx.ptr, runtime.buffer_type(on_gpu))
    if not buf:
        raise ModelError(f"not enough memory for the converted weights ({log.last or 'allocation failed'})")
    w._buffers.append(buf)
    lib.backend_buffer_set_usage(buf, BUFFER_USAGE_WEIGHTS)
    g = Graph(runtime)
    try:
        for copy in fill(g.ops, new):
            g.expand(copy)
        g.run({})
    finally:
        g.free()
    w.t.update(new)


def _readable(ops: ggml.Ops, t: int) -> int:
    """A tensor ggml can copy element by element: quantised types dequantise to F32 (the only
    type ggml dequantises to)."""
    return t if ggml.tensor(t).type in (ggml.F32, ggml.F16, ggml.BF16) else ops.cast(t, ggml.F32)


def cast_weights(runtime: Runtime, w: Weights, names: list[str], ggml_type: int) -> None:
    """Hold these CPU weights as ``ggml_type`` from now on."""
    if names:
        _derive(runtime, w, False, [(n, ggml_type, ggml.shape(w.t[n])[:2]) for n in names],
                lambda ops, new: [ops.cpy(_readable(ops, w.t[n]), new[n]) for n in names])


def split_projector(runtime: Runtime, w: Weights, c: MllamaConfig, ggml_type: int, on_gpu: bool) -> None:
    """The projector's columns as one matrix per vision state it reads: ``mm.0.weight.0`` for the
    final state, ``mm.0.weight.{1+k}`` for kept state k (whose features the reference interleaves,
    feature e + d*K + k). The encoder can then multiply each kept state as soon as it exists
    instead of keeping them all (5 x 33 MB for a page) and concatenating them (197 MB)."""
    e, k_n, n_text = c.vision.n_embd, len(c.vision.intermediate), c.text.n_embd
    names = [f"mm.0.weight.{j}" for j in range(k_n + 1)]

    def fill(ops: ggml.Ops, new: dict[str, int]) -> list[int]:
        src = _readable(ops, w.t["mm.0.weight"])
        s = ggml.tensor(src)
        ts = s.nb[0]
        copies = [ops.cpy(ops.view_2d(src, e, n_text, s.nb[1], 0), new[names[0]])]
        for k in range(k_n):  # column e + d*K + k for d = 0..e-1: a strided view, copied in order
            cols = ops.view_3d(src, 1, e, n_text, k_n * ts, s.nb[1], (e + k) * ts)
            copies.append(ops.cpy(ops.permute(cols, 1, 0, 2, 3), new[names[1 + k]]))
        return copies

    _derive(runtime, w, on_gpu, [(n, ggml_type, (e, n_text)) for n in names], fill)
