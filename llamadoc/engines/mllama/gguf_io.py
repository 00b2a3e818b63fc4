"""Read and write GGUF files with ggml's own gguf code: metadata, tensor tables, streamed tensor data."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llamadoc.errors import ModelError

from . import ggml
from .ggml import lib

_SCALAR_GETTERS = {
    ggml.GGUF_U8: lib.gguf_get_val_u8, ggml.GGUF_I8: lib.gguf_get_val_i8,
    ggml.GGUF_U16: lib.gguf_get_val_u16, ggml.GGUF_I16: lib.gguf_get_val_i16,
    ggml.GGUF_U32: lib.gguf_get_val_u32, ggml.GGUF_I32: lib.gguf_get_val_i32,
    ggml.GGUF_F32: lib.gguf_get_val_f32, ggml.GGUF_U64: lib.gguf_get_val_u64,
    ggml.GGUF_I64: lib.gguf_get_val_i64, ggml.GGUF_F64: lib.gguf_get_val_f64,
    ggml.GGUF_BOOL: lib.gguf_get_val_bool,
}
_ARRAY_DTYPES = {
    ggml.GGUF_U8: np.uint8, ggml.GGUF_I8: np.int8, ggml.GGUF_U16: np.uint16, ggml.GGUF_I16: np.int16,
    ggml.GGUF_U32: np.uint32, ggml.GGUF_I32: np.int32, ggml.GGUF_F32: np.float32,
    ggml.GGUF_U64: np.uint64, ggml.GGUF_I64: np.int64, ggml.GGUF_F64: np.float64, ggml.GGUF_BOOL: np.bool_,
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: int
    ne: tuple[int, ...]  # ggml order, fastest first, trailing 1s dropped
    offset: int  # absolute position of the data in the file
    nbytes: int


class GGUFFile:
    """The metadata and tensor table of one GGUF file (no tensor data is read)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such model file")
        self.size = self.path.stat().st_size
        with ggml.LogCapture() as log:
            self._ctx = lib.gguf_init_from_file(os.fsencode(self.path), ggml.GGUFInitParams(True, None))
        if not self._ctx:
            why = log.last.split(": ", 1)[-1] if log.last else "unreadable header"
            raise ModelError(f"{self.path}: not a valid GGUF file ({why})")
        data_offset = lib.gguf_get_data_offset(self._ctx)
        self.tensors: dict[str, TensorInfo] = {}
        for i in range(lib.gguf_get_n_tensors(self._ctx)):
            name = lib.gguf_get_tensor_name(self._ctx, i).decode()
            ne_ptr = lib.gguf_get_tensor_ne(self._ctx, i)
            ne = [ne_ptr[d] for d in range(ggml.GGML_MAX_DIMS)]
            while len(ne) > 1 and ne[-1] == 1:
                ne.pop()
            self.tensors[name] = TensorInfo(
                name, lib.gguf_get_tensor_type(self._ctx, i), tuple(ne),
                data_offset + lib.gguf_get_tensor_offset(self._ctx, i), lib.gguf_get_tensor_size(self._ctx, i))
        end = max((t.offset + t.nbytes for t in self.tensors.values()), default=0)
        if end > self.size:
            raise ModelError(f"{self.path}: truncated file ({self.size} bytes, its tensors need {end}); "
                             "download or convert it again")

    @property
    def ctx(self) -> int:
        return int(self._ctx)

    def keys(self) -> list[str]:
        return [lib.gguf_get_key(self._ctx, i).decode() for i in range(lib.gguf_get_n_kv(self._ctx))]

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value: int, float, bool, str, or a list for arrays (strings arrays included)."""
        i = lib.gguf_find_key(self._ctx, key.encode())
        if i < 0:
            return default
        kind = lib.gguf_get_kv_type(self._ctx, i)
        if kind == ggml.GGUF_STR:
            return lib.gguf_get_val_str(self._ctx, i).decode(errors="replace")
        if kind == ggml.GGUF_ARR:
            n = lib.gguf_get_arr_n(self._ctx, i)
            sub = lib.gguf_get_arr_type(self._ctx, i)
            if sub == ggml.GGUF_STR:
                return [lib.gguf_get_arr_str(self._ctx, i, j).decode(errors="replace") for j in range(n)]
            dtype = _ARRAY_DTYPES[sub]
            if n == 0:
                return []
            buf = (ctypes.c_char * (n * np.dtype(dtype).itemsize)).from_address(lib.gguf_get_arr_data(self._ctx, i))
            return np.frombuffer(buf, dtype=dtype).tolist()
        value = _SCALAR_GETTERS[kind](self._ctx, i)
        return value

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise ModelError(f"{self.path}: metadata key {key} is missing")
        return value

    def close(self) -> None:
        if self._ctx:
            lib.gguf_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        self.close()


def _set_value(ctx: int, key: str, value: Any) -> None:
    k = key.encode()
    if isinstance(value, bool):
        lib.gguf_set_val_bool(ctx, k, value)
    elif isinstance(value, int):
        if value < 0:
            lib.gguf_set_val_i32(ctx, k, value)
        else:
            lib.gguf_set_val_u32(ctx, k, value)
    elif isinstance(value, float):
        lib.gguf_set_val_f32(ctx, k, value)
    elif isinstance(value, str):
        lib.gguf_set_val_str(ctx, k, value.encode())
    elif isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value) and value:
            strs = [v.encode() for v in value]
            arr = (ctypes.c_char_p * len(strs))(*strs)
            lib.gguf_set_arr_str(ctx, k, ctypes.cast(arr, ctypes.c_void_p), len(strs))
        elif all(isinstance(v, int) for v in value):
            a = np.asarray(value, dtype=np.int32)
            lib.gguf_set_arr_data(ctx, k, ggml.GGUF_I32, a.ctypes.data, len(a))
        else:
            a = np.asarray(value, dtype=np.float32)
            lib.gguf_set_arr_data(ctx, k, ggml.GGUF_F32, a.ctypes.data, len(a))
    else:
        raise TypeError(f"cannot store {type(value).__name__} in GGUF metadata ({key})")


class GGUFWriter:
    """Writes a GGUF file: metadata and tensor table first, then each tensor's bytes as it is made.

    Tensor data comes from callables, so a converter holds one tensor in memory at a time.
    """

    def __init__(self, path: str | os.PathLike[str], metadata: dict[str, Any]) -> None:
        self.path = Path(path)
        self._ctx = lib.gguf_init_empty()
        for key, value in metadata.items():
            _set_value(self._ctx, key, value)
        self._planned: list[tuple[str, int, int, Callable[[], Iterable[bytes]]]] = []

    def add_tensor(self, name: str, ggml_type: int, ne: Iterable[int], data: Callable[[], Iterable[bytes]]) -> None:
        """Plan one tensor: ``ne`` in ggml order; ``data`` yields exactly its bytes, in pieces, when called."""
        ne = tuple(ne)
        ctx = ggml.Context(1)
        t = ctx.new(ggml_type, *ne, name=name)
        lib.gguf_add_tensor(self._ctx, t)  # copies the tensor's description; the context can go
        self._planned.append((name, ggml_type, lib.nbytes(t), data))
        ctx.free()

    def write(self) -> int:
        """Write the whole file, atomically (a partial file never takes the final name); returns its size."""
        align = lib.gguf_get_alignment(self._ctx)
        meta = np.empty(lib.gguf_get_meta_size(self._ctx), dtype=np.uint8)
        lib.gguf_get_meta_data(self._ctx, meta.ctypes.data)
        tmp = self.path.with_name(self.path.name + ".part")
        try:
            with open(tmp, "wb") as f:
                f.write(meta.tobytes())
                for name, _type, nbytes, make in self._planned:
                    written = 0
                    for piece in make():
                        f.write(piece)
                        written += len(piece)
                    if written != nbytes:
                        raise ModelError(f"{self.path}: internal: tensor {name} has {written} bytes, "
                                         f"expected {nbytes}")
                    f.write(b"\0" * ((-nbytes) % align))
                size = f.tell()
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
            lib.gguf_free(self._ctx)
            self._ctx = None
        return size


def write_vocab_only(src: GGUFFile, dst: str | os.PathLike[str]) -> None:
    """Copy a GGUF's metadata into a tensor-less file that llama.cpp loads as a 'llama' vocabulary.

    llama.cpp rejects architecture 'mllama' even with vocab_only; the tokenizer keys are all it reads.
    """
    ctx = lib.gguf_init_empty()
    try:
        lib.gguf_set_kv(ctx, src.ctx)
        lib.gguf_set_val_str(ctx, b"general.architecture", b"llama")
        if not lib.gguf_write_to_file(ctx, os.fsencode(dst), True):
            raise ModelError(f"{dst}: cannot write the vocabulary file")
    finally:
        lib.gguf_free(ctx)
