"""`llamadoc serve` under a bounded adversarial mix: what one hostile client on the machine costs
everyone else. For at most --seconds (60) it sends decompression bombs, huge PDF pages, abandoned
10,000-page uploads, hang-ups mid-stream, idle and slowloris connections, multi-megabyte prompts and
schema bombs, while one well-behaved client asks a small question about a small chart every second.
It records the server's peak RSS over its idle RSS, the well-behaved client's latencies, what each
attack got back, how long SIGTERM took and the exit code.

    python benchmarks/serve_hostile.py                            # the server from this checkout
    python benchmarks/serve_hostile.py --checkout BEFORE_CHECKOUT # the server from another one

The server runs in its own process from --checkout (the client side, this script and the tiny
models come from this checkout): tiny libmtmd model + mmproj and the tiny guard the tests
generate (tests/tinymodels.py), `--guard flag` so that well-behaved requests are screened but
answered. Peak RSS is the kernel's high-water mark (VmHWM), reset after the warm-up through
/proc/PID/clear_refs, and is a guard against a server that would take the machine down: past
--rss-limit-gb the server is killed and the run says so.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests import tinymodels  # noqa: E402


def png(size: tuple[int, int], mode: str = "RGB", colour: Any = (250, 250, 250)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    img = Image.new(mode, size, colour)
    img.save(buf, "PNG", compress_level=9)
    img.close()
    return buf.getvalue()


def chart() -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (320, 240), (245, 245, 245))
    draw = ImageDraw.Draw(img)
    for i, h in enumerate((80, 150, 60, 200)):
        draw.rectangle((40 + i * 60, 230 - h, 80 + i * 60, 230), fill=(20, 60, 160))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def pdf(pages: int, size: tuple[float, float] = (595, 842)) -> bytes:
    import pymupdf

    doc = pymupdf.open()
    for i in range(pages):
        page = doc.new_page(width=size[0], height=size[1])
        if i == 0:
            page.insert_text((72, 72), "Quarterly report")
    data = doc.tobytes(garbage=0, deflate=True)
    doc.close()
    return bytes(data)


def yaml_bomb(levels: int = 7) -> str:
    """A schema of some 400 bytes whose aliases expand to 9**levels strings when written out."""
    names = "abcdefghijkl"
    lines = [f"{names[0]}: &{names[0]} [{', '.join(['lol'] * 9)}]"]
    for i in range(1, levels):
        lines.append(f"{names[i]}: &{names[i]} [{', '.join([f'*{names[i - 1]}'] * 9)}]")
    top = names[levels - 1]
    return "\n".join(["type: object", "x-defs:", *(f"  {line}" for line in lines),
                      "properties:", "  total:", "    type: string", f"    default: *{top}"])


class Server:
    """`llamadoc serve` in its own process, from the checkout given; stderr is collected."""

    def __init__(self, checkout: Path, models: dict[str, Path], home: Path) -> None:
        env = {**os.environ, "LLAMADOC_HOME": str(home), "LLAMADOC_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": str(checkout)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llamadoc", "serve", "--model", str(models["model"]), "--mmproj",
             str(models["mmproj"]), "--guard", "flag", "--guard-model", str(models["guard"]), "--port", "0",
             "--threads", "1", "--max-tokens", "16", "--preload", "--keep-alive", "-1"],
            env=env, stderr=subprocess.PIPE, cwd=str(checkout))
        assert self.proc.stderr is not None
        self.log = bytearray()
        self.url = ""
        started = threading.Event()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                if not self.url:
                    found = re.search(rb"at (http://\S+)", line)
                    if found:
                        self.url = found.group(1).decode()
                        started.set()
                if len(self.log) < 50 << 20:
                    self.log += line
                else:
                    self.log_overflow = True

        self.log_overflow = False
        threading.Thread(target=read, daemon=True).start()
        if not started.wait(120):
            self.proc.kill()
            raise SystemExit(f"the server did not start: {self.log.decode(errors='replace')}")
        self.name = str(models["model"])

    def status(self, field: str) -> int:
        """A /proc/PID/status figure in bytes (VmRSS, VmHWM)."""
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
        return int(found.group(1)) * 1024 if found else 0

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS

    def stop(self) -> tuple[float, int | None]:
        """SIGTERM: seconds until the process ended, and its exit code (None: killed after 60 s)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        return time.monotonic() - started, code


def request_bytes(method: str, url: str, **kwargs: Any) -> tuple[bytes, str, int]:
    """A whole HTTP/1.1 request as bytes (for clients that hang up or go slow), its host and port."""
    req = httpx.Request(method, url, **kwargs)
    body = req.read()
    head = [f"{method} {req.url.raw_path.decode()} HTTP/1.1", f"Host: {req.url.host}:{req.url.port}"]
    head += [f"{k}: {v}" for k, v in req.headers.items() if k.lower() != "host"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body, req.url.host, int(req.url.port or 80)


class Mix:
    """The attackers: each a loop in its own thread until the time is up."""

    def __init__(self, server: Server, deadline: float) -> None:
        self.server, self.url, self.deadline = server, server.url, deadline
        self.outcomes: dict[str, Counter[str]] = {}
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    def note(self, kind: str, outcome: str) -> None:
        with self.lock:
            self.outcomes.setdefault(kind, Counter())[outcome] += 1

    def loop(self, kind: str, attack: Callable[[], str], pause: float = 0.0, copies: int = 1) -> None:
        def run() -> None:
            while self.running():
                try:
                    self.note(kind, attack())
                except (httpx.HTTPError, OSError) as err:
                    self.note(kind, type(err).__name__)
                time.sleep(pause)

        for _ in range(copies):
            t = threading.Thread(target=run, daemon=True)
            t.start()
            self.threads.append(t)

    def post(self, path: str, timeout: float = 30, **kwargs: Any) -> str:
        remaining = max(1.0, min(timeout, self.deadline - time.monotonic() + 5))
        return str(httpx.post(self.url + path, timeout=remaining, **kwargs).status_code)

    def hang_up(self, raw: bytes, host: str, port: int, read: int = 0) -> str:
        """Send a request, read ``read`` bytes of the answer (0: none), and go away."""
        with socket.create_connection((host, port), timeout=30) as sock:
            sock.sendall(raw)
            if read:
                got = sock.recv(read)
                return got.split(b" ", 2)[1].decode() if got.startswith(b"HTTP/") else "no answer"
        return "sent"

    def hold(self, count: int, slow: bool) -> None:
        """Keep ``count`` connections open: idle ones, or slowloris ones sending a header byte every
        2 s. Whatever the server closes is opened again."""
        host, port = httpx.URL(self.url).host, int(httpx.URL(self.url).port or 80)

        def run() -> None:
            open_: list[socket.socket] = []
            while self.running():
                while len(open_) < count and self.running():
                    try:
                        s = socket.create_connection((host, port), timeout=5)
                        if slow:
                            s.sendall(f"POST /api/chat HTTP/1.1\r\nHost: {host}\r\n".encode())
                        open_.append(s)
                        self.note("slow connections" if slow else "idle connections", "opened")
                    except OSError as err:
                        self.note("slow connections" if slow else "idle connections", type(err).__name__)
                        time.sleep(0.5)
                        break
                time.sleep(2)
                for s in list(open_):
                    try:
                        if slow:
                            s.sendall(b"X")
                        s.setblocking(False)
                        try:
                            closed = s.recv(1) == b""
                        except BlockingIOError:
                            closed = False
                        s.setblocking(True)
                    except OSError:
                        closed = True
                    if closed:
                        self.note("slow connections" if slow else "idle connections", "closed by the server")
                        s.close()
                        open_.remove(s)
            for s in open_:
                s.close()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)


def normal(server: Server, image: bytes, deadline: float, latencies: list[float], failures: Counter[str]) -> None:
    """The well-behaved client: one small question about a small chart every second."""
    body = {"model": server.name, "stream": False, "options": {"num_predict": 4},
            "messages": [{"role": "user", "content": "What is shown?", "images": [base64.b64encode(image).decode()]}]}
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            r = httpx.post(server.url + "/api/chat", json=body, timeout=120)
            latencies.append(time.monotonic() - started)
            if r.status_code != 200:
                failures[str(r.status_code)] += 1
        except httpx.HTTPError as err:
            latencies.append(time.monotonic() - started)
            failures[type(err).__name__] += 1
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkout", type=Path, default=REPO, help="the llamadoc checkout the server runs from")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the mix runs (at most 60)")
    ap.add_argument("--rss-limit-gb", type=float, default=8.0, help="kill the server past this RSS")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()
    seconds = min(a.seconds, 60.0)
    with tempfile.TemporaryDirectory(prefix="llamadoc-hostile-") as tmp_name:
        tmp = Path(tmp_name)
        models = {"model": tinymodels.write_text_model(tmp / "tiny-chat.gguf"),
                  "mmproj": tinymodels.write_mmproj(tmp / "mmproj.gguf", "mlp"),
                  "guard": tinymodels.write_guard_model(tmp / "tiny-guard.gguf")}
        print("making the payloads ...", flush=True)
        small = chart()
        engine_bomb = base64.b64encode(png((12000, 12000), "L", 255)).decode()  # 144 MP
        chat_bomb = base64.b64encode(png((8000, 8000))).decode()  # 64 MP, under Pillow's bomb limit
        one_page, thousands = pdf(1), pdf(10_000)
        big_prompt = ("The quick brown fox jumps over the lazy dog. " * 110_000)[:4_800_000]
        server = Server(a.checkout.resolve(), models, tmp / "home")
        latencies: list[float] = []
        failures: Counter[str] = Counter()
        try:
            for _ in range(3):  # warm-up: the model, the guard, the image path
                normal(server, small, time.monotonic() + 0.1, [], Counter())
            time.sleep(1)
            idle = server.status("VmRSS")
            server.reset_peak()
            started = time.monotonic()
            deadline = started + seconds
            mix = Mix(server, deadline)
            name = server.name
            wire = {"prompt": "?", "system": None, "schema": None, "max_tokens": 8, "guard": "flag",
                    "sampling": {"temperature": 0.0, "top_p": 1.0, "seed": 0}}
            mix.loop("144 MP PNG, /v1/engine/generate", lambda: mix.post(
                "/v1/engine/generate", json={**wire, "images": [engine_bomb]}), pause=0.5)
            mix.loop("64 MP PNG, /api/chat", lambda: mix.post("/api/chat", json={
                "model": name, "stream": False, "messages": [{"role": "user", "content": "?",
                                                              "images": [chat_bomb]}]}), pause=0.5, copies=2)
            mix.loop("PDF page at 200 MP, /v1/documents", lambda: mix.post(
                "/v1/documents/describe", data={"max_pixels": "200000000"},
                files={"file": ("page.pdf", one_page, "application/pdf")}), pause=1.0)
            upload, host, port = request_bytes("POST", mix.url + "/v1/documents/ask", data={"question": "?"},
                                               files={"file": ("big.pdf", thousands, "application/pdf")})
            mix.loop("10,000-page upload, hung up", lambda: mix.hang_up(upload, host, port), pause=1.0)
            streamed, host, port = request_bytes("POST", mix.url + "/api/chat", json={
                "model": name, "messages": [{"role": "user", "content": "Tell a long story."}],
                "options": {"num_predict": 16}})
            mix.loop("stream, hung up", lambda: mix.hang_up(streamed, host, port, read=64), pause=0.3)
            mix.hold(100, slow=False)
            mix.hold(30, slow=True)
            mix.loop("4.8 MB prompt, /api/chat", lambda: mix.post("/api/chat", json={
                "model": name, "stream": False, "messages": [{"role": "user", "content": big_prompt}]}, timeout=60),
                pause=1.0)
            mix.loop("YAML alias schema, /v1/documents/extract", lambda: mix.post(
                "/v1/documents/extract", data={"schema": yaml_bomb()},
                files={"file": ("page.pdf", one_page, "application/pdf")}, timeout=60), pause=2.0)
            mix.loop("minItems 10,000,000, /api/chat", lambda: mix.post("/api/chat", json={
                "model": name, "stream": False, "messages": [{"role": "user", "content": "?"}],
                "format": {"type": "object", "properties": {"a": {"type": "array", "minItems": 10_000_000}}}}),
                pause=2.0)
            client = threading.Thread(target=normal, args=(server, small, deadline, latencies, failures), daemon=True)
            client.start()
            killed = None
            while time.monotonic() < deadline + 5 and (client.is_alive() or time.monotonic() < deadline):
                if server.proc.poll() is not None:
                    break
                rss = server.status("VmRSS")
                if rss > a.rss_limit_gb * (1 << 30):
                    killed = rss
                    server.proc.kill()
                    break
                time.sleep(0.05)
            client.join(max(0.0, deadline + 120 - time.monotonic()))
            peak = server.status("VmHWM") if server.proc.poll() is None else (killed or 0)
            after = {}
            if server.proc.poll() is None:  # the server still answers once the attack is over
                t = time.monotonic()
                try:
                    after = {"status": httpx.get(server.url + "/api/tags", timeout=60).status_code}
                except httpx.HTTPError as err:
                    after = {"status": type(err).__name__}
                after["seconds"] = round(time.monotonic() - t, 2)
            stop_s, code = server.stop() if server.proc.poll() is None else (0.0, server.proc.returncode)
        finally:
            if server.proc.poll() is None:
                server.proc.kill()
        log = server.log.decode(errors="replace")
        figures = {
            "checkout": "this checkout" if a.checkout.resolve() == REPO else "--checkout",
            "machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end",
            "seconds": seconds,
            "idle_rss_mb": round(idle / 2**20), "peak_rss_mb": round(peak / 2**20),
            "peak_over_idle_mb": round((peak - idle) / 2**20),
            "killed_at_rss_mb": round(killed / 2**20) if killed else None,
            "normal_requests": len(latencies),
            "normal_failures": dict(failures),
            "normal_latency_s": {
                "median": round(statistics.median(latencies), 2) if latencies else None,
                "p95": round(sorted(latencies)[math.ceil(0.95 * len(latencies)) - 1], 2) if latencies else None,
                "max": round(max(latencies), 2) if latencies else None},
            "after_the_mix": after,
            "sigterm": {"seconds": round(stop_s, 2), "exit_code": code},
            "log": {"bytes": len(server.log), "tracebacks": log.count("Traceback"),
                    "overflowed_50mb": server.log_overflow},
            "attacks": {k: dict(v) for k, v in sorted(mix.outcomes.items())},
        }
    print(json.dumps(figures, indent=1))
    if a.json:
        a.json.write_text(json.dumps(figures, indent=1) + "\n")
    with contextlib.suppress(Exception):
        print("\nlast log lines:\n" + "\n".join(log.splitlines()[-8:]))


if __name__ == "__main__":
    main()
