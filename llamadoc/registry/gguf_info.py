"""What a GGUF file says about itself: architecture, quantisation, context, vision, chat template."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamadoc.errors import ModelError
from llamadoc.ggufinfo import open_gguf


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


def gguf_architecture(path: Path) -> str:
    """general.architecture of a GGUF file."""
    return gguf_summary(path).architecture


def gguf_summary(path: Path) -> GgufSummary:
    reader = open_gguf(str(path))
    fields = {name: _value(field) for name, field in reader.fields.items() if not name.startswith("tokenizer.ggml.")}
    arch = fields.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelError(f"{path} has no general.architecture: is it a GGUF model?")
    context = fields.get(f"{arch}.context_length")
    return GgufSummary(
        architecture=arch,
        name=_str(fields.get("general.name")),
        quantisation=_file_type(fields.get("general.file_type"), reader.tensors),
        context=context if isinstance(context, int) else None,
        parameters=sum(int(t.n_elements) for t in reader.tensors),
        tensors=len(reader.tensors),
        vision=_vision(arch, fields),
        chat_template=bool(fields.get("tokenizer.chat_template")),
    )


def _value(field: Any) -> Any:
    try:
        return field.contents()
    except Exception:  # a value type this gguf version cannot decode: not one we read
        return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _file_type(value: Any, tensors: list[Any]) -> str | None:
    import gguf

    if isinstance(value, int):
        try:
            return gguf.LlamaFileType(value).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            return None
    # No file type recorded (some converters skip it): name the commonest type of the weight matrices.
    kinds = Counter(gguf.GGMLQuantizationType(t.tensor_type).name for t in tensors if len(t.shape) >= 2)
    return kinds.most_common(1)[0][0] if kinds else None


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
