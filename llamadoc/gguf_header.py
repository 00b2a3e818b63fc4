"""What a GGUF file's header says: metadata values and the tensor list, read without loading it.

One reader for the registry (``models info``) and the llama.cpp engines. It walks the
header in place (a memory map) and stops as soon as it has the keys asked for: the
architecture is near the start, while the vocabulary (128K strings) and merges that
follow it are never decoded. ``gguf.GGUFReader`` decodes every field into numpy views
first, which takes seconds for a Llama 3 tokenizer (see benchmarks/gguf_header.py).
The mllama engine keeps its own ggml-backed reader: it maps tensors at ggml's offsets.
"""

from __future__ import annotations

import mmap
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamadoc.errors import ModelError

MAGIC = b"GGUF"
# GGUF value types -> struct format of one element (strings and arrays are read apart).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    type: int  # ggml_type

    @property
    def elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@dataclass(frozen=True)
class Header:
    """The metadata read (scalars, strings; arrays as their length) and, when asked, the tensors."""

    values: dict[str, Any]
    tensors: tuple[Tensor, ...] = ()

    @property
    def architecture(self) -> str | None:
        arch = self.values.get("general.architecture")
        return arch if isinstance(arch, str) else None


class _Damaged(Exception):
    pass


class _Walker:
    """A cursor over the header bytes, in the file's byte order."""

    def __init__(self, data: mmap.mmap, order: str) -> None:
        self.data, self.order, self.pos = data, order, 4

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise _Damaged("the header ends early")
        (value,) = struct.unpack_from(self.order + fmt, self.data, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        length = self.take("Q")
        if self.pos + length > len(self.data):
            raise _Damaged("a string runs past the end of the file")
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        length = self.take("Q")
        self.pos += length
        if self.pos > len(self.data):
            raise _Damaged("a string runs past the end of the file")

    def value(self, kind: int, keep: bool) -> Any:
        """One value; an array is skipped (its length returned) unless ``keep``."""
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise _Damaged(f"unknown value type {kind}")
        item, count = self.take("I"), self.take("Q")
        if keep:
            return [self.value(item, keep=True) for _ in range(count)]
        if item in _SCALARS:
            self.pos += count * struct.calcsize(_SCALARS[item])
        elif item == _STRING:
            for _ in range(count):
                self.skip_string()
        else:  # arrays of arrays: nothing llama.cpp writes, but legal
            for _ in range(count):
                self.value(item, keep=False)
        if self.pos > len(self.data):
            raise _Damaged("an array runs past the end of the file")
        return count


def read_header(path: str | Path, keys: Iterable[str] | None = None, *, tensors: bool = False,
                arrays: Iterable[str] = ()) -> Header:
    """The header of a GGUF file. With ``keys``, reading stops once they are all found
    (``{arch}`` in a key stands for general.architecture); ``arrays`` are decoded whole,
    other arrays are skipped and recorded as their length."""
    wanted = set(keys) if keys is not None else None
    whole = set(arrays)
    try:
        with open(path, "rb") as fh:
            try:
                data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:  # mmap refuses an empty file
                raise ModelError(f"{path} is empty (0 bytes); is the download complete?") from None
    except OSError as err:
        raise ModelError(f"cannot read {path}: {err.strerror or err}") from None
    with data:
        if data[:4] != MAGIC:
            raise ModelError(f"{path} is not a GGUF file", hint="model and projector files end in .gguf")
        try:
            return _walk(data, wanted, whole, tensors)
        except (_Damaged, struct.error, UnicodeDecodeError) as err:
            raise ModelError(f"{path} is a damaged GGUF file ({err}); is the download complete?") from None


def _walk(data: mmap.mmap, wanted: set[str] | None, whole: set[str], with_tensors: bool) -> Header:
    (version,) = struct.unpack_from("<I", data, 4)
    order = "<" if version < 0x10000 else ">"  # a big-endian file reads as a huge version
    walker = _Walker(data, order)
    version = walker.take("I")
    if version < 2:
        raise _Damaged(f"GGUF version {version} is too old for llama.cpp")
    n_tensors, n_kv = walker.take("Q"), walker.take("Q")
    values: dict[str, Any] = {}
    for _ in range(n_kv):
        name = walker.string()
        values[name] = walker.value(walker.take("I"), keep=name in whole)
        if wanted is not None and not with_tensors and _all_found(values, wanted):
            return Header(values)
    found: list[Tensor] = []
    if with_tensors:
        for _ in range(n_tensors):
            name = walker.string()
            dims = tuple(walker.take("Q") for _ in range(walker.take("I")))
            kind = walker.take("I")
            walker.take("Q")  # offset into the data section
            found.append(Tensor(name, dims, kind))
    return Header(values, tuple(found))


def _all_found(values: dict[str, Any], wanted: set[str]) -> bool:
    arch = values.get("general.architecture")
    if any("{arch}" in k for k in wanted) and not isinstance(arch, str):
        return False
    return all(k.format(arch=arch) in values for k in wanted)


def gguf_architecture(path: str | Path) -> str:
    """general.architecture of a GGUF file: one key read."""
    arch = read_header(path, ("general.architecture",)).architecture
    if arch is None:
        raise ModelError(f"{path} has no general.architecture: is it a GGUF model?")
    return arch


def gguf_metadata(path: str | Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """A few metadata values (None where absent), plus general.architecture. ``{arch}``
    in a key stands for the file's architecture."""
    header = read_header(path, ("general.architecture", *keys))
    arch = header.architecture
    out: dict[str, Any] = {"general.architecture": arch}
    for k in keys:
        out[k] = header.values.get(k.format(arch=arch))
    return out


@dataclass(frozen=True)
class GgufSummary:
    architecture: str
    name: str | None
    quantisation: str | None  # as llama.cpp names file types: Q4_K_M, Q8_0, F16
    context: int | None
    parameters: int
    tensors: int
    vision: str | None  # the vision side, when the file has one
    chat_template: bool


def gguf_summary(path: str | Path) -> GgufSummary:
    """What ``models info`` shows: the whole header, tensors included."""
    header = read_header(path, tensors=True)
    fields, arch = header.values, header.architecture
    if arch is None:
        raise ModelError(f"{path} has no general.architecture: is it a GGUF model?")
    context = fields.get(f"{arch}.context_length")
    name = fields.get("general.name")
    return GgufSummary(
        architecture=arch,
        name=name if isinstance(name, str) else None,
        quantisation=_file_type(fields.get("general.file_type"), header.tensors),
        context=context if isinstance(context, int) else None,
        parameters=sum(t.elements for t in header.tensors),
        tensors=len(header.tensors),
        vision=_vision(arch, fields),
        chat_template=isinstance(fields.get("tokenizer.chat_template"), str),
    )


def _file_type(value: Any, tensors: tuple[Tensor, ...]) -> str | None:
    import gguf  # imported here: only the names of ggml's types are needed, for models info

    if isinstance(value, int):
        try:
            return gguf.LlamaFileType(value).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            return None
    # No file type recorded (some converters skip it): name the commonest type of the weight matrices.
    kinds = Counter(t.type for t in tensors if len(t.shape) >= 2)
    if not kinds:
        return None
    kind = kinds.most_common(1)[0][0]
    try:
        return gguf.GGMLQuantizationType(kind).name
    except ValueError:
        return None


def _vision(arch: str, fields: dict[str, Any]) -> str | None:
    if arch == "clip":
        kind = fields.get("clip.projector_type") or fields.get("clip.vision.projector_type") or "unknown type"
        size = fields.get("clip.vision.image_size")
        return f"projector ({kind}" + (f", {size} px images)" if size else ")")
    prefix = f"{arch}.vision."
    if any(key.startswith(prefix) for key in fields):
        layers = fields.get(f"{prefix}block_count")
        size = fields.get(f"{prefix}image_size")
        detail = ", ".join(
            part for part in (f"{layers} layers" if layers else "", f"{size} px tiles" if size else "") if part
        )
        return "encoder inside the model" + (f" ({detail})" if detail else "")
    return None
