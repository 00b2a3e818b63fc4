"""A running `llamadoc serve` as the Reader's models: remote engines behind the engine protocol.

With ``--server URL`` (or LLAMADOC_HOST) the CLI runs the same Reader and pipeline as a
local run; only the engines differ. Documents are opened, rasterised, cached and written
here; each page image travels to the server's vision engine, and each Llama Guard prompt
(rendered here, under this run's policy) to the server's guard. The server's
/v1/engine/* routes speak the small JSON protocol of models.wire, shared with
llamadoc.server. Only the standard library talks HTTP here: the client needs nothing the
CLI does not already install.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamadoc import interrupt
from llamadoc.config import ModelSpec, Settings
from llamadoc.engines.base import GenerationRequest, GenerationResponse, GuardOutput, JudgeRequest
from llamadoc.errors import EngineError, GuardError, LlamadocError, ModelError, UsageError
from llamadoc.guard import Guard, GuardPolicy
from llamadoc.models.base import EngineNeeds, describe
from llamadoc.models.wire import error_from_wire, judge_to_wire, request_to_wire, response_from_wire
from llamadoc.registry import ResolvedModel
from llamadoc.results import ModelInfo
from llamadoc.store import Store

CONNECT_TIMEOUT = 10.0  # seconds to reach the server at all; answers may take minutes
BUSY_PATIENCE = 600.0  # seconds a request keeps retrying a server whose queue is full


# -- the client --------------------------------------------------------------------------

def server_url(value: str) -> str:
    """A server address as the user gives it (``host:port`` or a URL) -> its base URL."""
    url = value.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--server {value!r} is not an http(s) address", hint="e.g. http://127.0.0.1:11435")
    return url


class Client:
    """JSON over HTTP to one server; errors become the library's, each one line."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        self.url = server_url(url)
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def call(self, path: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """GET (no body) or POST; a full queue (503) is retried as its Retry-After says."""
        data = json.dumps(body).encode() if body is not None else None
        deadline = time.monotonic() + BUSY_PATIENCE
        while True:
            request = urllib.request.Request(self.url + path, data=data, headers=self._headers)
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return self._answer(response.read())
            except urllib.error.HTTPError as err:
                wait = _retry_after(err)
                if wait is None or time.monotonic() + wait > deadline:
                    raise self._failure(err) from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
                reason = getattr(err, "reason", err)
                raise EngineError(f"cannot reach the llamadoc server at {self.url} ({reason})",
                                  hint="start it with `llamadoc serve`, or unset LLAMADOC_HOST to run here") from None
            interrupt.check()
            time.sleep(wait)

    def _answer(self, data: bytes) -> Any:
        try:
            return json.loads(data)
        except (ValueError, RecursionError):  # an HTML page: another server at this address
            raise EngineError(f"the server at {self.url} did not answer as a llamadoc server (its answer is not "
                              "JSON)", hint="check the address: llamadoc serve prints it when it starts") from None

    def _failure(self, err: urllib.error.HTTPError) -> LlamadocError:
        try:
            body = json.loads(err.read())
        except (ValueError, RecursionError, OSError, http.client.HTTPException):
            body = {}
        if not isinstance(body, dict):
            body = {}
        if err.code == 401:
            return UsageError(f"the llamadoc server at {self.url} refused the API key",
                              hint="set LLAMADOC_API_KEY to the key `llamadoc serve --api-key` was given")
        known = error_from_wire(body)
        if known is not None:
            return known
        message = body.get("error") if isinstance(body.get("error"), str) else f"HTTP {err.code}"
        return EngineError(f"the llamadoc server at {self.url} failed: {message}")


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    if err.code != 503:
        return None
    try:
        return max(0.1, float(err.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0


@dataclass(frozen=True)
class ServerInfo:
    """What /v1/engine/info says of the server's models."""

    model: dict[str, Any]
    guard: dict[str, Any] | None
    max_batch: int


class ConcurrentBatch:
    """generate_batch as concurrent generate calls, each its own request to an engine that decodes
    them together. When one fails the batch raises its error, as a local engine's batch does, and
    the pipeline then asks each request alone: the answers already given are kept for that."""

    def __init__(self) -> None:
        self._answered: dict[int, GenerationResponse] = {}

    def _generate(self, request: GenerationRequest) -> GenerationResponse:
        raise NotImplementedError

    def generate(self, request: GenerationRequest) -> GenerationResponse:
        kept = self._answered.pop(id(request), None)
        return kept if kept is not None else self._generate(request)

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResponse]:
        results: list[GenerationResponse | LlamadocError | None] = [None] * len(requests)

        def one(i: int) -> None:
            try:
                results[i] = self.generate(requests[i])
            except LlamadocError as err:
                results[i] = err

        # Daemon threads, not an executor: a Ctrl-C must not wait for answers nobody will read.
        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        failed = next((r for r in results if isinstance(r, LlamadocError)), None)
        if failed is not None:
            self._answered = {id(q): r for q, r in zip(requests, results, strict=True)
                              if isinstance(r, GenerationResponse)}
            raise failed
        return [r for r in results if isinstance(r, GenerationResponse)]


class RemoteVisionEngine(ConcurrentBatch):
    """The server's vision engine: a batch goes as concurrent requests, which the server decodes
    together (continuous batching on mllama)."""

    max_images = 1
    supports_schema = True

    def __init__(self, client: Client, info: ServerInfo, guard_mode: str) -> None:
        super().__init__()
        self._client, self._guard_mode = client, guard_mode
        self.name = str(info.model["engine"])
        self.max_batch = info.max_batch
        loaded = client.call("/v1/engine/load", {"guard": guard_mode})
        self.gpu_layers, self.device = int(loaded["gpu_layers"]), str(loaded["device"])

    def _generate(self, request: GenerationRequest) -> GenerationResponse:
        return response_from_wire(self._client.call("/v1/engine/generate", request_to_wire(request, self._guard_mode)))

    def close(self) -> None:
        self._answered.clear()


class RemoteGuardEngine:
    """The server's guard model, running the prompts this run's Guard renders."""

    def __init__(self, client: Client) -> None:
        self._client = client
        loaded = client.call("/v1/engine/guard/load", {})
        self.model_name, self.sees_images, self.n_ctx = loaded["model_name"], loaded["sees_images"], loaded["n_ctx"]
        self._counts: dict[str, int] = {}  # a task prompt is counted once per page otherwise

    def count_tokens(self, text: str) -> int:
        if text not in self._counts:
            self._counts[text] = int(self._client.call("/v1/engine/guard/tokens", {"text": text})["count"])
        return self._counts[text]

    def split(self, text: str, max_tokens: int) -> list[str]:
        return list(self._client.call("/v1/engine/guard/split", {"text": text, "max_tokens": max_tokens})["pieces"])

    def judge(self, request: JudgeRequest) -> GuardOutput:
        out = self._client.call("/v1/engine/guard/judge", judge_to_wire(request))
        return GuardOutput(text=out["text"], p_unsafe=out["p_unsafe"])

    def close(self) -> None:
        self._counts.clear()


class ServerModels:
    """The Models of a run on a running server (``Reader(models=ServerModels(...))``). Load
    options (--gpu-layers, --threads, --ctx) are the server's own: it loaded the model."""

    def __init__(self, url: str, settings: Settings, model: str | None = None, api_key: str | None = None,
                 guard: GuardPolicy | None = None) -> None:
        self.client = Client(url, api_key)
        self._settings, self._model = settings, model
        # The policy this run screens under, with the server's guard model; the server refuses
        # an unscreened run when it screens its own requests.
        self._policy = guard or GuardPolicy()
        self._info: ServerInfo | None = None
        self._lock = threading.Lock()
        self._engine: RemoteVisionEngine | None = None
        self._guard: Guard | None = None

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def policy(self) -> GuardPolicy:
        return self._policy

    @property
    def server(self) -> ServerInfo:
        if self._info is None:
            body = self.client.call("/v1/engine/info", timeout=CONNECT_TIMEOUT)
            self._info = ServerInfo(model=body["model"], guard=body["guard"], max_batch=int(body["max_batch"]))
        return self._info

    def resolve(self) -> ResolvedModel:
        m = self.server.model
        if self._model is not None and self._model not in m["names"]:
            raise ModelError(f"the llamadoc server at {self.client.url} serves {m['name']}, not {self._model}",
                             hint="drop --model, or start a server for that model")
        spec = ModelSpec(name=m["name"], engine=m["engine"], quantisation=m["quantisation"],
                         max_pixels=m["max_pixels"], defined_in=f"the server at {self.client.url}")
        return ResolvedModel(name=m["name"], engine=m["engine"], model_path=Path(m["path"]),
                             mmproj_path=Path(m["mmproj"]) if m["mmproj"] else None, spec=spec)

    def sha256(self) -> str:
        return str(self.server.model["sha256"])

    def vision_engine(self, needs: EngineNeeds) -> RemoteVisionEngine:
        with self._lock:
            if self._engine is None:
                self._engine = RemoteVisionEngine(self.client, self.server, self._policy.mode)
            return self._engine

    def guard(self) -> Guard | None:
        if self._policy.mode == "off":
            return None
        with self._lock:
            if self._guard is None:
                self._guard = self._server_guard()
            return self._guard

    def _server_guard(self) -> Guard:
        policy, g = self._policy, self.server.guard
        if g is None:
            raise GuardError(f"the llamadoc server at {self.client.url} runs without a guard",
                             hint="start it with --guard block, or pass --guard off to go unscreened")
        if policy.model is not None and policy.model not in g["names"]:
            raise GuardError(f"the llamadoc server at {self.client.url} screens with {g['name']}, "
                             f"not {policy.model}", hint="drop --guard-model")
        return Guard(load=lambda: RemoteGuardEngine(self.client), policy=policy, name=g["name"],
                     store=Store(self.settings.cache_dir / "guard"), identity=g["identity"])

    def info(self) -> ModelInfo:
        return describe(self.resolve(), self.sha256(), self._engine)

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None
            if self._guard is not None:
                self._guard.close()
