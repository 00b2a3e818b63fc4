"""A loopback stand-in for the Ollama registry and the Hugging Face Hub, so tests never use the network.

It serves the subset llamadoc talks to: Ollama's distribution API (manifests, blobs
redirected to a CDN, as registry.ollama.ai does) and the Hub's
/<repo>/resolve/<revision>/<file> (a HEAD answered with the Hub's metadata headers
and a redirect to the CDN) and /api/models/<repo>[/revision/<rev>] (the repository's
commit, gate and file list, as HfApi.model_info reads them; public even for a gated
repository, whose files alone want a token, as on the Hub). The CDN is a second server, another origin, so a test
can see that tokens never follow a redirect. Blobs honour Range requests, and can be
cut off mid-transfer, corrupted or slowed down; every request is recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"
MEDIA = "application/vnd.ollama.image."


@dataclass
class Seen:
    server: str  # "hub" (registry and Hub API) or "cdn"
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class FakeRegistry:
    blobs: dict[str, bytes] = field(default_factory=dict)  # sha256 hex -> bytes
    manifests: dict[tuple[str, str, str], bytes] = field(default_factory=dict)  # (namespace, name, tag)
    hf_files: dict[tuple[str, str], str] = field(default_factory=dict)  # (repo_id, filename) -> blob hex
    tokens: dict[str, str] = field(default_factory=dict)  # repo_id -> the token a gated repository wants
    commits: dict[str, str] = field(default_factory=dict)  # repo_id -> the commit its main is at
    cuts: dict[str, list[int]] = field(default_factory=dict)  # hex -> byte counts after which to drop, in turn
    corrupt: set[str] = field(default_factory=set)  # hex served with one byte changed
    status: dict[str, int] = field(default_factory=dict)  # path -> forced HTTP status
    delay_s: float = 0.0  # pause per 64 kB sent, so that concurrent transfers overlap
    seen: list[Seen] = field(default_factory=list)

    def start(self) -> None:
        self._servers = {name: _Server(self, name) for name in ("hub", "cdn")}
        for server in self._servers.values():
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def stop(self) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._servers['hub'].server_port}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._servers['cdn'].server_port}"

    def add_blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return digest

    def add_ollama_model(self, ref: str, layers: dict[str, bytes], family: str | None = None) -> dict[str, str]:
        """Serve ``namespace/name:tag`` with one layer per kind (model, projector, template, ...).

        ``family``: model_family / model_families of the config blob, as Ollama writes it.
        """
        path, _, tag = ref.partition(":")
        namespace, _, name = path.rpartition("/")
        digests = {kind: self.add_blob(data) for kind, data in layers.items()}
        config_doc: dict[str, object] = {"model_format": "gguf"}
        if family:
            config_doc.update(model_family=family, model_families=[family], file_type="Q4_K_M")
        config = self.add_blob(json.dumps(config_doc).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "digest": f"sha256:{config}", "size": len(self.blobs[config])},
            "layers": [{"mediaType": MEDIA + kind, "digest": f"sha256:{digests[kind]}", "size": len(layers[kind])}
                       for kind in layers],
        }
        self.manifests[(namespace or "library", name, tag or "latest")] = json.dumps(manifest).encode()
        return digests

    def add_hf_file(self, repo_id: str, filename: str, data: bytes, token: str | None = None) -> str:
        digest = self.add_blob(data)
        self.hf_files[(repo_id, filename)] = digest
        if token:
            self.tokens[repo_id] = token
        return digest

    def add_hf_repo(self, repo_id: str, folder: Path, token: str | None = None, commit: str = COMMIT) -> dict[str, str]:
        """Serve every file of ``folder`` (a checkpoint) as repository ``repo_id``; returns name -> sha256."""
        digests = {p.name: self.add_hf_file(repo_id, p.name, p.read_bytes(), token) for p in sorted(folder.iterdir())
                   if p.is_file()}
        self.commits[repo_id] = commit
        return digests

    def requests(self, server: str | None = None, path: str = "") -> list[Seen]:
        return [s for s in self.seen if (server is None or s.server == server) and path in s.path]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeRegistry, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake
        self.name = name


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # the test output stays readable

    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def _route(self) -> None:
        fake = self.server.fake
        headers = {key.title(): value for key, value in self.headers.items()}  # clients differ in case
        fake.seen.append(Seen(self.server.name, self.command, self.path, headers))
        if self.path in fake.status:
            return self._reply(fake.status[self.path], b"forced error")
        if match := re.fullmatch(r"/v2/(.+)/(.+)/manifests/(.+)", self.path):
            return self._manifest(*match.groups())
        if match := re.fullmatch(r"/v2/.+/.+/blobs/sha256:([0-9a-f]{64})", self.path):
            return self._redirect(f"{fake.cdn_url}/blobs/{match.group(1)}")
        if match := re.fullmatch(r"/blobs/([0-9a-f]{64})", self.path):
            return self._blob(match.group(1))
        if match := re.fullmatch(r"/api/models/([^/]+/[^/?]+)(?:/revision/([^/?]+))?(?:\?.*)?", self.path):
            return self._model_info(match.group(1))
        if match := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path):
            return self._resolve(*match.groups())
        self._reply(404, b"no such route")

    def _manifest(self, namespace: str, name: str, tag: str) -> None:
        raw = self.server.fake.manifests.get((namespace, name, tag))
        if raw is None:
            body = json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})
            return self._reply(404, body.encode(), "application/json")
        self._reply(200, raw, "application/vnd.docker.distribution.manifest.v2+json")

    def _model_info(self, repo_id: str) -> None:
        fake = self.server.fake
        files = {name: digest for (repo, name), digest in fake.hf_files.items() if repo == repo_id}
        if not files:
            return self._reply(404, b"", headers={"X-Error-Code": "RepoNotFound"})
        siblings = [
            {"rfilename": name, "size": len(fake.blobs[digest]), "blobId": digest[:40],
             **({"lfs": {"sha256": digest, "size": len(fake.blobs[digest]), "pointerSize": 134}}
                if name.endswith((".safetensors", ".gguf")) else {})}
            for name, digest in sorted(files.items())
        ]
        info = {"id": repo_id, "sha": fake.commits.get(repo_id, COMMIT), "private": False,
                "gated": "manual" if repo_id in fake.tokens else False, "siblings": siblings}
        self._reply(200, json.dumps(info).encode(), "application/json")

    def _resolve(self, repo_id: str, revision: str, filename: str) -> None:
        fake = self.server.fake
        if not any(repo == repo_id for repo, _ in fake.hf_files):
            return self._reply(404, b"", headers={"X-Error-Code": "RepoNotFound"})
        wanted = fake.tokens.get(repo_id)
        given = self.headers.get("Authorization")
        if wanted and given != f"Bearer {wanted}":
            return self._reply(401 if given is None else 403, b"", headers={"X-Error-Code": "GatedRepo"})
        digest = fake.hf_files.get((repo_id, filename))
        if digest is None:
            return self._reply(404, b"", headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
        self._redirect(f"{fake.cdn_url}/blobs/{digest}", {
            "X-Repo-Commit": COMMIT,
            "X-Linked-Etag": f'"{digest}"',
            "X-Linked-Size": str(len(fake.blobs[digest])),
            "ETag": f'"{digest}"',
        })

    def _blob(self, digest: str) -> None:
        fake = self.server.fake
        data = fake.blobs.get(digest)
        if data is None:
            return self._reply(404, b"no such blob")
        if digest in fake.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
            start = int(match.group(1))
            if start >= len(data):
                return self._reply(416, b"", headers={"Content-Range": f"bytes */{len(data)}"})
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if self.command == "HEAD":
            return
        cut = fake.cuts.get(digest)
        if cut:
            self._send(body[: cut.pop(0)])
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)  # the transfer breaks off, as on a flaky network
            return
        self._send(body)

    def _send(self, body: bytes) -> None:
        step = 64 << 10
        for offset in range(0, len(body), step):
            self.wfile.write(body[offset:offset + step])
            if self.server.fake.delay_s:
                time.sleep(self.server.fake.delay_s)
        self.wfile.flush()

    def _redirect(self, location: str, headers: dict[str, str] | None = None) -> None:
        self._reply(302, b"", headers={"Location": location, **(headers or {})})

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain",
               headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@pytest.fixture
def registry_server() -> Iterator[FakeRegistry]:
    fake = FakeRegistry()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def model_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry_server: FakeRegistry) -> dict[str, str]:
    """This process's environment pointed at the loopback server, every folder inside tmp_path."""
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "LLAMADOC_OFFLINE", "HF_HUB_CACHE", "XDG_CACHE_HOME",
                 "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    values = {
        "LLAMADOC_HOME": str(tmp_path / "home"),
        "LLAMADOC_OLLAMA_REGISTRY": registry_server.url,
        "HF_ENDPOINT": registry_server.url,
        "HF_HOME": str(tmp_path / "hf-home"),  # no saved token, no Hub cache of the developer's
        "OLLAMA_MODELS": str(tmp_path / "ollama-store"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    # huggingface_hub reads some variables once, at import: pin them for this process too.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    # Never the developer's saved login: a gated repository must see no token unless a test gives one.
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    from llamadoc.registry import download

    monkeypatch.setattr(download, "RETRY_DELAY_S", 0.0)
    return {**os.environ}


@pytest.fixture
def ollama_store(model_env: dict[str, str], registry_server: FakeRegistry) -> Callable[..., dict[str, Path]]:
    """Writes an Ollama installation's folder at OLLAMA_MODELS, as `ollama pull` leaves it."""

    def write(ref: str, layers: dict[str, bytes]) -> dict[str, Path]:
        root = Path(model_env["OLLAMA_MODELS"])
        path, _, tag = ref.partition(":")
        host = registry_server.url.removeprefix("http://")
        blobs, entries = {}, []
        for kind, data in layers.items():
            digest = hashlib.sha256(data).hexdigest()
            blobs[kind] = root / "blobs" / f"sha256-{digest}"
            blobs[kind].parent.mkdir(parents=True, exist_ok=True)
            blobs[kind].write_bytes(data)
            entries.append({"mediaType": MEDIA + kind, "digest": f"sha256:{digest}", "size": len(data)})
        manifest = root / "manifests" / host / path / tag
        manifest.parent.mkdir(parents=True)
        manifest.write_text(json.dumps({"schemaVersion": 2, "layers": entries}))
        return blobs

    return write
