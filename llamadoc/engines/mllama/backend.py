"""ggml devices and the scheduler that runs the engine's graphs on them (GPU first, CPU last)."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from llamadoc.errors import EngineError, ModelError, ResourceError

from . import ggml
from .ggml import lib

SCHED_GRAPH_SIZE = 32768  # nodes + leaves of the largest graph (the vision encoder's)

_KINDS = {ggml.DEV_CPU: "CPU", ggml.DEV_GPU: "GPU", ggml.DEV_IGPU: "IGPU", ggml.DEV_ACCEL: "ACCEL"}
_loaded = False


@dataclass(frozen=True)
class Device:
    ptr: int
    name: str
    description: str
    kind: str  # "CPU", "GPU", "IGPU", "ACCEL"
    memory_free: int
    memory_total: int
    backend: str = ""  # the ggml backend it belongs to: "CPU", "CUDA", "Metal", ...

    @property
    def label(self) -> str:
        return self.name if self.kind == "CPU" else f"{self.name} ({self.description})"


def devices() -> list[Device]:
    """Every device of the ggml backends compiled into (or installed beside) llama-cpp-python."""
    global _loaded
    if not _loaded:
        with ggml.LogCapture():
            lib.backend_load_all()  # loads dynamic backends; a no-op for the wheel's built-in ones
        _loaded = True
    out = []
    for i in range(lib.backend_dev_count()):
        dev = lib.backend_dev_get(i)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        lib.backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        out.append(Device(dev, lib.backend_dev_name(dev).decode(), lib.backend_dev_description(dev).decode(),
                          _KINDS.get(lib.backend_dev_type(dev), "OTHER"), free.value, total.value,
                          lib.backend_reg_name(lib.backend_dev_backend_reg(dev)).decode()))
    return out


def describe_backends() -> list[dict[str, Any]]:
    """ggml's devices for ``llamadoc doctor``: backend, name, description, kind, memory in bytes."""
    return [{"backend": d.backend, "name": d.name, "description": d.description, "kind": d.kind,
             "memory_free": d.memory_free, "memory_total": d.memory_total} for d in devices()]


def pick_gpu(gpu_layers: int) -> Device | None:
    """The first GPU (or integrated GPU) when offload is asked for and one exists."""
    if gpu_layers == 0:
        return None
    for kind in ("GPU", "IGPU"):
        for d in devices():
            if d.kind == kind:
                return d
    return None


def cpu_repack_buffer_type(cpu: Device) -> int | None:
    """The CPU backend's "repack" buffer type, whose weights are re-laid for its fastest kernels."""
    reg = lib.backend_dev_backend_reg(cpu.ptr)
    fn = lib.backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
    if not fn:
        return None
    bufts = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(fn)(cpu.ptr)
    i = 0
    while bufts and bufts[i]:
        if lib.backend_buft_name(bufts[i]) == b"CPU_REPACK":
            return int(bufts[i])
        i += 1
    return None


def repack_supports(cpu: Device, buft: int, ggml_type: int, ne: tuple[int, ...]) -> bool:
    """Whether a weight of this type and shape can live in the repack buffer type (asked the way
    llama.cpp asks: a matrix product whose weight sits in an empty buffer of that type)."""
    if len(ne) != 2:
        return False
    ctx = ggml.Context(3)
    dummy = lib.backend_buft_alloc_buffer(buft, 0)
    try:
        w = ctx.new(ggml_type, *ne)
        op = ctx.ops.mul_mat(w, ctx.new(ggml.F32, ne[0], 1))
        ggml.tensor(w).buffer = dummy
        ok = bool(lib.backend_dev_supports_op(cpu.ptr, op))
        ggml.tensor(w).buffer = None
        return ok
    finally:
        lib.backend_buffer_free(dummy)
        ctx.free()


def flash_attention_supported(dev: Device, head_dim: int, n_head: int, n_head_kv: int, kv_type: int) -> bool:
    """Whether a device runs flash attention for these head sizes and K/V type (else the
    scheduler would move every attention to the CPU: better to use the plain form there)."""
    ctx = ggml.Context(5)
    try:
        q = ctx.new(ggml.F32, head_dim, 1, n_head, 1)
        k = ctx.new(kv_type, head_dim, 256, n_head_kv, 1)
        v = ctx.new(kv_type, head_dim, 256, n_head_kv, 1)
        mask = ctx.new(ggml.F16, 256, 1, 1, 1)
        op = ctx.ops.flash_attn_ext(q, k, v, mask, head_dim ** -0.5, 0.0, 0.0)
        return bool(lib.backend_dev_supports_op(dev.ptr, op))
    finally:
        ctx.free()


def cpu_device() -> Device:
    for d in devices():
        if d.kind == "CPU":
            return d
    raise EngineError("ggml has no CPU backend (broken llama-cpp-python install)")


_SRC_OFFSET = ggml.TensorStruct.src.offset  # ggml_tensor.src: GGML_MAX_SRC pointers
_SRC_BYTES = ggml.TensorStruct.src.size


class Runtime:
    """Backends plus one ggml scheduler; runs graphs, keeping the last graph's allocation for reuse.

    The scheduler places each operation on the device that holds its weights and copies the
    activations between devices; graph inputs live on the CPU and are copied where needed.
    """

    def __init__(self, gpu: Device | None, threads: int) -> None:
        self.cpu = cpu_device()
        self.gpu = gpu
        self.backends: list[int] = []
        with ggml.LogCapture() as log:
            if gpu is not None:
                b = lib.backend_dev_init(gpu.ptr, None)
                if not b:
                    raise EngineError(f"cannot start the {gpu.label} backend ({log.last or 'init failed'})")
                self.backends.append(b)
            cpu = lib.backend_dev_init(self.cpu.ptr, None)
        if not cpu:
            raise EngineError("cannot start the CPU backend")
        lib.backend_cpu_set_n_threads(cpu, max(1, threads))
        self.backends.append(cpu)
        self.cpu_backend = cpu
        arr = (ctypes.c_void_p * len(self.backends))(*self.backends)
        # op_offload off: an op whose weights sit in host memory runs where they are. With it
        # on, ggml moved the token-embedding lookup onto CUDA reading host pages (an illegal
        # access on an H100); and the weights that matter are on the GPU anyway.
        self.sched = lib.backend_sched_new(arr, None, len(self.backends), SCHED_GRAPH_SIZE, False, False)
        self._allocated: int | None = None
        self._sources: dict[int, list[tuple[int, bytes]]] = {}  # graph -> its nodes' sources, unsplit

    @property
    def device_label(self) -> str:
        return self.gpu.label if self.gpu else "CPU"

    def buffer_type(self, on_gpu: bool) -> int:
        dev = self.gpu if (on_gpu and self.gpu) else self.cpu
        return int(lib.backend_dev_buffer_type(dev.ptr))

    def _pristine(self, graph: int) -> None:
        """Undo what splitting did to a graph. ggml's scheduler points each node that
        crosses devices at a copy of its input, made in a context it frees at the next
        split: a graph split twice (reserve, then alloc; or allocated again after another
        graph ran) would read freed tensors: garbage token ids on an H100. So each node's
        sources are saved before the first split and put back before every later one."""
        saved = self._sources.get(graph)
        if saved is None:
            nodes = [lib.graph_node(graph, i) for i in range(lib.graph_n_nodes(graph))]
            saved = [(n, ctypes.string_at(n + _SRC_OFFSET, _SRC_BYTES)) for n in nodes]
            self._sources[graph] = saved
        for node, src in saved:
            ctypes.memmove(node + _SRC_OFFSET, src, _SRC_BYTES)

    def compute(self, graph: int, inputs: dict[int, np.ndarray]) -> None:
        """Allocate the graph if it is not the one allocated last, set its inputs, run it."""
        if self._allocated != graph:
            lib.backend_sched_reset(self.sched)
            self._allocated = None
            with ggml.LogCapture() as log:
                # Reserve first: the allocator would otherwise reuse the previous graph's plan
                # for any graph with as many nodes, even when their order differs.
                self._pristine(graph)
                ok = lib.backend_sched_reserve(self.sched, graph)
                self._pristine(graph)
                ok = ok and lib.backend_sched_alloc_graph(self.sched, graph)
            if not ok:
                raise ResourceError(f"not enough memory for the computation on {self.device_label} "
                                  f"({log.last or 'allocation failed'})")
            self._allocated = graph
        for t, value in inputs.items():
            ggml.set_data(t, value)
        status = lib.backend_sched_graph_compute(self.sched, graph)
        if status != 0:
            self._allocated = None
            raise EngineError(f"ggml computation failed on {self.device_label} (status {status})")

    def forget(self, graph: int) -> None:
        """Called before a graph's context is freed, so a new graph at the same address re-allocates."""
        self._sources.pop(graph, None)
        if self._allocated == graph:
            lib.backend_sched_reset(self.sched)
            self._allocated = None

    def compute_buffer_bytes(self) -> dict[str, int]:
        out = {}
        for b in self.backends:
            out[lib.backend_name(b).decode()] = lib.backend_sched_get_buffer_size(self.sched, b)
        return out

    def alloc_buffer(self, ctx: ggml.Context, on_gpu: bool, what: str) -> int:
        """Allocate all tensors of a context on one device, zero-filled; ModelError when it does not fit."""
        buft = self.buffer_type(on_gpu)
        with ggml.LogCapture() as log:
            buf = lib.backend_alloc_ctx_tensors_from_buft(ctx.ptr, buft)
        if not buf:
            where = self.gpu.label if (on_gpu and self.gpu) else "CPU"
            raise ModelError(f"not enough memory on {where} for the {what} ({log.last or 'allocation failed'})")
        lib.backend_buffer_clear(buf, 0)
        return int(buf)

    def free(self) -> None:
        if self.sched:
            lib.backend_sched_free(self.sched)
            self.sched = None
        for b in self.backends:
            lib.backend_free(b)
        self.backends = []
