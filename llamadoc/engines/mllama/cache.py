"""Persistent K/V buffers: self-attention per sequence, cross-attention (vision) per image slot."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import ggml
from .backend import Runtime
from .ggml import lib
from .loader import MllamaConfig

KEY_BLOCK = 256  # key counts are padded to this: CUDA's fastest flash-attention kernels want it


def pad_keys(n: int) -> int:
    return -(-n // KEY_BLOCK) * KEY_BLOCK


def self_cache_bytes(c: MllamaConfig, n_ctx: int, n_seq: int, kv_type: int) -> int:
    layers = c.text.n_layer - len(c.text.cross_layers)
    return 2 * layers * int(lib.row_size(kv_type, c.text.head_dim * c.text.n_head_kv)) * n_ctx * n_seq


def cross_cache_bytes(c: MllamaConfig, n_slots: int, kv_type: int) -> int:
    per_key = int(lib.row_size(kv_type, c.text.head_dim * c.text.n_head_kv))
    return 2 * len(c.text.cross_layers) * per_key * pad_keys(c.vision.n_tokens) * n_slots


class Buffers:
    """Tensors in one context per device, each device's share in one zero-filled buffer."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._ctx: dict[bool, ggml.Context] = {}
        self._bufs: list[int] = []

    def new(self, on_gpu: bool, ggml_type: int, *ne: int, name: str) -> int:
        on_gpu = on_gpu and self.runtime.gpu is not None
        if on_gpu not in self._ctx:
            self._ctx[on_gpu] = ggml.Context(1024)
        return self._ctx[on_gpu].new(ggml_type, *ne, name=name)

    def allocate(self, what: str) -> None:
        for on_gpu, ctx in self._ctx.items():
            self._bufs.append(self.runtime.alloc_buffer(ctx, on_gpu, what))

    def free(self) -> None:
        for b in self._bufs:
            lib.backend_buffer_free(b)
        self._bufs.clear()
        for ctx in self._ctx.values():
            ctx.free()
        self._ctx.clear()


class SelfCache:
    """K and V of every self-attention layer: [head_dim, kv_heads, n_ctx, n_seq] each, token-major.

    Sequence s owns rows s*n_ctx .. s*n_ctx+n_ctx-1; new tokens are written with ggml_set_rows.
    """

    def __init__(self, runtime: Runtime, c: MllamaConfig, layer_on_gpu: Callable[[int], bool],
                 n_ctx: int, n_seq: int, kv_type: int) -> None:
        t = c.text
        self.n_ctx, self.n_seq, self.type = n_ctx, n_seq, kv_type
        self._bufs = Buffers(runtime)
        self.k: dict[int, int] = {}
        self.v: dict[int, int] = {}
        for i in range(t.n_layer):
            if i in t.cross_layers:
                continue
            for store, name in ((self.k, "k"), (self.v, "v")):
                store[i] = self._bufs.new(layer_on_gpu(i), kv_type, t.head_dim, t.n_head_kv, n_ctx, n_seq,
                                          name=f"cache_{name}{i}")
        self._bufs.allocate(f"KV cache ({n_seq} x {n_ctx} tokens)")

    def free(self) -> None:
        self._bufs.free()


@dataclass
class Slot:
    image: str | None = None  # hash of the image whose K/V the slot holds
    n_keys: int = 0  # valid keys: the image's tiles times tokens per tile
    used: int = 0  # last use, for eviction


@dataclass
class CrossCache:
    """Each cross-attention layer's K and V for a few images: [head_dim, keys, kv_heads, n_slots].

    Computed once per image by the vision graph; decoding only reads them. Keys are padded to
    KEY_BLOCK and the padding (and unused tiles) is masked. The first ``n_cached`` slots keep
    recent images (least recently used goes first); the rest are a batch's working slots.
    Layers whose attention runs as matrix products (``v_transposed``) keep V as [keys, head_dim,
    kv_heads, n_slots] instead: the layout the second product reads.
    """

    runtime: Runtime
    c: MllamaConfig
    layer_on_gpu: Callable[[int], bool]
    n_cached: int
    n_work: int
    kv_type: int
    v_transposed: Callable[[int], bool]
    k: dict[int, int] = field(default_factory=dict)
    v: dict[int, int] = field(default_factory=dict)
    slots: list[Slot] = field(default_factory=list)
    _clock: int = 0

    def __post_init__(self) -> None:
        t = self.c.text
        self.n_keys = pad_keys(self.c.vision.n_tokens)
        self.n_slots = self.n_cached + self.n_work
        self._bufs = Buffers(self.runtime)
        for i in t.cross_layers:
            gpu = self.layer_on_gpu(i)
            self.k[i] = self._bufs.new(gpu, self.kv_type, t.head_dim, self.n_keys, t.n_head_kv, self.n_slots,
                                       name=f"cross_k{i}")
            dims = (self.n_keys, t.head_dim) if self.v_transposed(i) else (t.head_dim, self.n_keys)
            self.v[i] = self._bufs.new(gpu, self.kv_type, *dims, t.n_head_kv, self.n_slots, name=f"cross_v{i}")
        self._bufs.allocate(f"image K/V cache ({self.n_slots} images)")
        self.slots = [Slot() for _ in range(self.n_slots)]

    def touch(self, i: int) -> None:
        self._clock += 1
        self.slots[i].used = self._clock

    def find(self, image: str) -> int | None:
        """The cached slot holding an image, if any."""
        for i in range(self.n_cached):
            if self.slots[i].image == image:
                return i
        return None

    def victim(self) -> int:
        """The least recently used cached slot, emptied for a new image."""
        i = min(range(self.n_cached), key=lambda j: self.slots[j].used)
        self.slots[i].image = None
        return i

    def view(self, ops: ggml.Ops, store: dict[int, int], layer: int, first: int, count: int) -> int:
        """Slots first..first+count-1 of one layer as [head_dim, keys, kv_heads, count]."""
        t = store[layer]
        s = ggml.tensor(t)
        return ops.view_4d(t, s.ne[0], s.ne[1], s.ne[2], count, s.nb[1], s.nb[2], s.nb[3], first * s.nb[3])

    def free(self) -> None:
        self._bufs.free()
