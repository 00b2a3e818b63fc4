"""Pulling, resolving, checking and deleting models against the loopback registry and Hub."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import gguf
import pytest

from llamadoc import registry
from llamadoc.config import load_settings
from llamadoc.errors import DownloadError, ExitCode, ModelError
from llamadoc.registry import download

if TYPE_CHECKING:  # imported by pytest as a plugin, not here: its asserts stay rewritten
    from tests.registry_server import FakeRegistry

pytest_plugins = ["tests.registry_server"]  # the loopback server and the environment pointing at it

MODELS = """
[models.tiny-hf]
engine = "mtmd"
files.model = "hf://test/tiny/tiny-Q8_0.gguf"
files.mmproj = "hf://test/tiny/mmproj-tiny.gguf"

[models.gated-hf]
engine = "llama"
kind = "guard"
files.model = "hf://meta/gated/guard.gguf"

[models.tiny-vision]
engine = "mllama"
files.model = "ollama://library/tiny-vision:1b"

[models.tiny-llava]
engine = "mtmd"
files.model = "ollama://library/tiny-vision:llava"
"""


@pytest.fixture
def served(registry_server: FakeRegistry, model_env, tmp_path: Path) -> dict[str, bytes]:
    """Files the loopback servers offer, by what the tests call them."""
    files = {
        "model": os.urandom(300_000),
        "mmproj": os.urandom(50_000),
        "guard": os.urandom(20_000),
        "vision": os.urandom(200_000),
        "projector": os.urandom(30_000),
    }
    registry_server.add_hf_file("test/tiny", "tiny-Q8_0.gguf", files["model"])
    registry_server.add_hf_file("test/tiny", "mmproj-tiny.gguf", files["mmproj"])
    registry_server.add_hf_file("meta/gated", "guard.gguf", files["guard"], token="hf_secret")
    # Ollama's current Llama 3.2 Vision: one model layer; and a LLaVA-style model + projector pair.
    template = b"{{ .Prompt }}"
    registry_server.add_ollama_model(
        "library/tiny-vision:1b", {"model": files["vision"], "template": template, "params": b'{"temperature":0}'},
        family="mllama",
    )
    registry_server.add_ollama_model(
        "library/tiny-vision:llava", {"model": files["vision"], "projector": files["projector"]}, family="llama"
    )
    (tmp_path / "models.toml").write_text(MODELS)
    return files


def settings(tmp_path: Path, **env: str):
    return load_settings(tmp_path / "models.toml", {**os.environ, **env})


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_hub_model_is_downloaded_verified_and_resolved(tmp_path, served, registry_server):
    s = settings(tmp_path)
    resolved = registry.resolve(s, "tiny-hf", pull_missing=True)
    assert resolved.engine == "mtmd"
    assert resolved.model_path.read_bytes() == served["model"]
    assert resolved.mmproj_path is not None and resolved.mmproj_path.read_bytes() == served["mmproj"]
    assert resolved.model_path == s.models_dir / "huggingface" / "test" / "tiny" / "tiny-Q8_0.gguf"
    # The digest it was verified against stays beside it, in sha256sum's format.
    assert (tmp_path / "home/models/huggingface/test/tiny/tiny-Q8_0.gguf.sha256").read_text().split()[0] == digest(
        served["model"]
    )
    assert not list(s.models_dir.rglob("*.partial"))
    assert not list(s.models_dir.rglob("*.lock"))  # each lock goes away with its holder
    assert registry.is_present(s, s.model("tiny-hf"))
    # Once here, it is never fetched again.
    before = len(registry_server.seen)
    registry.pull(s, s.model("tiny-hf"))
    assert len(registry_server.seen) == before


def test_a_missing_model_is_not_fetched_unless_asked(tmp_path, served, registry_server):
    with pytest.raises(ModelError, match="not downloaded") as caught:
        registry.resolve(settings(tmp_path), "tiny-hf")
    assert "llamadoc models pull tiny-hf" in str(caught.value)
    assert registry_server.seen == []


def test_a_cut_connection_is_resumed_with_a_range_request(tmp_path, served, registry_server):
    registry_server.cuts[digest(served["model"])] = [100_000, 50_000]
    s = settings(tmp_path)
    registry.pull(s, s.model("tiny-hf"))
    ranges = [r.headers.get("Range") for r in registry_server.requests("cdn", digest(served["model"]))]
    assert ranges == [None, "bytes=100000-", "bytes=150000-"]
    assert registry.resolve(s, "tiny-hf").model_path.read_bytes() == served["model"]


def test_an_interrupted_download_never_looks_complete_and_a_rerun_resumes(tmp_path, served, registry_server):
    registry_server.cuts[digest(served["model"])] = [60_000] * (download.RETRIES + 1)
    s = settings(tmp_path)
    with pytest.raises(DownloadError, match="run the same command again") as caught:
        registry.pull(s, s.model("tiny-hf"))
    assert caught.value.exit_code == ExitCode.FAILED
    target = s.models_dir / "huggingface/test/tiny/tiny-Q8_0.gguf"
    assert not target.exists()
    assert download.partial_path(target).stat().st_size == 60_000 * (download.RETRIES + 1)
    assert not registry.is_present(s, s.model("tiny-hf"))

    registry.pull(s, s.model("tiny-hf"))
    assert target.read_bytes() == served["model"]
    assert registry_server.requests("cdn", digest(served["model"]))[-1].headers["Range"] == "bytes=240000-"


def test_a_partial_download_of_a_file_that_changed_upstream_is_not_resumed(tmp_path, served, registry_server):
    registry_server.cuts[digest(served["model"])] = [60_000] * (download.RETRIES + 1)
    s = settings(tmp_path)
    with pytest.raises(DownloadError):
        registry.pull(s, s.model("tiny-hf"))
    newer = os.urandom(280_000)
    registry_server.add_hf_file("test/tiny", "tiny-Q8_0.gguf", newer)
    registry.pull(s, s.model("tiny-hf"))
    assert registry.resolve(s, "tiny-hf").model_path.read_bytes() == newer
    assert "Range" not in registry_server.requests("cdn", digest(newer))[0].headers


def test_a_digest_mismatch_deletes_the_bad_file_and_says_so(tmp_path, served, registry_server):
    registry_server.corrupt.add(digest(served["model"]))
    s = settings(tmp_path)
    with pytest.raises(DownloadError, match="failed verification.*the bad file was deleted"):
        registry.pull(s, s.model("tiny-hf"))
    target = s.models_dir / "huggingface/test/tiny/tiny-Q8_0.gguf"
    assert not target.exists() and not download.partial_path(target).exists()


def test_a_pinned_sha256_that_the_hub_no_longer_serves_stops_before_downloading(tmp_path, served, registry_server):
    (tmp_path / "models.toml").write_text(
        '[models.pinned]\nengine = "llama"\nkind = "guard"\n'
        f'files.model = {{ source = "hf://test/tiny/tiny-Q8_0.gguf", sha256 = "{"0" * 64}" }}\n'
    )
    s = settings(tmp_path)
    with pytest.raises(DownloadError, match="pins sha256 000000000000"):
        registry.pull(s, s.model("pinned"))
    assert registry_server.requests("cdn") == []


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("hf://test/tiny/nope.gguf", "test/tiny has no file 'nope.gguf'"),
        ("hf://test/nope/x.gguf", "repository test/nope was not found"),
        ("ollama://library/nope:1b", "HTTP 404"),
    ],
)
def test_not_found_is_one_clear_error(tmp_path, served, source, words):
    (tmp_path / "models.toml").write_text(f'[models.x]\nengine = "mllama"\nfiles.model = "{source}"\n')
    s = settings(tmp_path)
    with pytest.raises(DownloadError, match=words) as caught:
        registry.pull(s, s.model("x"))
    assert "\n" not in str(caught.value) and caught.value.hint


def test_a_gated_repository_needs_a_token(tmp_path, served, registry_server):
    s = settings(tmp_path)
    page = f"{registry_server.url}/meta/gated"
    # The user's to fix (exit 2), in one line that survives being wrapped: no hint to lose.
    with pytest.raises(ModelError, match="meta/gated is gated") as caught:
        registry.pull(s, s.model("gated-hf"))
    assert f"accept the licence at {page}" in caught.value.message and "hf auth login" in caught.value.message
    assert caught.value.hint is None and caught.value.exit_code == ExitCode.USAGE
    with pytest.raises(ModelError, match="your Hugging Face token was refused") as caught:
        registry.pull(settings(tmp_path, HF_TOKEN="hf_wrong"), s.model("gated-hf"))
    assert page in caught.value.message

    registry.pull(settings(tmp_path, HF_TOKEN="hf_secret"), s.model("gated-hf"))
    assert registry.is_present(s, s.model("gated-hf"))
    # The token goes to the Hub, never to the CDN the Hub redirects to.
    assert registry_server.requests("hub", "guard.gguf")[-1].headers["Authorization"] == "Bearer hf_secret"
    assert all("Authorization" not in r.headers for r in registry_server.requests("cdn"))


def test_unreachable_servers_are_one_clear_error(tmp_path, served):
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens there
    for env, name in (({"HF_ENDPOINT": closed}, "tiny-hf"), ({"LLAMADOC_OLLAMA_REGISTRY": closed}, "tiny-vision")):
        s = settings(tmp_path, **env)
        with pytest.raises(DownloadError, match="cannot reach 127.0.0.1:9") as caught:
            registry.pull(s, s.model(name))
        assert "LLAMADOC_OFFLINE" in str(caught.value)


@pytest.mark.parametrize("variable", ["LLAMADOC_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_mode_never_touches_the_network(tmp_path, served, registry_server, variable):
    s = settings(tmp_path, **{variable: "1"})
    for name in ("tiny-hf", "tiny-vision"):
        with pytest.raises(ModelError, match=f"model {name} is not downloaded and offline mode is on"):
            registry.resolve(s, name, pull_missing=True)
    assert registry_server.seen == []
    registry.pull(settings(tmp_path), s.model("tiny-hf"))
    assert registry.resolve(s, "tiny-hf").model_path.is_file()  # what is here works offline


def test_a_full_disk_is_refused_before_downloading(tmp_path, served, registry_server, monkeypatch):
    monkeypatch.setattr(download.shutil, "disk_usage", lambda _path: _Usage(free=1000))
    s = settings(tmp_path)
    with pytest.raises(ModelError, match="not enough disk space") as caught:
        registry.pull(s, s.model("tiny-hf"))
    assert "LLAMADOC_HOME" in str(caught.value)
    assert registry_server.requests("cdn") == []


def test_a_disk_that_fills_up_mid_download_keeps_what_arrived(tmp_path, served, monkeypatch):
    original = download._Partial.append

    def full_after_100k(self, fh, chunk):
        if self.size >= 100_000:
            raise download.write_error(OSError(errno.ENOSPC, "No space left on device"), self.path.parent)
        original(self, fh, chunk)

    monkeypatch.setattr(download, "CHUNK", 50_000)
    monkeypatch.setattr(download._Partial, "append", full_after_100k)
    s = settings(tmp_path)
    with pytest.raises(DownloadError, match="the disk is full") as caught:
        registry.pull(s, s.model("tiny-hf"))
    assert "free some space" in str(caught.value)
    target = s.models_dir / "huggingface/test/tiny/tiny-Q8_0.gguf"
    assert download.partial_path(target).stat().st_size == 100_000 and not target.exists()


class _Usage:
    def __init__(self, free: int) -> None:
        self.free = free


def test_an_ollama_model_comes_as_its_manifest_and_blobs(tmp_path, served, registry_server):
    s = settings(tmp_path)
    resolved = registry.resolve(s, "tiny-vision", pull_missing=True)
    store = s.models_dir / "ollama"
    host = registry_server.url.removeprefix("http://")
    manifest = json.loads((store / "manifests" / host / "library/tiny-vision/1b").read_text())
    model_layer = next(layer for layer in manifest["layers"] if layer["mediaType"].endswith(".model"))
    # Ollama's own layout: the blob is named by its digest, and is the GGUF the engine loads.
    assert resolved.model_path == store / "blobs" / model_layer["digest"].replace(":", "-")
    assert resolved.model_path.read_bytes() == served["vision"]
    assert resolved.engine == "mllama" and resolved.mmproj_path is None  # the one-file layout
    assert resolved.extras["template"].read_bytes() == b"{{ .Prompt }}"
    assert json.loads(resolved.extras["params"].read_text()) == {"temperature": 0}
    for blob in [manifest["config"], *manifest["layers"]]:
        assert (store / "blobs" / blob["digest"].replace(":", "-")).is_file()
    accept = registry_server.requests("hub", "/manifests/1b")[0].headers["Accept"]
    assert accept == "application/vnd.docker.distribution.manifest.v2+json"


def test_a_manifest_with_a_projector_layer_gives_the_projector_too(tmp_path, served, registry_server):
    s = settings(tmp_path)
    resolved = registry.resolve(s, "tiny-llava", pull_missing=True)
    assert resolved.engine == "mtmd"
    assert resolved.mmproj_path is not None and resolved.mmproj_path.read_bytes() == served["projector"]
    # The model layer both tags share was downloaded once.
    vision = digest(served["vision"])
    registry.resolve(s, "tiny-vision", pull_missing=True)
    assert len(registry_server.requests("cdn", vision)) == 1


def test_an_ollama_blob_is_resumed_and_verified(tmp_path, served, registry_server):
    vision = digest(served["vision"])
    registry_server.cuts[vision] = [70_000]
    s = settings(tmp_path)
    registry.pull(s, s.model("tiny-vision"))
    assert [r.headers.get("Range") for r in registry_server.requests("cdn", vision)] == [None, "bytes=70000-"]
    registry.remove(s, s.model("tiny-vision"))

    registry_server.corrupt.add(vision)
    with pytest.raises(DownloadError, match="tiny-vision:1b model layer failed verification"):
        registry.pull(s, s.model("tiny-vision"))
    assert not registry.is_present(s, s.model("tiny-vision"))  # no manifest without all its blobs


def test_an_existing_ollama_store_is_used_in_place_without_the_network(tmp_path, served, registry_server, ollama_store):
    blobs = ollama_store("library/tiny-vision:1b", {"model": b"GGUF one file"})
    s = settings(tmp_path, LLAMADOC_OFFLINE="1")
    resolved = registry.resolve(s, "tiny-vision", pull_missing=True)
    assert resolved.model_path == blobs["model"]  # no copy
    assert registry_server.seen == [] and not (s.models_dir / "ollama").exists()
    [file] = registry.locate(s, s.model("tiny-vision"))
    assert file.shared and file.place == "ollama"
    # llamadoc never deletes from Ollama's store.
    removal = registry.remove(s, s.model("tiny-vision"))
    assert removal.removed == [] and removal.kept[0][0] == blobs["model"]
    assert blobs["model"].is_file()


def test_an_incomplete_ollama_store_is_not_used(tmp_path, served, ollama_store):
    blobs = ollama_store("library/tiny-vision:1b", {"model": b"GGUF one file"})
    blobs["model"].unlink()
    s = settings(tmp_path)
    registry.pull(s, s.model("tiny-vision"))
    assert registry.resolve(s, "tiny-vision").model_path.read_bytes() == served["vision"]
    assert registry.resolve(s, "tiny-vision").revision.startswith("sha256:")  # the manifest's digest


def test_the_hugging_face_cache_is_used_in_place(tmp_path, served, registry_server):
    cache = Path(os.environ["HF_HOME"]) / "hub" / "models--test--tiny"
    for name in ("tiny-Q8_0.gguf", "mmproj-tiny.gguf"):
        data = served["model" if name.startswith("tiny") else "mmproj"]
        (cache / "blobs").mkdir(parents=True, exist_ok=True)
        (cache / "blobs" / digest(data)).write_bytes(data)
        link = cache / "snapshots" / "c0ffee" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../../blobs") / digest(data))
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text("c0ffee")
    s = settings(tmp_path, LLAMADOC_OFFLINE="1")
    resolved = registry.resolve(s, "tiny-hf", pull_missing=True)
    assert resolved.model_path == cache / "snapshots" / "c0ffee" / "tiny-Q8_0.gguf"
    assert registry_server.seen == []
    # Its expected digest is the blob's name; verify checks it and never deletes the Hub cache's file.
    checks = registry.verify(s, s.model("tiny-hf"))
    assert [c.ok for c in checks] == [True, True]


def test_verify_finds_a_damaged_file_and_deletes_llamadocs_copy(tmp_path, served):
    s = settings(tmp_path)
    path = registry.resolve(s, "tiny-hf", pull_missing=True).model_path
    assert all(c.ok for c in registry.verify(s, s.model("tiny-hf")))
    with path.open("r+b") as fh:  # bit rot: same size, same mtime is not needed to matter
        fh.write(b"\0")
    model_check = next(c for c in registry.verify(s, s.model("tiny-hf")) if c.file.role == "model")
    assert model_check.ok is False and model_check.deleted and not path.exists()
    registry.pull(s, s.model("tiny-hf"))
    assert path.read_bytes() == served["model"]


def test_remove_deletes_llamadocs_files_but_not_those_another_model_uses(tmp_path, served):
    (tmp_path / "models.toml").write_text(MODELS + '[models.alias]\nengine = "mllama"\nfiles.model = "ollama://tiny-vision:1b"\n')
    s = settings(tmp_path)
    for name in ("tiny-hf", "tiny-vision", "tiny-llava"):
        registry.pull(s, s.model(name))
    removal = registry.remove(s, s.model("tiny-hf"))
    assert {p.name for p in removal.removed} >= {"tiny-Q8_0.gguf", "tiny-Q8_0.gguf.sha256", "mmproj-tiny.gguf"}
    assert removal.freed > len(served["model"]) + len(served["mmproj"])
    assert not registry.is_present(s, s.model("tiny-hf"))

    assert registry.remove(s, s.model("tiny-vision")).removed == []  # 'alias' still uses it
    removal = registry.remove(s, s.model("tiny-llava"))
    # Its projector goes; the model layer it shares with tiny-vision:1b stays.
    assert any(p.name == f"sha256-{digest(served['projector'])}" for p in removal.removed)
    assert registry.resolve(s, "tiny-vision").model_path.read_bytes() == served["vision"]


def test_concurrent_pulls_download_each_file_once(tmp_path, served, registry_server):
    import subprocess
    import sys

    registry_server.delay_s = 0.02  # long enough for both processes to want the same file
    pull = (
        "import sys; from pathlib import Path; from llamadoc import registry;"
        "from llamadoc.config import load_settings; s = load_settings(Path(sys.argv[1]));"
        "[registry.pull(s, s.model(name)) for name in sys.argv[2:]]"
    )
    command = [sys.executable, "-c", pull, str(tmp_path / "models.toml"), "tiny-hf", "tiny-vision"]
    cwd = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    s = settings(tmp_path)
    assert registry.resolve(s, "tiny-hf").model_path.read_bytes() == served["model"]
    assert registry.resolve(s, "tiny-vision").model_path.read_bytes() == served["vision"]
    for data in (served["model"], served["mmproj"], served["vision"]):
        assert len(registry_server.requests("cdn", digest(data))) == 1
    assert not list(s.models_dir.rglob("*.lock"))


def test_progress_bars_appear_only_on_a_terminal(monkeypatch):
    from llamadoc.registry import transfer

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert type(transfer.progress_bar("x.gguf", 10)).__name__ == "_NoBar"  # pytest captures stderr: no terminal
    monkeypatch.setattr(transfer.sys, "stderr", Terminal())
    bar = transfer.progress_bar("x.gguf", 10)
    bar.advance(10)
    bar.close()
    assert type(bar).__name__ == "_RichBar"


def write_mllama_gguf(path: Path) -> Path:
    """The header of Ollama's one-file Llama 3.2 Vision GGUF, with one tiny tensor."""
    w = gguf.GGUFWriter(str(path), "mllama")
    w.add_name("tiny mllama")
    w.add_context_length(131072)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    w.add_uint32("mllama.vision.block_count", 32)
    w.add_uint32("mllama.vision.image_size", 560)
    w.add_string("tokenizer.chat_template", "{{ messages }}")
    import numpy as np

    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_summary_says_what_matters(tmp_path):
    from tests.tinymodels import write_mmproj, write_text_model

    text = registry.gguf_summary(write_text_model(tmp_path / "text.gguf", context=2048))
    assert (text.architecture, text.quantisation, text.context, text.chat_template) == ("llama", "F32", 2048, True)
    assert text.vision is None and text.parameters > 0
    projector = registry.gguf_summary(write_mmproj(tmp_path / "mmproj.gguf"))
    assert projector.architecture == "clip" and projector.vision.startswith("projector (mlp")
    mllama = registry.gguf_summary(write_mllama_gguf(tmp_path / "mllama.gguf"))
    assert (mllama.architecture, mllama.quantisation) == ("mllama", "Q4_K_M")
    assert mllama.vision == "encoder inside the model (32 layers, 560 px tiles)"
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf")
    with pytest.raises(ModelError, match="not a GGUF file"):
        registry.gguf_summary(tmp_path / "junk.gguf")


def test_a_local_path_is_a_model_too(tmp_path):
    from tests.tinymodels import write_mmproj, write_text_model

    s = load_settings(None, {"LLAMADOC_HOME": str(tmp_path)})
    one_file = registry.resolve(s, str(write_mllama_gguf(tmp_path / "m.gguf")))
    assert one_file.engine == "mllama" and one_file.mmproj_path is None
    model = str(write_text_model(tmp_path / "t.gguf"))
    with pytest.raises(ModelError, match="needs its vision projector"):
        registry.resolve(s, model)
    pair = registry.resolve(s, model, mmproj=str(write_mmproj(tmp_path / "p.gguf")))
    assert pair.engine == "mtmd" and pair.mmproj_path == tmp_path / "p.gguf"
    with pytest.raises(ModelError, match="does not exist"):
        registry.resolve(s, str(tmp_path / "missing.gguf"))


def test_content_addressed_blobs_are_not_hashed_again(tmp_path):
    digest = "ab" * 32
    blob = tmp_path / f"sha256-{digest}"
    blob.write_bytes(b"model bytes")
    link = tmp_path / "model.gguf"
    link.symlink_to(blob)
    assert registry.file_sha256(link, tmp_path / "cache") == digest  # taken from the store's name
    plain = tmp_path / "plain.gguf"
    plain.write_bytes(b"model bytes")
    assert registry.file_sha256(plain, tmp_path / "cache") == hashlib.sha256(b"model bytes").hexdigest()


def test_a_lock_file_goes_away_with_its_holder_and_a_waiter_takes_a_live_one(tmp_path):
    import threading

    target = tmp_path / "m.gguf"
    lock = download.lock_path(target)
    lock.write_text("")  # left behind by an older llamadoc
    told: list[str] = []
    release = threading.Event()
    seen: list[bool] = []

    def second() -> None:
        with download.locked(target, "waiting for the first", told.append):
            seen.append(lock.exists())  # the waiter holds a lock file that is at the path, not the deleted one

    with download.locked(target, "waiting", told.append):
        waiter = threading.Thread(target=second)
        waiter.start()
        release.wait(0.3)  # the waiter is blocked on the same file meanwhile
        assert waiter.is_alive()
    waiter.join(10)
    assert told == ["waiting for the first"] and seen == [True]
    assert not lock.exists()
