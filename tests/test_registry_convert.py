"""Meta's checkpoints from the (loopback) Hub, converted to GGUF on pull; a model's second source."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from llamadoc import registry
from llamadoc.config import load_settings
from llamadoc.errors import ConfigError, DownloadError, ExitCode, ModelError
from llamadoc.gguf_header import read_header
from llamadoc.registry import checkpoint, download
from tests.mllama_helpers import FIXTURES

if TYPE_CHECKING:  # imported by pytest as a plugin, not here: its asserts stay rewritten
    from tests.registry_server import FakeRegistry

pytest_plugins = ["tests.registry_server"]
pytest.importorskip("llama_cpp")

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the loopback Hub's main, as registry_server serves it

GUARD_REPO = "meta-llama/Llama-Guard-3-11B-Vision"
VISION_REPO = "meta-llama/Llama-3.2-11B-Vision-Instruct"
TOKEN = "hf_meta_accepted"
CHECKPOINT = FIXTURES / "tiny" / "checkpoint"


@pytest.fixture
def hub(registry_server: FakeRegistry, model_env) -> dict[str, str]:
    """Meta's two repositories, holding the tiny random Mllama checkpoint, gated as Meta's are."""
    digests = registry_server.add_hf_repo(GUARD_REPO, CHECKPOINT, token=TOKEN)
    registry_server.add_hf_repo(VISION_REPO, CHECKPOINT, token=TOKEN)
    return digests


def settings(**env: str):
    return load_settings(None, {**os.environ, **env})


def weights(registry_server: FakeRegistry, repo: str = GUARD_REPO) -> str:
    return registry_server.hf_files[(repo, "model.safetensors")]


def test_a_checkpoint_is_converted_verified_and_recorded(hub, registry_server):
    s = settings(HF_TOKEN=TOKEN)
    spec = s.model("llama-guard3:11b-vision")
    told: list[str] = []
    [path] = registry.pull(s, spec, notify=told.append)
    assert path == s.models_dir / "converted" / GUARD_REPO / "Llama-Guard-3-11B-Vision-Q4_K_M.gguf"
    header = read_header(path, ("general.architecture", "general.name", "general.file_type"))
    assert header.values["general.architecture"] == "mllama"
    assert header.values["general.name"] == "Llama-Guard-3-11B-Vision"
    assert header.values["general.file_type"] == 15  # llama.cpp's Q4_K_M
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    record = json.loads(path.with_name(path.name + ".source.json").read_text())
    assert record["source"] == f"hf://{GUARD_REPO}" and record["revision"] == COMMIT
    assert record["sha256"] == digest and record["quantisation"] == "Q4_K_M"
    assert record["checkpoint"] == {"model.safetensors": hub["model.safetensors"]}
    assert path.with_name(path.name + ".sha256").read_text().split()[0] == digest
    # The download is gone once converted; nothing half-made or locked is left.
    assert not (s.models_dir / "checkpoints" / GUARD_REPO).exists() or not any(
        (s.models_dir / "checkpoints" / GUARD_REPO).rglob("*.safetensors"))
    assert not list(s.models_dir.rglob("*.part")) and not list(s.models_dir.rglob("*.lock"))
    assert any("converting hf://meta-llama/Llama-Guard-3-11B-Vision to one Q4_K_M GGUF" in m for m in told)
    assert any("--keep-source keeps it" in m for m in told)

    guard = registry.resolve_guard(s, "llama-guard3:11b-vision", pull_missing=False, notify=told.append)
    assert (guard.engine, guard.model_path, guard.revision) == ("mllama", path, COMMIT)
    assert guard.address == f"hf://{GUARD_REPO}" and guard.spec is not None and guard.spec.quantisation == "Q4_K_M"
    assert registry.file_sha256(guard.model_path, s.cache_dir) == digest  # hashed once, at conversion
    assert [c.ok for c in registry.verify(s, spec)] == [True]
    # Here now: a second pull asks nothing of the Hub.
    before = len(registry_server.seen)
    registry.pull(s, spec)
    assert len(registry_server.seen) == before


def test_no_token_for_a_gated_checkpoint_is_one_line_before_any_download(hub, registry_server):
    s = settings()
    with pytest.raises(ModelError) as caught:
        registry.pull(s, s.model("llama-guard3:11b-vision"))
    line = str(caught.value)
    assert "\n" not in line and caught.value.exit_code == ExitCode.USAGE
    assert f"accept the licence at {registry_server.url}/{GUARD_REPO}" in line and "hf auth login" in line
    assert registry_server.requests("cdn") == []
    # A token whose account has not accepted the licence: the Hub answers 403 for the files.
    with pytest.raises(ModelError, match="token was refused") as caught:
        registry.pull(settings(HF_TOKEN="hf_not_accepted"), s.model("llama-guard3:11b-vision"))
    assert f"{registry_server.url}/{GUARD_REPO}" in str(caught.value)


def test_a_cut_checkpoint_download_resumes_on_the_next_pull(hub, registry_server):
    blob = weights(registry_server)
    registry_server.cuts[blob] = [100_000] * (download.RETRIES + 1)
    s = settings(HF_TOKEN=TOKEN)
    spec = s.model("llama-guard3:11b-vision")
    with pytest.raises(DownloadError, match="run the same command again"):
        registry.pull(s, spec)
    assert not registry.is_present(s, spec)
    assert "partial" in _listing_state(s, spec)
    [path] = registry.pull(s, spec)
    assert path.is_file()
    ranges = [r.headers.get("Range") for r in registry_server.requests("cdn", blob)]
    assert ranges[-1] == f"bytes={100_000 * (download.RETRIES + 1)}-"


def _listing_state(s, spec) -> str:
    [file] = registry.locate(s, spec)
    return f"partial {file.partial}" if file.partial else "none"


def test_an_interrupted_conversion_leaves_no_half_file_and_resumes_from_the_download(
    hub, registry_server, monkeypatch
):
    from llamadoc.engines.mllama import convert

    real = convert._encode
    calls = {"n": 0}

    def dies_midway(values, ggml_type):
        calls["n"] += 1
        if calls["n"] == 40:
            raise OSError(28, "No space left on device")
        return real(values, ggml_type)

    monkeypatch.setattr(convert, "_encode", dies_midway)
    s = settings(HF_TOKEN=TOKEN)
    spec = s.model("llama-guard3:11b-vision")
    target = checkpoint.gguf_path(s, checkpoint.HfRepoRef(GUARD_REPO), "Q4_K_M")
    with pytest.raises(OSError):
        registry.pull(s, spec)
    assert not target.exists() and not target.with_name(target.name + ".part").exists()
    downloaded = s.models_dir / "checkpoints" / GUARD_REPO / COMMIT / "model.safetensors"
    assert downloaded.is_file()  # kept for the next run

    monkeypatch.setattr(convert, "_encode", real)
    target.with_name(target.name + ".part").write_bytes(b"left by a killed process")
    gets = len(registry_server.requests("cdn", weights(registry_server)))
    [path] = registry.pull(s, spec)
    assert path == target and read_header(path).architecture == "mllama"
    assert len(registry_server.requests("cdn", weights(registry_server))) == gets  # not downloaded again
    assert not target.with_name(target.name + ".part").exists()


def test_keep_source_and_another_quantisation(hub, registry_server):
    s = settings(HF_TOKEN=TOKEN)
    spec = s.model("llama-guard3:11b-vision")
    [q8] = registry.pull(s, spec, quant="Q8_0", keep_source=True)
    assert q8.name == "Llama-Guard-3-11B-Vision-Q8_0.gguf"
    assert (s.models_dir / "checkpoints" / GUARD_REPO / COMMIT / "model.safetensors").is_file()
    # The entry wants Q4_K_M; until that is here, the Q8_0 one is used, and said so.
    guard = registry.resolve_guard(s, "llama-guard3:11b-vision", pull_missing=False, notify=print)
    assert guard.model_path == q8 and guard.spec is not None and guard.spec.quantisation == "Q8_0"
    gets = len(registry_server.requests("cdn", weights(registry_server)))
    [q4] = registry.pull(s, spec, quant="Q4_K_M")
    assert q4.name.endswith("-Q4_K_M.gguf")
    assert len(registry_server.requests("cdn", weights(registry_server))) == gets  # converted from the kept copy
    removal = registry.remove(s, spec)
    assert not q8.exists() and not q4.exists() and not (s.models_dir / "checkpoints" / GUARD_REPO).exists()
    assert removal.freed > 0 and not list(s.models_dir.rglob("*.gguf*"))


def test_what_is_not_a_vision_checkpoint_is_refused_before_the_weights(registry_server, model_env, tmp_path):
    text = tmp_path / "text"
    text.mkdir()
    (text / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (text / "tokenizer.json").write_text("{}")
    (text / "model.safetensors").write_bytes(b"\0" * 5000)
    registry_server.add_hf_repo("someone/llama-text", text)
    registry_server.add_hf_file("someone/gguf-only", "m-Q4_K_M.gguf", b"GGUF")
    s = settings()
    with pytest.raises(ModelError, match="a 'llama' checkpoint, not Llama 3.2 Vision"):
        registry.pull(s, s.model("hf://someone/llama-text"))
    assert registry_server.requests("cdn", registry_server.hf_files[("someone/llama-text", "model.safetensors")]) == []
    with pytest.raises(ModelError, match="name one, e.g. hf://someone/gguf-only/m-Q4_K_M.gguf"):
        registry.pull(s, s.model("hf://someone/gguf-only"))


def test_too_little_disk_for_the_conversion_says_how_much_is_needed(hub, registry_server, monkeypatch):
    s = settings(HF_TOKEN=TOKEN)
    free = {"bytes": 10**12}
    monkeypatch.setattr(download.shutil, "disk_usage", lambda _p: type("U", (), {"free": free["bytes"]})())
    from llamadoc.engines.mllama import convert

    real = convert.planned_size

    def planned(*args, **kwargs):
        free["bytes"] = 1000  # the download filled the disk
        return real(*args, **kwargs)

    monkeypatch.setattr(convert, "planned_size", planned)
    with pytest.raises(ModelError, match=r"not enough disk space for converting .* it needs \d+\.\d [kM]B in ") as caught:
        registry.pull(s, s.model("llama-guard3:11b-vision"))
    assert caught.value.exit_code == ExitCode.USAGE and "LLAMADOC_HOME" in str(caught.value)


def test_meta_is_the_second_source_when_ollama_answers_404(hub, registry_server):
    s = settings(HF_TOKEN=TOKEN)
    spec = s.model("llama3.2-vision:11b")
    told: list[str] = []
    [path] = registry.pull(s, spec, notify=told.append)  # the loopback registry has no llama3.2-vision
    assert path.parent == s.models_dir / "converted" / VISION_REPO
    assert any("HTTP 404; trying the next source of llama3.2-vision:11b: meta" in m for m in told)
    resolved = registry.resolve(s, "llama3.2-vision:11b")
    assert resolved.engine == "mllama" and resolved.address == f"hf://{VISION_REPO}"
    assert resolved.revision == COMMIT


def test_source_picks_one_and_a_network_error_does_not_fall_through(hub, registry_server):
    s = settings(HF_TOKEN=TOKEN)
    spec = s.model("llama3.2-vision:11b")
    registry.pull(s, spec, source="meta")
    assert registry_server.requests("hub", "/v2/") == []  # Ollama's registry was not asked
    with pytest.raises(ConfigError, match="has no source 'nope'.*its sources: ollama, meta"):
        registry.pull(s, spec, source="nope")
    closed = settings(HF_TOKEN=TOKEN, LLAMADOC_OLLAMA_REGISTRY="http://127.0.0.1:9", LLAMADOC_HOME=str(
        Path(os.environ["LLAMADOC_HOME"]).with_name("other")))
    with pytest.raises(DownloadError, match="cannot reach 127.0.0.1:9"):
        registry.pull(closed, closed.model("llama3.2-vision:11b"))


def test_the_converters_quantisations_are_the_registrys(hub):
    from llamadoc.engines.mllama.convert import QUANTS

    assert set(QUANTS) == set(checkpoint.QUANTS)


def test_a_complete_snapshot_in_the_hub_cache_is_converted_in_place_and_kept(hub, registry_server):
    cache = Path(os.environ["HF_HOME"]) / "hub" / f"models--{GUARD_REPO.replace('/', '--')}"
    for item in CHECKPOINT.iterdir():
        blob = cache / "blobs" / hashlib.sha256(item.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(item.read_bytes())
        link = cache / "snapshots" / COMMIT / item.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../../blobs") / blob.name)
    s = settings(HF_TOKEN=TOKEN)
    told: list[str] = []
    [path] = registry.pull(s, s.model("llama-guard3:11b-vision"), notify=told.append)
    assert read_header(path).architecture == "mllama"
    assert any("the copy of meta-llama/Llama-Guard-3-11B-Vision in the Hugging Face cache" in m for m in told)
    assert registry_server.requests("cdn", weights(registry_server)) == []  # nothing downloaded
    assert (cache / "snapshots" / COMMIT / "model.safetensors").is_file()  # another tool's copy stays
