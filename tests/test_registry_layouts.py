"""Ollama manifests and blobs the engine cannot load: refused before downloading, by layers or by digest."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from llamadoc import registry
from llamadoc.config import load_settings
from llamadoc.errors import ExitCode, ModelError
from llamadoc.registry import known_blobs

if TYPE_CHECKING:  # imported by pytest as a plugin, not here: its asserts stay rewritten
    from tests.registry_server import FakeRegistry

pytest_plugins = ["tests.registry_server"]

MODELS = """
[models.vision]
engine = "mllama"
files.model = "ollama://library/vision:11b"

[models.pair]
engine = "mtmd"
files.model = "ollama://library/pair:7b"
"""


@pytest.fixture
def config(tmp_path: Path, model_env) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(MODELS)
    return path


def settings(config: Path, **env: str):
    return load_settings(config, {**os.environ, **env})


def fetched(registry_server: FakeRegistry, data: bytes) -> bool:
    return bool(registry_server.requests("cdn", hashlib.sha256(data).hexdigest()))


def test_ollamas_old_two_file_llama_vision_is_refused_before_its_blobs(config, registry_server):
    model, projector = b"M" * 50_000, b"P" * 20_000
    registry_server.add_ollama_model("library/vision:11b", {"model": model, "projector": projector}, family="mllama")
    s = settings(config)
    with pytest.raises(ModelError) as caught:
        registry.pull(s, s.model("vision"))
    assert "old two-file Llama 3.2 Vision" in str(caught.value) and "--source meta" in str(caught.value)
    assert caught.value.exit_code == ExitCode.USAGE and "\n" not in str(caught.value)
    assert not fetched(registry_server, model) and not fetched(registry_server, projector)
    # The same layout in Ollama's own store (an old `ollama pull`) is refused where it lies.
    write_store(Path(os.environ["OLLAMA_MODELS"]), registry_server, "library/vision/11b",
                {"model": model, "projector": projector}, family="mllama")
    with pytest.raises(ModelError, match="old two-file"):
        registry.resolve(s, "vision")


def test_a_manifest_of_another_family_or_without_a_projector_is_refused(config, registry_server):
    model = b"T" * 40_000
    registry_server.add_ollama_model("library/vision:11b", {"model": model}, family="llama")
    registry_server.add_ollama_model("library/pair:7b", {"model": model}, family="gemma3")
    s = settings(config)
    with pytest.raises(ModelError, match=r"is a 'llama' model, not Llama 3\.2 Vision"):
        registry.pull(s, s.model("vision"))
    with pytest.raises(ModelError, match="has no projector layer") as caught:
        registry.pull(s, s.model("pair"))
    assert "encoder inside the model" in str(caught.value)
    assert not fetched(registry_server, model)


def test_an_address_is_checked_for_what_it_is_asked_to_be(config, registry_server):
    model = b"T" * 40_000
    registry_server.add_ollama_model("library/text:1b", {"model": model}, family="llama")
    s = settings(config)
    with pytest.raises(ModelError, match="has no projector layer"):
        registry.resolve(s, "ollama://library/text:1b", pull_missing=True)
    assert not fetched(registry_server, model)
    # A guard needs no projector: the same address is fine as one (the engine then reads the file).
    with pytest.raises(ModelError, match="is not a GGUF file"):
        registry.resolve_guard(s, "ollama://library/text:1b", pull_missing=True, notify=lambda _m: None)
    assert fetched(registry_server, model)


def write_store(root: Path, registry_server: FakeRegistry, name: str, layers: dict[str, bytes],
                family: str | None = None) -> dict[str, Path]:
    """An Ollama installation's folder, with a config blob as Ollama writes it."""
    import json

    blobs: dict[str, Path] = {}
    entries = []
    for kind, data in layers.items():
        digest = hashlib.sha256(data).hexdigest()
        blobs[kind] = root / "blobs" / f"sha256-{digest}"
        blobs[kind].parent.mkdir(parents=True, exist_ok=True)
        blobs[kind].write_bytes(data)
        entries.append({"mediaType": f"application/vnd.ollama.image.{kind}", "digest": f"sha256:{digest}",
                        "size": len(data)})
    config = json.dumps({"model_format": "gguf", "model_family": family, "model_families": [family]}).encode()
    config_digest = hashlib.sha256(config).hexdigest()
    (root / "blobs" / f"sha256-{config_digest}").write_bytes(config)
    manifest = root / "manifests" / registry_server.url.removeprefix("http://") / name.replace(":", "/")
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": f"sha256:{config_digest}", "size": len(config)},
        "layers": entries,
    }))
    return blobs


# ---- the digest list -------------------------------------------------------------------------


def raw_gates(src: Path, dst: Path) -> Path:
    """A converted tiny model rewritten as Ollama's converter wrote it before 2025-05-22:
    the vision tower's global-layer gates stored raw instead of as tanh(gate)."""
    from llamadoc.engines.mllama.gguf_io import GGUFFile, GGUFWriter

    f = GGUFFile(src)
    writer = GGUFWriter(dst, {k: f.get(k) for k in f.keys()})
    data = np.memmap(src, dtype=np.uint8, mode="r")
    for name, info in f.tensors.items():
        raw = data[info.offset:info.offset + info.nbytes].tobytes()
        if re.fullmatch(r"v\.global\.blk\.\d+\.(attn|ffn)_gate", name):
            raw = np.arctanh(np.frombuffer(raw, dtype="<f4")).astype("<f4").tobytes()
        writer.add_tensor(name, info.type, info.ne, lambda raw=raw: [raw])
    writer.write()
    f.close()
    return dst


@pytest.fixture
def old_blob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    pytest.importorskip("llama_cpp")
    from tests.mllama_helpers import FIXTURES, convert_fixture

    converted = convert_fixture("tiny", tmp_path / "tiny.gguf", "Q8_0")
    data = raw_gates(converted, tmp_path / "tiny-raw-gates.gguf").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert FIXTURES.is_dir() and data != converted.read_bytes()
    monkeypatch.setitem(known_blobs.KNOWN, digest, known_blobs.KnownBlob(
        "the test's tiny model as Ollama 0.7.0 wrote it", "its vision gates are stored raw"))
    return data


def test_a_blob_on_the_digest_list_is_refused_before_download_in_a_store_and_as_a_path(
    config, registry_server, old_blob, tmp_path
):
    registry_server.add_ollama_model("library/vision:11b", {"model": old_blob}, family="mllama")
    s = settings(config)
    with pytest.raises(ModelError) as caught:
        registry.pull(s, s.model("vision"))
    line = str(caught.value)
    assert "as Ollama 0.7.0 wrote it" in line and "vision gates are stored raw" in line
    assert "pull the model again" in line and "--source meta" in line
    assert not fetched(registry_server, old_blob)

    blobs = write_store(Path(os.environ["OLLAMA_MODELS"]), registry_server, "library/vision:11b",
                        {"model": old_blob}, family="mllama")
    with pytest.raises(ModelError, match="vision gates are stored raw"):
        registry.resolve(s, "vision")
    # Given as a path: a blob named by its digest is known without reading it.
    with pytest.raises(ModelError, match="vision gates are stored raw"):
        registry.resolve(s, str(blobs["model"]))
    with pytest.raises(ModelError, match="vision gates are stored raw"):
        registry.resolve_guard(s, str(blobs["model"]), pull_missing=False, notify=lambda _m: None)
    # The same file under another name is checked once its digest is known (hashed for a result).
    copy = tmp_path / "renamed.gguf"
    copy.write_bytes(old_blob)
    assert registry.resolve(s, str(copy)).engine == "mllama"
    registry.file_sha256(copy, s.cache_dir)
    with pytest.raises(ModelError, match="vision gates are stored raw"):
        registry.resolve(s, str(copy))


def test_the_shipped_digest_list_is_well_formed():
    assert known_blobs.KNOWN  # evidence says these exist; an empty list would be a claim too
    for digest, blob in known_blobs.KNOWN.items():
        assert re.fullmatch(r"[0-9a-f]{64}", digest) and blob.what and blob.why
    known_blobs.check("0" * 64, "anything")  # not on the list: no complaint
    known_blobs.check(None, "unknown digest")
