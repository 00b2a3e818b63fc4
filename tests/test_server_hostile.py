"""Hostile HTTP against a real `llamadoc serve` on loopback: each probe of issue 21's security review
(an attacker on the machine, or a web page in the user's browser) as a test. Every probe checks the
status, that the answer is one line, that the server's log holds no traceback, and that the server
still answers a well-behaved request afterwards.

The servers run as users run them (`python -m llamadoc serve`, their stderr in a file), with the
tiny generated models; a `gs` stand-in on PATH logs any run, which is how Pillow's PostScript
plugin would have decoded an EPS. A few probes need to see inside the server (its engine, its
limits) and use the in-process server of tests/server_helpers.py.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llamadoc.errors import UsageError
from llamadoc.guard import FairLock, GuardPolicy
from llamadoc.server.batcher import Cancelled
from llamadoc.server.options import ServeOptions
from tests.conftest import make_image, make_pdf
from tests.server_helpers import Served, offline_home, serving

ROOT = Path(__file__).resolve().parents[1]
ORIGIN_ENV = "https://app.example.com"
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
       b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n")
# An answer the grammar keeps going: at least 1,000 integers (a few thousand tokens).
LONG = {"type": "object", "required": ["n"],
        "properties": {"n": {"type": "array", "items": {"type": "integer"}, "minItems": 1000}}}
LONGER = {"type": "array", "minItems": 1000, "items": {"type": "array", "items": {"type": "integer"}, "minItems": 1000}}


# -- the servers ---------------------------------------------------------------------------------

class Server:
    """`llamadoc serve` in its own process on a free loopback port; its stderr goes to a file."""

    def __init__(self, args: list[str], home: Path, log: Path, env: dict[str, str]) -> None:
        self.log_path = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llamadoc", "serve", "--port", "0", "--threads", "1", *args],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
            env={**os.environ, **env, "LLAMADOC_HOME": str(home), "LLAMADOC_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
                 "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 60
        while "at http://" not in self.log():
            assert self.proc.poll() is None and time.monotonic() < deadline, f"did not start:\n{self.log()}"
            time.sleep(0.05)
        self.url = "http://" + self.log().split("at http://", 1)[1].split()[0]
        self.port = int(self.url.rsplit(":", 1)[1])
        self.name = Path(args[args.index("--model") + 1]).name
        self.answers_text = True  # False where the guard withholds every answer

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, wait: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def answers(self) -> None:
        """A well-behaved request still gets its answer (only the version where the guard refuses all)."""
        assert httpx.get(f"{self.url}/api/version", timeout=30).status_code == 200
        if self.answers_text:
            r = httpx.post(f"{self.url}/api/generate", timeout=60, json={
                "model": self.name, "prompt": "?", "stream": False, "options": {"num_predict": 2}})
            assert r.status_code == 200, r.text
        assert "Traceback" not in self.log(), self.log()


@pytest.fixture(scope="module")
def gs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `gs` on PATH that logs every run to $GS_LOG: Pillow's EPS decoder runs `gs`."""
    folder = tmp_path_factory.mktemp("gs")
    gs = folder / "gs"
    gs.write_text('#!/bin/sh\necho "gs $*" >> "$GS_LOG"\nexit 1\n')
    gs.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def gs_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gs-log") / "ran.log"


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory, gs_dir: Path, gs_log: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []
    env = {"PATH": f"{gs_dir}{os.pathsep}{os.environ['PATH']}", "GS_LOG": str(gs_log), "LLAMADOC_ORIGINS": ORIGIN_ENV}

    def launch(*args: str) -> Server:
        folder = tmp_path_factory.mktemp("server")
        server = Server(list(args), folder / "home", folder / "stderr.log", env)
        started.append(server)
        return server

    yield launch
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def plain(launch: Callable[..., Server], text_model: Path, mmproj: Path) -> Server:
    """No guard; --max-tokens 8, 5 pages a document, 64 KiB of text a request, one extra Host name."""
    return launch("--model", str(text_model), "--mmproj", str(mmproj), "--guard", "off", "--max-tokens", "8",
                  "--max-pages", "5", "--max-prompt-kb", "64", "--allow-host", "llamadoc.lan", "--preload",
                  "--keep-alive", "-1")


def one_line(r: httpx.Response) -> str:
    """The error's message, checked to be one line."""
    body = r.json()
    error = body["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert isinstance(message, str) and message and "\n" not in message, body
    return message


def expect(server: Server, r: httpx.Response, status: int, words: str = "") -> str:
    assert r.status_code == status, r.text
    message = one_line(r)
    assert words in message, message
    server.answers()
    return message


def png(size: tuple[int, int], mode: str = "L") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, 255).save(buf, "PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says width x height (its pixels never get that far): what a server
    that decodes first would spend gigabytes on."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" + b"\xff" * width  # filter byte + one grey row; the rest is missing
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * 4)) + chunk(b"IEND", b""))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wire(**fields: Any) -> dict[str, Any]:
    """An /v1/engine/generate request as models.remote sends one."""
    return {"prompt": "?", "images": [], "system": None, "schema": None, "max_tokens": 4, "guard": "off",
            "sampling": {"temperature": 0.0, "top_p": 1.0, "seed": 0}, **fields}


# -- H1: only the formats llamadoc lists are decoded ---------------------------------------------

def test_postscript_never_reaches_ghostscript(plain: Server, gs_dir: Path, gs_log: Path, text_model: Path,
                                              mmproj: Path, tmp_path: Path) -> None:
    eps = b64(EPS)
    name = plain.name
    probes = [
        ("/api/chat", {"model": name, "stream": False, "messages": [{"role": "user", "content": "?", "images": [eps]}]}),
        ("/api/generate", {"model": name, "stream": False, "prompt": "?", "images": [eps]}),
        ("/v1/chat/completions", {"model": name, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "?"}, {"type": "image_url", "image_url": {"url": f"data:image/eps;base64,{eps}"}}]}]}),
        ("/v1/engine/generate", wire(images=[eps])),
        ("/v1/engine/guard/judge", {"prompt": "?", "answer_prefix": "", "grammar": "", "max_tokens": 1,
                                    "unsafe_word": "unsafe", "image": eps}),
        # In a conversation's history, behind a good image: every image a request carries is decoded alike.
        ("/api/chat", {"model": name, "stream": False, "messages": [
            {"role": "user", "content": "?", "images": [eps]}, {"role": "assistant", "content": "A figure."},
            {"role": "user", "content": "And this?", "images": [b64(png((40, 40)))]}]}),
    ]
    for path, body in probes:
        expect(plain, httpx.post(plain.url + path, json=body, timeout=30), 400)
    r = httpx.post(f"{plain.url}/v1/documents/describe", files={"file": ("figure.eps", EPS)}, timeout=30)
    assert r.status_code == 200 and r.headers["X-Llamadoc-Exit-Code"] == "1"
    assert "PostScript (EPS) is not supported" in json.dumps(r.json())
    eps_file = tmp_path / "figure.eps"
    eps_file.write_bytes(EPS)
    env = {**os.environ, "PATH": f"{gs_dir}{os.pathsep}{os.environ['PATH']}", "GS_LOG": str(gs_log),
           "PYTHONPATH": str(ROOT)}
    cli = subprocess.run([sys.executable, "-m", "llamadoc", "describe", str(eps_file), "--model", str(text_model),
                          "--mmproj", str(mmproj), "--guard", "off", "--threads", "1"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and "PostScript (EPS) is not supported" in cli.stderr and "Traceback" not in cli.stderr
    assert not gs_log.exists(), gs_log.read_text()
    # The stand-in is one Pillow would run: without the allow-list, opening the EPS runs it.
    control = tmp_path / "control.log"
    subprocess.run([sys.executable, "-c", "from PIL import Image\ntry:\n    Image.open(__import__('sys').argv[1]).load()"
                    "\nexcept Exception:\n    pass", str(eps_file)], env={**env, "GS_LOG": str(control)}, check=True)
    assert control.read_text().startswith("gs ")


# -- H2: the server's guard policy is a floor ------------------------------------------------

@pytest.fixture(scope="module")
def screening(launch: Callable[..., Server], text_model: Path, mmproj: Path, guard_model: Path) -> Server:
    """--guard block with a threshold of 0: whatever the guard judges is unsafe."""
    server = launch("--model", str(text_model), "--mmproj", str(mmproj), "--guard", "block", "--guard-model",
                    str(guard_model), "--guard-threshold", "0", "--max-tokens", "8")
    server.answers_text = False
    return server


def test_the_guard_policy_is_a_floor(screening: Server) -> None:
    url = f"{screening.url}/v1/engine/generate"
    for mode in ("block", "flag"):  # screened by this server, whatever the client does itself
        r = httpx.post(url, json=wire(guard=mode), timeout=60)
        assert r.status_code == 400 and r.json()["kind"] == "GuardError", r.text
        assert "withheld by the guard: the request was judged unsafe" in one_line(r)
    for mode in ("Off", None, "anything", 1):
        assert "guard must be one of block, flag, off" in expect(
            screening, httpx.post(url, json=wire(guard=mode), timeout=30), 400)
    expect(screening, httpx.post(url, json=wire(guard="off"), timeout=30), 400, "this server screens every request")
    r = httpx.post(f"{screening.url}/api/chat", timeout=60, json={
        "model": screening.name, "stream": False, "messages": [{"role": "user", "content": "?"}]})
    assert r.status_code == 400 and "withheld by the guard" in one_line(r)
    assert "Traceback" not in screening.log()


def test_every_route_honours_max_tokens(plain: Server) -> None:
    r = httpx.post(f"{plain.url}/v1/engine/generate", json=wire(max_tokens=600), timeout=60)
    assert r.status_code == 200 and r.json()["completion_tokens"] <= 8
    r = httpx.post(f"{plain.url}/api/chat", timeout=60, json={
        "model": plain.name, "stream": False, "options": {"num_predict": 600}, "format": LONG,
        "messages": [{"role": "user", "content": "?"}]})
    assert r.status_code == 200 and r.json()["eval_count"] <= 8
    r = httpx.post(f"{plain.url}/v1/chat/completions", timeout=60, json={
        "model": plain.name, "max_tokens": 600, "response_format": {
            "type": "json_schema", "json_schema": {"name": "n", "schema": LONG}},
        "messages": [{"role": "user", "content": "?"}]})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 8


def test_a_text_only_guard_says_the_image_went_unscreened(launch: Callable[..., Server], text_model: Path,
                                                         mmproj: Path, guard_model: Path) -> None:
    flagging = launch("--model", str(text_model), "--mmproj", str(mmproj), "--guard", "flag", "--guard-model",
                      str(guard_model), "--max-tokens", "4")
    note = "the image was not screened by a text-only guard"
    image = b64(make_image(flagging.log_path.parent / "chart.png").read_bytes())
    r = httpx.post(f"{flagging.url}/api/chat", timeout=60, json={
        "model": flagging.name, "stream": False, "messages": [{"role": "user", "content": "?", "images": [image]}]})
    assert r.status_code == 200 and note in r.json()["warnings"]
    r = httpx.post(f"{flagging.url}/v1/chat/completions", timeout=60, json={
        "model": flagging.name, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "?"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}]}]})
    assert r.status_code == 200 and note in r.json()["warnings"]
    r = httpx.post(f"{flagging.url}/v1/engine/generate", json=wire(images=[image], guard="flag"), timeout=60)
    assert r.status_code == 200 and note in r.json()["warnings"]
    r = httpx.post(f"{flagging.url}/api/chat", timeout=60, json={
        "model": flagging.name, "stream": False, "messages": [{"role": "user", "content": "?"}]})
    assert r.status_code == 200 and note not in r.json().get("warnings", [])
    flagging.answers()


# -- H3: origins and hosts as Ollama checks them ----------------------------------------------

EVIL = "https://evil.example"


def test_web_pages_from_other_origins_are_refused(plain: Server) -> None:
    headers = {"Origin": EVIL}
    probes = [
        ("POST", "/api/chat", {"content": json.dumps({"model": plain.name, "messages": [
            {"role": "user", "content": "?"}]}), "headers": {**headers, "Content-Type": "text/plain"}}),
        ("POST", "/api/generate", {"json": {"model": plain.name, "prompt": "", "keep_alive": -1}, "headers": headers}),
        ("POST", "/api/pull", {"json": {"model": "llama-guard3:1b"}, "headers": headers}),
        ("POST", "/v1/documents/ask", {"data": {"question": "?"}, "files": {"file": ("a.png", png((40, 40)))},
                                       "headers": headers}),
        ("GET", "/api/tags", {"headers": headers}),
        ("GET", "/v1/engine/info", {"headers": {"Origin": "null"}}),  # a sandboxed frame
    ]
    for method, path, kwargs in probes:
        r = httpx.request(method, plain.url + path, timeout=30, **kwargs)
        message = expect(plain, r, 403, "--allow-origin")
        assert "access-control-allow-origin" not in r.headers and message.startswith("requests from the web origin")


def test_allowed_origins_get_cors_headers(plain: Server) -> None:
    for origin in ("http://localhost:5173", "https://127.0.0.1", "http://0.0.0.0:8080", "vscode-webview://a1b2",
                   "tauri://localhost", ORIGIN_ENV):
        r = httpx.get(f"{plain.url}/api/tags", headers={"Origin": origin}, timeout=30)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin, origin
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type, authorization, x-stainless-os"}
    r = httpx.options(f"{plain.url}/api/chat", headers={"Origin": "http://localhost:3000", **preflight}, timeout=30)
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "x-stainless-os" in r.headers["access-control-allow-headers"]
    r = httpx.options(f"{plain.url}/api/chat", headers={"Origin": EVIL, **preflight}, timeout=30)
    expect(plain, r, 403, "--allow-origin")


def test_json_only_as_json(plain: Server) -> None:
    body = json.dumps({"model": plain.name, "prompt": "?", "stream": False, "options": {"num_predict": 1}})
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        r = httpx.post(f"{plain.url}/api/generate", content=body.encode(), headers={"Content-Type": kind}, timeout=30)
        expect(plain, r, 415, "Content-Type: application/json")
    # JSON as JSON; and untyped, as LiteLLM's Ollama provider sends it (from a page, it would carry an Origin).
    for headers in ({"Content-Type": "application/json; charset=utf-8"}, {}):
        r = httpx.post(f"{plain.url}/api/generate", content=body.encode(), timeout=30, headers=headers)
        assert r.status_code == 200, headers
    r = httpx.post(f"{plain.url}/api/generate", content=body.encode(), timeout=30, headers={"Origin": EVIL})
    expect(plain, r, 403, "--allow-origin")


def test_every_refusal_leaves_a_line_with_its_reason(plain: Server, tmp_path: Path) -> None:
    """The access log (issue 20) sees what the Host and origin checks and the bounds refuse."""
    chat = {"model": plain.name, "stream": False, "messages": [{"role": "user", "content": "?"}]}
    image = b64(png((40, 40)))
    probes = [
        ("GET /api/tags 403", "the Host 'rebound.example' is not this server's name",
         httpx.get(f"{plain.url}/api/tags", headers={"Host": "rebound.example"}, timeout=30)),
        ("POST /api/chat 403", "requests from the web origin 'https://evil.example'",
         httpx.post(f"{plain.url}/api/chat", json=chat, headers={"Origin": EVIL}, timeout=30)),
        ("POST /api/chat 415", "send the request as JSON",
         httpx.post(f"{plain.url}/api/chat", content=json.dumps(chat), headers={"Content-Type": "text/plain"},
                    timeout=30)),
        ("POST /api/chat 413", "over this server's limit of 64 KiB",
         httpx.post(f"{plain.url}/api/chat", timeout=30, json={**chat, "messages": [
             {"role": "user", "content": "a" * 40_000}, {"role": "assistant", "content": "b"},
             {"role": "user", "content": "c" * 40_000}]})),  # the whole conversation counts
        ("POST /v1/chat/completions 413", "carries 17 images",
         httpx.post(f"{plain.url}/v1/chat/completions", timeout=30, json={"model": plain.name, "messages": [
             {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}
                                          for _ in range(17)]}]})),
    ]
    for start, reason, r in probes:
        assert r.status_code == int(start.rsplit(" ", 1)[1]), r.text
        deadline = time.monotonic() + 10  # a line is written once its response has gone
        while not any(f": {start} " in line and reason in line for line in plain.log().splitlines()):
            assert time.monotonic() < deadline, f"no line for {start}: {reason}"
            time.sleep(0.05)
    plain.answers()


def test_dns_rebinding_is_refused(plain: Server) -> None:
    for host in ("evil.example", f"evil.example:{plain.port}", "localhost.evil.example", "127.0.0.1.nip.io"):
        r = httpx.get(f"{plain.url}/api/tags", headers={"Host": host, "Origin": f"http://{host}"}, timeout=30)
        expect(plain, r, 403, "--allow-host")
    for host in (f"localhost:{plain.port}", f"127.0.0.1:{plain.port}", "[::1]", "app.localhost", "llamadoc.lan",
                 f"LOCALHOST:{plain.port}"):
        assert httpx.get(f"{plain.url}/api/tags", headers={"Host": host}, timeout=30).status_code == 200, host


# -- M1: document jobs are bounded and let go ----------------------------------------------------

def test_a_document_past_the_page_cap_fails_at_once(plain: Server, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "long.pdf", [f"page {i}" for i in range(1, 51)]).read_bytes()
    r = httpx.post(f"{plain.url}/v1/documents/ask", data={"question": "?"}, files={"file": ("long.pdf", pdf)},
                   timeout=60)
    assert r.status_code == 200 and r.headers["X-Llamadoc-Exit-Code"] == "1"
    assert "50 pages of long.pdf are selected, over the limit of 5" in json.dumps(r.json())
    r = httpx.post(f"{plain.url}/v1/documents/ask", data={"question": "?", "pages": "1-2", "dpi": "20"},
                   files={"file": ("long.pdf", pdf)}, timeout=60)
    assert r.status_code == 200 and r.headers["X-Llamadoc-Exit-Code"] == "0"
    files = [("file", (f"{i}.pdf", pdf)) for i in range(40)]
    expect(plain, httpx.post(f"{plain.url}/v1/documents/ask", data={"question": "?"}, files=files, timeout=60), 400,
           "Too many files")


def test_abandoned_uploads_hold_nothing(plain: Server, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "long.pdf", [f"page {i}" for i in range(1, 6)]).read_bytes()
    req = httpx.Request("POST", f"{plain.url}/v1/documents/describe", files={"file": ("long.pdf", pdf)})
    raw = req.read()
    head = "".join(f"{k}: {v}\r\n" for k, v in req.headers.items())
    whole = f"POST /v1/documents/describe HTTP/1.1\r\n{head}\r\n".encode() + raw
    for i in range(45):  # more than anyio's 40 worker threads
        with socket.create_connection(("127.0.0.1", plain.port)) as sock:
            sock.sendall(whole if i % 2 else whole[: len(whole) // 2])  # whole, or cut off mid-body
    r = httpx.post(f"{plain.url}/v1/documents/describe", data={"dpi": "20", "pages": "1"},
                   files={"file": ("long.pdf", pdf)}, timeout=120)
    assert r.status_code == 200 and r.headers["X-Llamadoc-Exit-Code"] == "0"
    plain.answers()


class HeldEngine:
    """A vision engine that answers only when the test lets it (the document job's pages wait)."""

    name, max_images, max_batch, supports_schema, gpu_layers, device = "held", 1, 1, True, 0, "CPU"

    def __init__(self) -> None:
        self.release, self.started = threading.Event(), threading.Event()

    def generate(self, request: Any) -> Any:
        from llamadoc.engines.base import GenerationResponse

        self.started.set()
        self.release.wait(60)
        return GenerationResponse(text="done", prompt_tokens=1, completion_tokens=1)

    def generate_batch(self, requests: Any) -> list[Any]:
        return [self.generate(r) for r in requests]

    def close(self) -> None:
        pass


def test_a_client_that_hangs_up_frees_its_document_job(text_model: Path, mmproj: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    engine = HeldEngine()
    monkeypatch.setattr("llamadoc.engines.load_vision_engine", lambda kind, options, pixels: engine)
    pdf = make_pdf(tmp_path / "r.pdf", ["one", "two", "three"]).read_bytes()
    with serving(model=str(text_model), mmproj=str(mmproj), guard=GuardPolicy(mode="off")) as s:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
            httpx.post(f"{s.url}/v1/documents/describe", data={"dpi": "20"}, files={"file": ("r.pdf", pdf)},
                       timeout=httpx.Timeout(30, read=2))
        assert engine.started.is_set()
        deadline = time.monotonic() + 30
        while s.resident._in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.resident._in_flight == 0  # the job ended while its page was still at the engine
        engine.release.set()


# -- M2: no request makes the server hold gigabytes ---------------------------------------------

def test_images_past_the_ceiling_are_refused_before_decoding(plain: Server, tmp_path: Path) -> None:
    for size in ((12000, 12000), (20000, 20000)):  # 144 MP (Pillow only warns), 400 MP (Pillow's bomb error)
        bomb = b64(png_claiming(*size))
        expect(plain, httpx.post(f"{plain.url}/v1/engine/generate", json=wire(images=[bomb]), timeout=60), 400,
               "over the limit")
    big = b64(png_claiming(8000, 8000))  # 64 MP: under Pillow's bomb limit, over the server's ceiling
    for path, body in (("/api/chat", {"model": plain.name, "stream": False, "messages": [
            {"role": "user", "content": "?", "images": [big]}]}),
            ("/api/generate", {"model": plain.name, "stream": False, "prompt": "?", "images": [big]})):
        expect(plain, httpx.post(plain.url + path, json=body, timeout=60), 400, "over the limit of 16,777,216 pixels")
    # A conversation's earlier images are decoded the same way (libmtmd's models read them all).
    small = b64(png((40, 40)))
    history = [{"role": "user", "content": "?", "images": [big]}, {"role": "assistant", "content": "A chart."},
               {"role": "user", "content": "And this?", "images": [small]}]
    expect(plain, httpx.post(f"{plain.url}/api/chat", timeout=60, json={
        "model": plain.name, "stream": False, "messages": history}), 400, "message 1 image 1")
    many = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{small}"}} for _ in range(17)]
    expect(plain, httpx.post(f"{plain.url}/v1/chat/completions", timeout=60, json={
        "model": plain.name, "messages": [{"role": "user", "content": many}]}), 413, "at most 16 per request")
    photo = make_image(tmp_path / "photo.jpg", (6000, 5000), fmt="JPEG")  # 30 MP: decoded at 1/4 (draft)
    r = httpx.post(f"{plain.url}/api/chat", timeout=60, json={"model": plain.name, "stream": False, "messages": [
        {"role": "user", "content": "?", "images": [b64(photo.read_bytes())]}], "options": {"num_predict": 1}})
    assert r.status_code == 200, r.text


def test_document_pages_have_a_pixel_ceiling(plain: Server, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "a.pdf", ["Invoice 7"]).read_bytes()
    r = httpx.post(f"{plain.url}/v1/documents/describe", data={"max_pixels": "1000000000"},
                   files={"file": ("a.pdf", pdf)}, timeout=60)
    expect(plain, r, 400, "over the limit of 16,777,216 pixels a page")
    r = httpx.post(f"{plain.url}/v1/documents/describe", data={"dpi": "2400"}, files={"file": ("a.pdf", pdf)},
                   timeout=60)
    assert r.status_code == 200 and r.headers["X-Llamadoc-Exit-Code"] == "1" and "at 2400 DPI would be" in r.text


def test_an_attachment_bomb_is_not_inflated(tmp_path: Path) -> None:
    import pymupdf

    from llamadoc.inputs.raster import Document, RasterOptions
    from llamadoc.inputs.sources import Source

    def attached(name: str, data: bytes) -> Path:
        doc = pymupdf.open()
        doc.new_page()
        doc.embfile_add(name, data)
        path = tmp_path / f"{len(data)}.pdf"
        doc.save(path, deflate=True)
        return path

    bomb = attached("factur-x.xml", b"<a>" + b" " * (200 << 20) + b"</a>")  # 200 MB in a 200 KB PDF
    assert bomb.stat().st_size < 1 << 20
    with Document(Source(label="bomb.pdf", path=bomb), RasterOptions()) as doc:
        assert doc.embedded_files() == {}
    small = attached("factur-x.xml", b"<a/>")
    with Document(Source(label="small.pdf", path=small), RasterOptions()) as doc:
        assert doc.embedded_files() == {"factur-x.xml": b"<a/>"}


# -- M3: schemas, prompts, turns -------------------------------------------------------------------

YAML_BOMB = "\n".join([
    "type: object", "x-defs:", "  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]",
    *(f"  {b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdef", "bcdefg", strict=True)),
    "properties:", "  total: {type: string, default: *g}"])


def test_schemas_are_bounded_before_use(plain: Server, tmp_path: Path, run_cli: Any) -> None:
    pdf = make_pdf(tmp_path / "a.pdf", ["Total 12"]).read_bytes()
    r = httpx.post(f"{plain.url}/v1/documents/extract", data={"schema": YAML_BOMB}, files={"file": ("a.pdf", pdf)},
                   timeout=60)
    expect(plain, r, 400, "is too large (over 10,000 values, aliases counted as written out)")
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(60):
        deep = {"type": "object", "properties": {"x": deep}}
    for fmt, words in (({"type": "object", "properties": {"a": {"type": "array", "minItems": 10_000_000}}},
                        "minItems 10,000,000 is over the limit of 1,000"),
                       ({"type": "object", "properties": {"a": {"type": "string", "pattern": "^a{100000}$"}}},
                        "repeats more than 1,000 times"),
                       (deep, "nests deeper than 32 levels")):
        r = httpx.post(f"{plain.url}/api/chat", timeout=30, json={
            "model": plain.name, "format": fmt, "messages": [{"role": "user", "content": "?"}]})
        expect(plain, r, 400, words)
        r = httpx.post(f"{plain.url}/v1/chat/completions", timeout=30, json={
            "model": plain.name, "messages": [{"role": "user", "content": "?"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": fmt}}})
        expect(plain, r, 400, words)
    schema = tmp_path / "bomb.yaml"
    schema.write_text(YAML_BOMB)
    result = run_cli("extract", str(tmp_path / "a.pdf"), "--schema", str(schema))
    assert result.exit_code == 2 and "is too large" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_prompts_over_the_limit_are_413(plain: Server) -> None:
    text = "x" * (100 << 10)  # the server takes 64 KiB
    probes = [
        ("/api/chat", {"model": plain.name, "messages": [{"role": "user", "content": text}]}),
        ("/api/generate", {"model": plain.name, "prompt": "?", "system": text}),
        ("/v1/chat/completions", {"model": plain.name, "messages": [{"role": "user", "content": text}]}),
        ("/v1/engine/generate", wire(prompt=text)),
        ("/v1/engine/guard/tokens", {"text": text}),
    ]
    for path, body in probes:
        expect(plain, httpx.post(plain.url + path, json=body, timeout=30), 413, "over this server's limit of 64 KiB")
    r = httpx.post(f"{plain.url}/v1/documents/ask", data={"question": text}, files={"file": ("a.png", png((40, 40)))},
                   timeout=30)
    expect(plain, r, 413, "--max-prompt-kb")


def test_the_guard_takes_turns_in_order() -> None:
    """One request judging a long text chunk by chunk lets a waiting request in after its current
    chunk: the lock is granted in the order asked, and taking it back queues behind the waiter."""
    lock, order = FairLock(), []
    lock.acquire()
    waiter = threading.Thread(target=lambda: (lock.acquire(), order.append("small"), lock.release()))
    waiter.start()
    while not lock._queue:
        time.sleep(0.001)
    lock.release()  # chunk 1 judged
    lock.acquire()  # chunk 2: behind the small request
    order.append("chunk 2")
    lock.release()
    waiter.join(10)
    assert order == ["small", "chunk 2"]
    with lock, lock:  # reentrant, as the guard's own calls nest
        pass


# -- M4, M5: stopping, timeouts, connections, logs ------------------------------------------------

def test_sigterm_ends_open_streams_with_an_error_line_and_exits_0(launch: Callable[..., Server],
                                                                  tmp_path: Path) -> None:
    """Both stream formats, open at once on the engine that decodes them together (mllama)."""
    from tests.mllama_helpers import convert_fixture, fixture_image

    model = convert_fixture("tiny", tmp_path / "tiny-mllama.gguf", "Q8_0")
    server = launch("--model", str(model), "--guard", "off", "--max-tokens", "400", "--ctx", "1024", "--preload")
    buf = io.BytesIO()
    fixture_image("square").save(buf, "PNG")
    image = b64(buf.getvalue())  # about a page, the tiny model's answer runs long
    messages = [{"role": "user", "content": "Describe it all.", "images": [image]}]
    openai_messages = [{"role": "user", "content": [{"type": "text", "text": "Describe it all."}, {
        "type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}]}]
    started, ends = threading.Barrier(3, timeout=60), dict[str, list[str]]()

    def stream(path: str, body: dict[str, Any]) -> None:
        with httpx.stream("POST", server.url + path, json=body, timeout=60) as r:
            lines = r.iter_lines()
            got = [next(lines)]
            started.wait()
            got += [line for line in lines if line]
        ends[path] = got

    threads = [threading.Thread(target=stream, args=("/api/chat", {"model": server.name, "messages": messages})),
               threading.Thread(target=stream, args=("/v1/chat/completions", {
                   "model": server.name, "messages": openai_messages, "stream": True}))]
    for t in threads:
        t.start()
    started.wait()  # both streams have begun
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    assert json.loads(ends["/api/chat"][-1]) == {"error": "the server is shutting down"}
    sse = [line.removeprefix("data: ") for line in ends["/v1/chat/completions"] if line.startswith("data: ")]
    assert json.loads(sse[-1])["error"]["message"] == "the server is shutting down"
    assert server.stop() == 0
    assert "Traceback" not in server.log()


def test_sigterm_stops_a_libmtmd_generation_at_its_next_step(launch: Callable[..., Server], text_model: Path,
                                                           mmproj: Path) -> None:
    """libmtmd takes requests in turn: the one it decodes (streamed) ends with the stream's error
    line, the one waiting behind it is a 503, and the engine stops at its next step, so the
    models unload normally (not left to the process's exit) and the process exits 0."""
    # A million integers asked for, 30,000 tokens allowed: some 20 s of decoding on the tiny model.
    server = launch("--model", str(text_model), "--mmproj", str(mmproj), "--guard", "off", "--max-tokens", "30000",
                    "--ctx", "32768", "--preload")
    body = {"model": server.name, "format": LONGER, "messages": [{"role": "user", "content": "Count."}]}
    lines: list[str] = []
    queued: list[httpx.Response] = []
    started = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", f"{server.url}/api/chat", json=body, timeout=120) as r:
            for line in r.iter_lines():
                lines.append(line)
                started.set()

    streaming = threading.Thread(target=stream)
    streaming.start()
    assert started.wait(120)  # the engine is decoding it
    waiting = threading.Thread(target=lambda: queued.append(httpx.post(
        f"{server.url}/api/chat", timeout=120, json={**body, "stream": False})))
    waiting.start()
    time.sleep(2)  # the second request is in the queue
    server.proc.send_signal(signal.SIGTERM)
    streaming.join(120)
    waiting.join(120)
    assert json.loads(lines[-1]) == {"error": "the server is shutting down"}
    assert queued[0].status_code == 503 and one_line(queued[0]) == "the server is shutting down"
    assert server.stop() == 0
    log = server.log()
    assert "stopped" in log and "mid-step" not in log and "Traceback" not in log


def test_shutdown_cancels_every_generation(text_model: Path, mmproj: Path, tmp_path: Path) -> None:
    """At shutdown the engine stops at its next step even where no request watches its
    generation (a handler already gone): the server's close cancels every ticket."""
    from llamadoc.engines.base import GenerationRequest
    from llamadoc.server.batcher import Ticket

    outcomes: list[Any] = []
    decoding = threading.Event()
    with offline_home(tmp_path / "home"), serving(model=str(text_model), mmproj=str(mmproj), max_tokens=30000,
                                                  ctx=32768, guard=GuardPolicy(mode="off")) as s:
        request = GenerationRequest(prompt="Count.", schema=LONGER, max_tokens=30000)  # some 20 s of decoding
        s.resident.batcher.submit(Ticket(request, on_text=lambda _t: decoding.set(), on_done=outcomes.append))
        assert decoding.wait(120)
        s.resident.close()  # returns once the engine's thread has stopped
        assert len(outcomes) == 1 and isinstance(outcomes[0], Cancelled), outcomes


def test_idle_and_slow_connections_are_closed_and_counted(text_model: Path, mmproj: Path) -> None:
    log: list[str] = []
    with serving(log, model=str(text_model), mmproj=str(mmproj), guard=GuardPolicy(mode="off"), header_timeout=1.0,
                 max_connections=4) as s:
        port = int(s.url.rsplit(":", 1)[1])
        idle = socket.create_connection(("127.0.0.1", port))
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
        for sock in (idle, slow):
            sock.settimeout(30)
            assert sock.recv(1024) == b""  # closed by the server, not by the 30 s here
            sock.close()
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        extra = socket.create_connection(("127.0.0.1", port))
        extra.settimeout(30)
        assert extra.recv(1024).startswith(b"HTTP/1.1 503")  # past the cap: refused at once
        for sock in (*held, extra):
            sock.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{s.url}/api/tags", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.get(f"{s.url}/api/tags", timeout=5).status_code == 200
    # Each kind said once in the minute, however many connections it struck (two were closed).
    assert [line for line in log if "connection" in line] == [
        "closed a connection that sent no request within 1 s",
        "refused a connection with 503: 4 are open, the most allowed (--max-connections)"]


def test_a_repeated_error_is_logged_once(text_model: Path, mmproj: Path, monkeypatch: pytest.MonkeyPatch,
                                         capfd: pytest.CaptureFixture[str]) -> None:
    with serving(model=str(text_model), mmproj=str(mmproj), guard=GuardPolicy(mode="off")) as s:
        def broken() -> None:
            raise RuntimeError("the header reader broke, again and again")

        monkeypatch.setattr(s.resident, "summary", broken)
        for _ in range(30):
            r = httpx.post(f"{s.url}/api/show", json={"model": text_model.name}, timeout=30)
            assert r.status_code == 500 and one_line(r)
    assert capfd.readouterr().err.count("Traceback") == 1


# -- L: one-line 400s, keys, names ---------------------------------------------------------------

def test_bad_values_are_one_line_400s(plain: Server) -> None:
    raw = {"Content-Type": "application/json"}
    name = plain.name
    surrogate = json.dumps({"model": name, "stream": False}).replace("{", '{"prompt": "\\ud800", ', 1)
    expect(plain, httpx.post(f"{plain.url}/api/generate", content=surrogate, headers=raw, timeout=30), 400,
           "lone surrogate")
    nan = json.dumps({"model": name, "prompt": "?", "options": {"temperature": float("nan")}})  # NaN: not JSON
    expect(plain, httpx.post(f"{plain.url}/api/generate", content=nan, headers=raw, timeout=30), 400, "not JSON")
    r = httpx.post(f"{plain.url}/api/generate", timeout=30, json={"model": name, "prompt": "", "keep_alive": 1e18})
    expect(plain, r, 400, "keep_alive 1e+18 is too long")
    assert httpx.get(f"{plain.url}/api/ps", timeout=30).status_code == 200
    expect(plain, httpx.post(f"{plain.url}/v1/chat/completions", timeout=30, json={
        "model": name, "max_tokens": -1, "messages": [{"role": "user", "content": "?"}]}), 400, "max_tokens")
    for sampling in ({"temperature": -1.0, "top_p": 1.0, "seed": 0}, {"temperature": 0.0, "top_p": 7.0, "seed": 0}):
        expect(plain, httpx.post(f"{plain.url}/v1/engine/generate", json=wire(sampling=sampling), timeout=30), 400)
    expect(plain, httpx.post(f"{plain.url}/v1/engine/generate", json=wire(max_tokens=-1), timeout=30), 400,
           "max_tokens must be a positive integer")
    huge = json.dumps({"model": name, "options": {"temperature": 1.5}, "messages": [{"role": "user", "content": "?"}]})
    expect(plain, httpx.post(f"{plain.url}/api/chat", content=huge.replace("1.5", "1e999"), headers=raw, timeout=30),
           400, "temperature must be a number")  # 1e999 parses as infinity


def test_names_not_paths(plain: Server, text_model: Path) -> None:
    folder = str(text_model.parent)
    for method, path, body in (("GET", "/api/tags", None), ("GET", "/api/ps", None), ("GET", "/v1/models", None),
                               ("POST", "/api/show", {"model": plain.name})):
        r = httpx.request(method, plain.url + path, json=body, timeout=30)
        assert r.status_code == 200 and folder not in r.text and plain.name in r.text, r.text


def test_the_api_key_comes_from_a_file_or_the_environment(run_cli: Any, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    missing = ["--model", str(tmp_path / "none.gguf"), "--port", "0"]
    short = run_cli("serve", "--api-key", "short", *missing)
    assert short.exit_code == 2 and "use at least 16" in short.stderr and "visible to every user" in short.stderr
    key = tmp_path / "key"
    key.write_text("k" * 24 + "\n")
    both = run_cli("serve", "--api-key", "k" * 24, "--api-key-file", str(key), *missing)
    assert both.exit_code == 2 and "both give a key" in both.stderr
    absent = run_cli("serve", "--api-key-file", str(tmp_path / "nokey"), *missing)
    assert absent.exit_code == 2 and "cannot be read" in absent.stderr
    # A key from the file or the environment: no warning, and the model is what stops it here.
    for args, env in ((["--api-key-file", str(key)], None), ([], "e" * 20)):
        if env:
            monkeypatch.setenv("LLAMADOC_API_KEY", env)
        result = run_cli("serve", *args, *missing)
        assert result.exit_code == 2 and "visible" not in result.stderr and "none.gguf" in result.stderr
    with pytest.raises(UsageError, match="at least 16"):
        ServeOptions(api_key="short")
    # Another address than loopback: plain HTTP is said before anything listens.
    remote = run_cli("serve", "--host", "203.0.113.7", "--api-key-file", str(key), *missing)
    assert remote.exit_code == 2 and "plain HTTP on 203.0.113.7" in remote.stderr and "reverse proxy" in remote.stderr


# -- a client that hangs up stops its generation, on both engines ---------------------------------

def _engine(kind: str, text_model: Path, mmproj: Path, tmp_path: Path) -> dict[str, Any]:
    if kind == "mtmd":
        return {"model": str(text_model), "mmproj": str(mmproj), "max_tokens": 30000, "ctx": 32768}
    from tests.mllama_helpers import convert_fixture

    return {"model": str(convert_fixture("tiny", tmp_path / "tiny-mllama.gguf", "Q8_0")), "max_tokens": 400,
            "ctx": 1024}


@pytest.mark.parametrize("kind", ["mllama", "mtmd"])
def test_a_client_that_hangs_up_stops_its_generation(kind: str, text_model: Path, mmproj: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    outcomes: list[Any] = []
    with offline_home(tmp_path / "home"), serving(guard=GuardPolicy(mode="off"),
                                                  **_engine(kind, text_model, mmproj, tmp_path)) as s:
        _record(s, outcomes, monkeypatch)
        name = Path(s.resident.models.resolve().model_path).name
        body: dict[str, Any] = {"model": name, "messages": [{"role": "user", "content": "Describe it all."}]}
        if kind == "mtmd":
            body["format"] = LONGER  # the tiny model's greedy answers are short otherwise, and it is fast
        else:
            from tests.mllama_helpers import fixture_image

            buf = io.BytesIO()
            fixture_image("square").save(buf, "PNG")
            body["messages"][0]["images"] = [b64(buf.getvalue())]  # with a page its answer runs long
        with httpx.stream("POST", f"{s.url}/api/chat", json=body, timeout=60) as r:
            assert json.loads(next(r.iter_lines()))["done"] is False
        deadline = time.monotonic() + 120
        while not outcomes and time.monotonic() < deadline:
            time.sleep(0.05)
    [outcome] = outcomes
    longest = s.resident.options.max_tokens
    assert isinstance(outcome, Cancelled) or outcome.completion_tokens < longest // 2, outcome


def _record(s: Served, outcomes: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """What the engine's thread hands back for each request: an answer, or Cancelled."""
    batcher = s.resident.batcher
    done = batcher._done

    def recorded(ticket: Any, outcome: Any) -> None:
        outcomes.append(outcome)
        done(ticket, outcome)

    monkeypatch.setattr(batcher, "_done", recorded)


# -- what a second review found ------------------------------------------------------------------

def test_an_engine_request_carries_one_page_image(plain: Server) -> None:
    bomb = b64(png_claiming(4000, 4000))  # each would be decoded whole: 40 of them held gigabytes
    r = httpx.post(f"{plain.url}/v1/engine/generate", json=wire(images=[bomb] * 40), timeout=60)
    expect(plain, r, 413, "one page image, not 40")


def test_a_body_of_millions_of_json_values_is_refused_before_parsing(plain: Server) -> None:
    body = '{"model": "%s", "prompt": "?", "x": [%s[]]}' % (plain.name, "[]," * 1_000_001)  # noqa: UP031
    r = httpx.post(f"{plain.url}/api/generate", content=body, headers={"Content-Type": "application/json"},
                   timeout=60)
    expect(plain, r, 413, "over 1,000,000 JSON values")


def test_bodies_held_at_once_are_bounded_across_connections() -> None:
    """Past BODIES_HELD bodies of the largest size, all connections together, a request is 503
    (retry), not held; and what a request held is given back when it ends."""
    import asyncio

    from llamadoc.server.app import BODIES_HELD, Guarded

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main() -> list[int]:
        guarded = Guarded(app, api_key=None, max_body=1000)
        release = asyncio.Event()
        statuses: list[int] = []

        async def request() -> None:
            sent = False

            async def receive() -> dict[str, Any]:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": b"x" * 900, "more_body": True}
                await release.wait()
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])
                    if message["status"] == 503:
                        release.set()  # the one over the bound is answered at once; the others may end

            await guarded({"type": "http", "path": "/api/chat", "headers": []}, receive, send)

        await asyncio.gather(*(request() for _ in range(BODIES_HELD + 1)))
        assert guarded.held == 0
        return statuses

    statuses = asyncio.run(main())
    assert sorted(statuses) == [200] * BODIES_HELD + [503]


def test_a_context_with_a_lone_surrogate_is_a_400(plain: Server) -> None:
    for turns in ([["user", "\ud800", []]], [["user", "?", [{"x": 1}]]]):
        context = list(json.dumps({"v": 1, "turns": turns}).encode())
        r = httpx.post(f"{plain.url}/api/generate", timeout=30, json={
            "model": plain.name, "prompt": "?", "stream": False, "context": context})
        assert r.status_code == 400, r.text
        assert "lone surrogate" in one_line(r) or "context is not one this server gave" in one_line(r)
    plain.answers()


def test_what_a_client_sends_is_escaped_and_cut_in_the_log_and_in_messages(plain: Server) -> None:
    forged = "llamadoc: POST /api/chat 200 forged"
    httpx.get(f"{plain.url}/x%0A{forged.replace(' ', '%20')}", timeout=30)
    r = httpx.post(f"{plain.url}/api/show", json={"model": "nope\n" + forged + "y" * 100_000}, timeout=30)
    assert r.status_code == 404 and len(one_line(r)) < 300
    r = httpx.post(f"{plain.url}/v1/chat/completions", json={"model": "m" * 100_000, "messages": []}, timeout=30)
    assert r.status_code == 404 and len(one_line(r)) < 300
    deadline = time.monotonic() + 10
    while "/api/show 404" not in plain.log():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not any(line.startswith(forged) for line in plain.log().splitlines()), plain.log()
    assert max(len(line) for line in plain.log().splitlines()) < 1000
    plain.answers()


def test_a_text_part_must_be_text_and_form_fields_are_named_as_fields(plain: Server, tmp_path: Path) -> None:
    r = httpx.post(f"{plain.url}/v1/chat/completions", timeout=30, json={"model": plain.name, "messages": [
        {"role": "user", "content": [{"type": "text", "text": None}]}]})
    expect(plain, r, 400, "messages[0].content[0].text must be a string")
    pdf = make_pdf(tmp_path / "a.pdf", ["Invoice 7"]).read_bytes()
    r = httpx.post(f"{plain.url}/v1/documents/describe", data={"dpi": "nan"}, files={"file": ("a.pdf", pdf)},
                   timeout=60)
    message = expect(plain, r, 400, "dpi")
    assert "--" not in message, message


def test_a_server_that_is_not_llamadocs_is_said_in_one_line(tmp_path: Path) -> None:
    import http.server

    from llamadoc.errors import EngineError
    from llamadoc.models.remote import Client

    class Html(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200 if self.path == "/ok" else 500)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>not llamadoc</html>" if self.path == "/ok" else b"[1, 2]")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = Client(f"127.0.0.1:{server.server_address[1]}")
        with pytest.raises(EngineError, match="did not answer as a llamadoc server"):
            client.call("/ok")
        with pytest.raises(EngineError, match="failed: HTTP 500"):
            client.call("/broken")  # an error body that is JSON, but not an object
    finally:
        server.shutdown()
