"""Read a few metadata values from a GGUF file's header, with clear errors for bad files."""

from __future__ import annotations

from typing import Any

from llamadoc.errors import ModelError


def open_gguf(path: str) -> Any:
    """A gguf.GGUFReader, or a ModelError that says what is wrong with the file."""
    import gguf  # imported here: only needed to inspect files

    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as err:
        raise ModelError(f"cannot read {path}: {err.strerror or err}") from None
    if magic != b"GGUF":
        raise ModelError(f"{path} is not a GGUF file", hint="model and projector files end in .gguf")
    try:
        return gguf.GGUFReader(path)
    except Exception as err:  # gguf raises ValueError, IndexError, ... on damaged files
        raise ModelError(f"{path} is a damaged GGUF file ({err}); is the download complete?") from None


def gguf_metadata(path: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """A few metadata values from a GGUF header (None where absent). ``{arch}`` in a
    key stands for the file's general.architecture.
    """
    reader = open_gguf(path)
    arch_field = reader.get_field("general.architecture")
    arch = str(arch_field.contents()) if arch_field is not None else ""
    out: dict[str, Any] = {"general.architecture": arch or None}
    for key in keys:
        field = reader.get_field(key.format(arch=arch))
        out[key] = field.contents() if field is not None else None
    return out
