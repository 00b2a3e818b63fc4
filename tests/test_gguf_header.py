"""The GGUF header reader: the same values as the gguf package's reader, early stops, damaged files."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from llamadoc.errors import ModelError
from llamadoc.gguf_header import gguf_architecture, gguf_metadata, read_header
from tests.tinymodels import write_mmproj, write_text_model


def test_values_and_tensors_match_the_gguf_package(tmp_path: Path) -> None:
    path = write_text_model(tmp_path / "m.gguf", context=2048)
    header = read_header(path, tensors=True, arrays=("tokenizer.ggml.merges",))
    reference = gguf.GGUFReader(str(path))
    for name, field in reference.fields.items():
        if name.startswith("GGUF."):
            continue  # the reader's own pseudo-fields (version, counts)
        expected = field.contents()
        got = header.values[name]
        if isinstance(expected, list) and name != "tokenizer.ggml.merges":
            assert got == len(expected), name  # arrays not asked for: their length only
        elif isinstance(expected, float):
            assert got == pytest.approx(expected), name
        else:
            assert got == expected, name
    assert [(t.name, t.shape, t.type) for t in header.tensors] == [
        (t.name, tuple(int(d) for d in t.shape), int(t.tensor_type)) for t in reference.tensors]


def test_reading_stops_at_the_keys_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "late.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(1000)])
    w.add_context_length(777)
    w.add_tensor("x", np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    early = read_header(path, ("general.architecture",))
    assert early.architecture == "llama" and "tokenizer.ggml.tokens" not in early.values
    assert gguf_metadata(path, ("{arch}.context_length", "absent.key")) == {
        "general.architecture": "llama", "{arch}.context_length": 777, "absent.key": None}
    assert gguf_architecture(write_mmproj(tmp_path / "p.gguf")) == "clip"


@pytest.mark.parametrize(("content", "message"), [
    (b"", "is empty"),
    (b"not a gguf at all", "not a GGUF file"),
    (b"GGUF\x03\x00\x00\x00" + b"\x00" * 4, "damaged GGUF file"),
])
def test_bad_files_say_what_is_wrong(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        read_header(path)


def test_a_truncated_file_is_damaged_not_a_crash(tmp_path: Path) -> None:
    whole = write_text_model(tmp_path / "m.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:600])  # inside the vocabulary
    with pytest.raises(ModelError, match="damaged GGUF file"):
        read_header(cut, tensors=True)
    with pytest.raises(ModelError, match="cannot read"):
        read_header(tmp_path / "absent.gguf")
