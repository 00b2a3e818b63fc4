"""ctypes bindings to the ggml, gguf and ggml-backend symbols that llama-cpp-python's libraries export.

Only what the mllama engine uses. The struct layouts are those of the pinned llama-cpp-python
build and are checked when this module is imported, so a mismatched install fails with one
clear message instead of a crash.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char,
    c_char_p,
    c_float,
    c_int,
    c_int32,
    c_int64,
    c_size_t,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
)
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from llamadoc.config import echo_ggml_logs
from llamadoc.engines import llamacpp  # noqa: F401  (its import sets the threads' spin count)
from llamadoc.errors import EngineError
from llamadoc.interrupt import called_from_c

LLAMA_CPP_VERSION = "0.3.36"
_FIX = f"install llama-cpp-python=={LLAMA_CPP_VERSION}, the build this engine's ggml bindings match"

# An abort inside ggml would print a gdb backtrace attempt; a plain message is enough.
os.environ.setdefault("GGML_NO_BACKTRACE", "1")
# ggml's CPU threads sleep soon when they wait: llamacpp sets that before any ggml library loads.

# ggml.h constants of the pinned version.
GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_OP_PARAMS = 64
GGML_MAX_NAME = 64

# enum ggml_type (only the types this engine reads or writes)
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 0, 1, 2, 3, 6, 7, 8
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = 10, 11, 12, 13, 14
I32, I64, BF16 = 26, 27, 30

# enum ggml_prec
PREC_F32 = 10

# enum ggml_backend_dev_type
DEV_CPU, DEV_GPU, DEV_IGPU, DEV_ACCEL = 0, 1, 2, 3

# enum ggml_rope_type: NORM rotates neighbouring pairs (the layout llama.cpp's converters produce)
ROPE_NORM = 0

# enum gguf_type
GGUF_U8, GGUF_I8, GGUF_U16, GGUF_I16, GGUF_U32, GGUF_I32, GGUF_F32, GGUF_BOOL = range(8)
GGUF_STR, GGUF_ARR, GGUF_U64, GGUF_I64, GGUF_F64 = 8, 9, 10, 11, 12

NP_DTYPE = {F32: np.float32, F16: np.float16, I32: np.int32, I64: np.int64}


class TensorStruct(Structure):
    """The whole ``struct ggml_tensor`` of the pinned ggml.h (read for type, shape, strides, data)."""

    _fields_ = [
        ("type", c_int),
        ("buffer", c_void_p),
        ("ne", c_int64 * GGML_MAX_DIMS),
        ("nb", c_size_t * GGML_MAX_DIMS),
        ("op", c_int),
        ("op_params", c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", c_int32),
        ("src", c_void_p * GGML_MAX_SRC),
        ("view_src", c_void_p),
        ("view_offs", c_size_t),
        ("data", c_void_p),
        ("name", c_char * GGML_MAX_NAME),
        ("extra", c_void_p),
        ("padding", c_char * 8),
    ]


# Offsets measured on the pinned build; checked below so a different layout is caught at import.
_TENSOR_OFFSETS = {"type": 0, "buffer": 8, "ne": 16, "nb": 48, "op": 80, "op_params": 84,
                   "flags": 148, "src": 152, "view_src": 232, "view_offs": 240, "data": 248,
                   "name": 256, "extra": 320}
_TENSOR_SIZE = 336


class InitParams(Structure):
    _fields_ = [("mem_size", c_size_t), ("mem_buffer", c_void_p), ("no_alloc", c_bool)]


class GGUFInitParams(Structure):
    _fields_ = [("no_alloc", c_bool), ("ctx", POINTER(c_void_p))]


LogCallback = CFUNCTYPE(None, c_int, c_char_p, c_void_p)

P, INT, I64_, SZ, F, B, S = c_void_p, c_int, c_int64, c_size_t, c_float, c_bool, c_char_p

# (library, name, restype, argtypes). c_void_p everywhere a pointer goes: the cheapest ctypes call.
_SIGNATURES: list[tuple[str, str, Any, list[Any]]] = [
    # context, tensors, graphs
    ("base", "ggml_init", P, [InitParams]),
    ("base", "ggml_free", None, [P]),
    ("base", "ggml_tensor_overhead", SZ, []),
    ("base", "ggml_graph_overhead_custom", SZ, [SZ, B]),
    ("base", "ggml_new_tensor_1d", P, [P, INT, I64_]),
    ("base", "ggml_new_tensor_2d", P, [P, INT, I64_, I64_]),
    ("base", "ggml_new_tensor_3d", P, [P, INT, I64_, I64_, I64_]),
    ("base", "ggml_new_tensor_4d", P, [P, INT, I64_, I64_, I64_, I64_]),
    ("base", "ggml_set_name", P, [P, S]),
    ("base", "ggml_set_input", None, [P]),
    ("base", "ggml_set_output", None, [P]),
    ("base", "ggml_nbytes", SZ, [P]),
    ("base", "ggml_nelements", I64_, [P]),
    ("base", "ggml_row_size", SZ, [INT, I64_]),
    ("base", "ggml_blck_size", I64_, [INT]),
    ("base", "ggml_type_name", S, [INT]),
    ("base", "ggml_op_desc", S, [P]),
    ("base", "ggml_get_data", P, [P]),
    ("base", "ggml_get_first_tensor", P, [P]),
    ("base", "ggml_get_next_tensor", P, [P, P]),
    ("base", "ggml_new_graph_custom", P, [P, SZ, B]),
    ("base", "ggml_build_forward_expand", None, [P, P]),
    ("base", "ggml_graph_n_nodes", INT, [P]),
    ("base", "ggml_graph_node", P, [P, INT]),
    ("base", "ggml_quantize_chunk", SZ, [INT, P, P, I64_, I64_, I64_, P]),
    ("base", "ggml_log_set", None, [LogCallback, P]),
    ("base", "ggml_log_get", None, [P, P]),
    ("base", "ggml_prec_set_acc", B, [P, INT]),
    # operations (all take the context first)
    ("base", "ggml_mul_mat", P, [P, P, P]),
    ("base", "ggml_add", P, [P, P, P]),
    ("base", "ggml_mul", P, [P, P, P]),
    ("base", "ggml_scale", P, [P, P, F]),
    ("base", "ggml_get_rows", P, [P, P, P]),
    ("base", "ggml_set_rows", P, [P, P, P, P]),
    ("base", "ggml_rms_norm", P, [P, P, F]),
    ("base", "ggml_norm", P, [P, P, F]),
    ("base", "ggml_rope_ext", P, [P, P, P, P, INT, INT, INT, F, F, F, F, F, F]),
    ("base", "ggml_soft_max_ext", P, [P, P, P, F, F]),
    ("base", "ggml_flash_attn_ext", P, [P, P, P, P, P, F, F, F]),
    ("base", "ggml_gelu_erf", P, [P, P]),
    ("base", "ggml_swiglu_split", P, [P, P, P]),
    ("base", "ggml_im2col", P, [P, P, P, INT, INT, INT, INT, INT, INT, B, INT]),
    ("base", "ggml_reshape_2d", P, [P, P, I64_, I64_]),
    ("base", "ggml_reshape_3d", P, [P, P, I64_, I64_, I64_]),
    ("base", "ggml_reshape_4d", P, [P, P, I64_, I64_, I64_, I64_]),
    ("base", "ggml_view_2d", P, [P, P, I64_, I64_, SZ, SZ]),
    ("base", "ggml_view_3d", P, [P, P, I64_, I64_, I64_, SZ, SZ, SZ]),
    ("base", "ggml_view_4d", P, [P, P, I64_, I64_, I64_, I64_, SZ, SZ, SZ, SZ]),
    ("base", "ggml_permute", P, [P, P, INT, INT, INT, INT]),
    ("base", "ggml_cont", P, [P, P]),
    ("base", "ggml_cpy", P, [P, P, P]),
    ("base", "ggml_cast", P, [P, P, INT]),
    ("base", "ggml_concat", P, [P, P, P, INT]),
    ("base", "ggml_pad", P, [P, P, INT, INT, INT, INT]),
    ("base", "ggml_repeat_4d", P, [P, P, I64_, I64_, I64_, I64_]),
    # gguf
    ("base", "gguf_init_from_file", P, [S, GGUFInitParams]),
    ("base", "gguf_init_empty", P, []),
    ("base", "gguf_free", None, [P]),
    ("base", "gguf_get_alignment", SZ, [P]),
    ("base", "gguf_get_data_offset", SZ, [P]),
    ("base", "gguf_get_n_kv", I64_, [P]),
    ("base", "gguf_find_key", I64_, [P, S]),
    ("base", "gguf_get_key", S, [P, I64_]),
    ("base", "gguf_get_kv_type", INT, [P, I64_]),
    ("base", "gguf_get_arr_type", INT, [P, I64_]),
    ("base", "gguf_get_val_u8", c_uint8, [P, I64_]),
    ("base", "gguf_get_val_i8", ctypes.c_int8, [P, I64_]),
    ("base", "gguf_get_val_u16", ctypes.c_uint16, [P, I64_]),
    ("base", "gguf_get_val_i16", ctypes.c_int16, [P, I64_]),
    ("base", "gguf_get_val_u32", c_uint32, [P, I64_]),
    ("base", "gguf_get_val_i32", c_int32, [P, I64_]),
    ("base", "gguf_get_val_f32", F, [P, I64_]),
    ("base", "gguf_get_val_u64", c_uint64, [P, I64_]),
    ("base", "gguf_get_val_i64", c_int64, [P, I64_]),
    ("base", "gguf_get_val_f64", ctypes.c_double, [P, I64_]),
    ("base", "gguf_get_val_bool", B, [P, I64_]),
    ("base", "gguf_get_val_str", S, [P, I64_]),
    ("base", "gguf_get_arr_n", SZ, [P, I64_]),
    ("base", "gguf_get_arr_data", P, [P, I64_]),
    ("base", "gguf_get_arr_str", S, [P, I64_, SZ]),
    ("base", "gguf_get_n_tensors", I64_, [P]),
    ("base", "gguf_get_tensor_offset", SZ, [P, I64_]),
    ("base", "gguf_get_tensor_name", S, [P, I64_]),
    ("base", "gguf_get_tensor_type", INT, [P, I64_]),
    ("base", "gguf_get_tensor_ne", POINTER(c_int64), [P, I64_]),
    ("base", "gguf_get_tensor_size", SZ, [P, I64_]),
    ("base", "gguf_set_val_u32", None, [P, S, c_uint32]),
    ("base", "gguf_set_val_i32", None, [P, S, c_int32]),
    ("base", "gguf_set_val_f32", None, [P, S, F]),
    ("base", "gguf_set_val_bool", None, [P, S, B]),
    ("base", "gguf_set_val_str", None, [P, S, S]),
    ("base", "gguf_set_arr_data", None, [P, S, INT, P, SZ]),
    ("base", "gguf_set_arr_str", None, [P, S, P, SZ]),
    ("base", "gguf_set_kv", None, [P, P]),
    ("base", "gguf_add_tensor", None, [P, P]),
    ("base", "gguf_get_meta_size", SZ, [P]),
    ("base", "gguf_get_meta_data", None, [P, P]),
    ("base", "gguf_write_to_file", B, [P, S, B]),
    # backend buffers, tensors, scheduler
    ("base", "ggml_backend_buft_name", S, [P]),
    ("base", "ggml_backend_buft_alloc_buffer", P, [P, SZ]),
    ("base", "ggml_backend_buffer_free", None, [P]),
    ("base", "ggml_backend_buffer_clear", None, [P, c_uint8]),
    ("base", "ggml_backend_buffer_set_usage", None, [P, INT]),
    ("base", "ggml_backend_alloc_ctx_tensors_from_buft", P, [P, P]),
    ("base", "ggml_backend_tensor_set", None, [P, P, SZ, SZ]),
    ("base", "ggml_backend_tensor_get", None, [P, P, SZ, SZ]),
    ("base", "ggml_backend_tensor_alloc", INT, [P, P, P]),
    ("base", "ggml_backend_cpu_buffer_from_ptr", P, [P, SZ]),
    ("base", "ggml_backend_name", S, [P]),
    ("base", "ggml_backend_free", None, [P]),
    ("base", "ggml_backend_sched_new", P, [P, P, INT, SZ, B, B]),
    ("base", "ggml_backend_sched_free", None, [P]),
    ("base", "ggml_backend_sched_reserve", B, [P, P]),
    ("base", "ggml_backend_sched_get_buffer_size", SZ, [P, P]),
    ("base", "ggml_backend_sched_alloc_graph", B, [P, P]),
    ("base", "ggml_backend_sched_graph_compute", INT, [P, P]),
    ("base", "ggml_backend_sched_reset", None, [P]),
    ("base", "ggml_backend_dev_name", S, [P]),
    ("base", "ggml_backend_dev_description", S, [P]),
    ("base", "ggml_backend_dev_memory", None, [P, POINTER(c_size_t), POINTER(c_size_t)]),
    ("base", "ggml_backend_dev_type", INT, [P]),
    ("base", "ggml_backend_dev_init", P, [P, S]),
    ("base", "ggml_backend_dev_buffer_type", P, [P]),
    ("base", "ggml_backend_dev_supports_op", B, [P, P]),
    ("base", "ggml_backend_dev_backend_reg", P, [P]),
    ("base", "ggml_backend_reg_name", S, [P]),
    ("base", "ggml_backend_reg_get_proc_address", P, [P, S]),
    # device registry (libggml)
    ("ggml", "ggml_backend_load_all", None, []),
    ("ggml", "ggml_backend_dev_count", SZ, []),
    ("ggml", "ggml_backend_dev_get", P, [SZ]),
    # CPU backend (libggml-cpu)
    ("cpu", "ggml_backend_cpu_set_n_threads", None, [P, INT]),
    ("cpu", "ggml_cpu_has_avx512_bf16", INT, []),
    ("cpu", "ggml_cpu_has_avx2", INT, []),
]


class _Lib:
    """Every bound function as an attribute named without its ``ggml_`` prefix (``lib.mul_mat``)."""

    def __init__(self, dlls: dict[str, ctypes.CDLL]) -> None:
        for lib, name, restype, argtypes in _SIGNATURES:
            try:
                fn = getattr(dlls[lib], name)
            except AttributeError:
                raise EngineError(f"llama-cpp-python's ggml lacks the symbol {name}", _FIX) from None
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(self, name[5:] if name.startswith("ggml_") else name, fn)

    def __getattr__(self, name: str) -> Any:  # only reached for a name not bound above
        raise AttributeError(f"ggml binding {name} is not declared in _SIGNATURES")


def _library_dir() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError("llama-cpp-python is not installed", _FIX)
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def _load() -> _Lib:
    try:
        version = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        raise EngineError("llama-cpp-python is not installed", _FIX) from None
    if version != LLAMA_CPP_VERSION:
        raise EngineError(f"llama-cpp-python {version} is installed; the mllama engine needs exactly "
                          f"{LLAMA_CPP_VERSION}", _FIX)
    libdir = _library_dir()
    dlls: dict[str, ctypes.CDLL] = {}
    # The .so.0 names are the ones libllama links against: the same files give the same ggml
    # (one global state); the wheel's identical unversioned copies would load a second one.
    for key, fname in (("base", "libggml-base.so.0"), ("cpu", "libggml-cpu.so.0"), ("ggml", "libggml.so.0")):
        path = libdir / fname
        if not path.exists():  # macOS and Windows builds name their libraries differently
            candidates = sorted(libdir.glob(fname.split(".so")[0] + ".*"))
            if not candidates:
                raise EngineError(f"llama-cpp-python's library {fname} is missing from {libdir}", _FIX)
            path = candidates[0]
        dlls[key] = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    return _Lib(dlls)


lib = _load()


def tensor(t: int) -> TensorStruct:
    """The struct behind a tensor pointer (a view on ggml's memory, not a copy)."""
    return TensorStruct.from_address(t)


def shape(t: int) -> tuple[int, ...]:
    """ne of a tensor, ggml order (fastest first)."""
    return tuple(tensor(t).ne)


def _check_layout() -> None:
    """Build a few tensors and compare what ggml reports with what the mirrored struct reads."""
    for field, offset in _TENSOR_OFFSETS.items():
        if getattr(TensorStruct, field).offset != offset:
            raise EngineError("ggml tensor layout mismatch in the bindings", _FIX)
    if ctypes.sizeof(TensorStruct) != _TENSOR_SIZE or lib.tensor_overhead() != _TENSOR_SIZE + 32:
        raise EngineError(f"ggml_tensor is {lib.tensor_overhead() - 32} bytes in this llama-cpp-python, "
                          f"the bindings expect {_TENSOR_SIZE}", _FIX)
    ctx = lib.init(InitParams(1 << 16, None, False))
    try:
        t = lib.new_tensor_3d(ctx, F32, 3, 5, 7)
        lib.set_name(t, b"layout-probe")
        s = tensor(t)
        ok = (tuple(s.ne) == (3, 5, 7, 1) and tuple(s.nb) == (4, 12, 60, 420) and s.type == F32
              and lib.nbytes(t) == 420 and s.name == b"layout-probe" and s.data == lib.get_data(t))
        q = lib.new_tensor_2d(ctx, Q8_0, 64, 2)
        ok = ok and tensor(q).nb[1] == 68 and lib.row_size(Q8_0, 64) == 68
        v = lib.view_2d(ctx, t, 3, 5, 12, 0)
        ok = ok and tensor(v).view_src == t and lib.op_desc(v) == b"VIEW"
    finally:
        lib.free(ctx)
    if not ok:
        raise EngineError("ggml tensor layout mismatch: llama-cpp-python's ggml differs from the bindings", _FIX)


_check_layout()


class Ops:
    """ggml operations bound to one context: ``ops.mul_mat(a, b)`` calls ``ggml_mul_mat(ctx, a, b)``."""

    def __init__(self, ctx: int) -> None:
        self.ctx = ctx

    def __getattr__(self, name: str) -> Callable[..., int]:
        fn = partial(getattr(lib, name), self.ctx)
        setattr(self, name, fn)  # cache: graph building calls the same ops thousands of times
        return fn


class Context:
    """A metadata-only ggml context (tensors without data) with room for n tensors and a graph."""

    def __init__(self, n_tensors: int, graph_size: int = 0) -> None:
        size = lib.tensor_overhead() * n_tensors
        if graph_size:
            size += lib.graph_overhead_custom(graph_size, False)
        self.ptr: int = lib.init(InitParams(size, None, True))
        if not self.ptr:
            raise EngineError("ggml could not create a context (out of memory)")
        self.ops = Ops(self.ptr)
        self.graph_size = graph_size

    def new(self, ggml_type: int, *ne: int, name: str | None = None) -> int:
        fn = (lib.new_tensor_1d, lib.new_tensor_2d, lib.new_tensor_3d, lib.new_tensor_4d)[len(ne) - 1]
        t: int = fn(self.ptr, ggml_type, *ne)
        if name:
            lib.set_name(t, name.encode())
        return t

    def input(self, ggml_type: int, *ne: int, name: str) -> int:
        t = self.new(ggml_type, *ne, name=name)
        lib.set_input(t)
        return t

    def graph(self) -> int:
        return int(lib.new_graph_custom(self.ptr, self.graph_size, False))

    def free(self) -> None:
        if self.ptr:
            lib.free(self.ptr)
            self.ptr = 0

    def __del__(self) -> None:
        self.free()


def set_data(t: int, array: np.ndarray) -> None:
    """Copy a numpy array into a backend tensor (any backend); the sizes must match exactly."""
    a = np.ascontiguousarray(array)
    n = lib.nbytes(t)
    if a.nbytes != n:
        raise EngineError(f"internal: {a.nbytes} bytes for a {n}-byte tensor {tensor(t).name.decode()}")
    lib.backend_tensor_set(t, a.ctypes.data, 0, n)


def get_data(t: int, ndim: int = 2) -> np.ndarray:
    """A backend tensor as a numpy array of its last ``ndim`` axes in numpy order; F32/F16/I32 only."""
    s = tensor(t)
    out = np.empty(tuple(reversed(s.ne[:ndim])), dtype=NP_DTYPE[s.type])
    if out.size != lib.nelements(t):
        raise EngineError(f"internal: tensor {s.name.decode()} has more than {ndim} dimensions")
    lib.backend_tensor_get(t, out.ctypes.data, 0, out.nbytes)
    return out


# LLAMADOC_GGML_LOG=1 echoes what LogCapture hides: ggml's reasons before an abort.
ECHO_LOGS = echo_ggml_logs()


class LogCapture:
    """Routes ggml's log lines away from stderr while a noisy call runs, keeping them for messages.

    ggml prints its own errors (a bad GGUF, a failed allocation) before returning NULL; the engine
    turns those into one-line errors instead, quoting the last line captured here.
    """

    _lock = threading.RLock()  # re-entrant: a captured call may itself capture

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._cb = LogCallback(self._log)
        self._prev_cb = c_void_p()
        self._prev_data = c_void_p()

    def _log(self, level: int, text: bytes, _user: int) -> None:
        if ECHO_LOGS and text:  # debugging: see everything, as it happens (an abort loses the rest)
            sys.stderr.write(text.decode(errors="replace"))
            sys.stderr.flush()
        if level >= 3 and text:  # warnings and errors only
            line = text.decode(errors="replace").strip()
            if line:
                self.lines.append(line)

    def __enter__(self) -> LogCapture:
        self._lock.acquire()
        lib.log_get(ctypes.byref(self._prev_cb), ctypes.byref(self._prev_data))
        lib.log_set(self._cb, None)
        return self

    def __exit__(self, *exc: object) -> None:
        prev = ctypes.cast(self._prev_cb, LogCallback) if self._prev_cb.value else LogCallback()
        lib.log_set(prev, self._prev_data)
        self._lock.release()

    @property
    def last(self) -> str:
        return self.lines[-1] if self.lines else ""


called_from_c(LogCapture._log)  # a Ctrl-C landing in it is deferred, not swallowed by ctypes


def quantize_rows(ggml_type: int, rows: np.ndarray) -> bytes:
    """Quantise a 2-D float32 array row by row with ggml's own quantiser."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    nrows, n_per_row = rows.shape
    out = np.empty(lib.row_size(ggml_type, n_per_row) * nrows, dtype=np.uint8)
    written = lib.quantize_chunk(ggml_type, rows.ctypes.data, out.ctypes.data, 0, nrows, n_per_row, None)
    if written != out.nbytes:
        raise EngineError(f"internal: ggml quantised {written} bytes, expected {out.nbytes}")
    return out.tobytes()


def type_name(ggml_type: int) -> str:
    name = lib.type_name(ggml_type)
    return name.decode() if name else f"type {ggml_type}"
