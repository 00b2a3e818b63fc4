"""Read a few metadata values from a GGUF file's header, with clear errors for bad files."""

from __future__ import annotations

from typing import Any

from llamadoc.errors import ModelError


def gguf_metadata(path: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """A few metadata values from a GGUF header (None where absent); a ModelError for
    a file that is not GGUF or is cut short. ``{arch}`` in a key stands for the
    file's general.architecture.
    """
    import gguf

    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as err:
        raise ModelError(f"cannot read {path}: {err.strerror or err}") from None
    if magic != b"GGUF":
        raise ModelError(f"{path} is not a GGUF file", hint="model and projector files end in .gguf")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as err:  # gguf raises ValueError, IndexError, ... on damaged files
        raise ModelError(f"{path} is a damaged GGUF file ({err}); is the download complete?") from None
    arch_field = reader.get_field("general.architecture")
    arch = str(arch_field.contents()) if arch_field is not None else ""
    out: dict[str, Any] = {"general.architecture": arch or None}
    for key in keys:
        field = reader.get_field(key.format(arch=arch))
        out[key] = field.contents() if field is not None else None
    return out
