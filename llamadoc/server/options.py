"""What `llamadoc serve` was started with, checked before anything loads, and Ollama-style durations."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llamadoc.errors import UsageError
from llamadoc.guard import GuardPolicy

DEFAULT_PORT = 11435  # Ollama's 11434 plus one: both can run on one machine
MIN_KEY = 16  # characters an API key must have: a short one is guessed
MAX_KEEP_ALIVE = 10 * 365 * 86400.0  # seconds; longer is -1 (for good), and past it dates overflow
_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | float | int, what: str = "--keep-alive") -> float | None:
    """Seconds from a duration as Ollama takes one ("5m", "1h30m", "30s", 300, "0"); None (never
    expire) for a negative one, as Ollama's -1."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise UsageError(f"{what} {value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
                raise UsageError(f"{what} {value!r} is not a duration", hint="e.g. 5m, 1h, 30s, 0 or -1") from None
            seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    if not math.isfinite(seconds):
        raise UsageError(f"{what} {value!r} is not a duration")
    if seconds > MAX_KEEP_ALIVE:  # tighter than Ollama's 292 years (Go's time.Duration): a date must show it
        raise UsageError(f"{what} {value!r} is too long", hint="use -1 to keep the model loaded for good")
    return None if seconds < 0 else seconds


def api_key(given: str | None, file: Path | None, env: str | None, warn: Callable[[str], None]) -> str | None:
    """The key every request must send: from --api-key-file, else --api-key (said to be visible
    to every user of the machine), else LLAMADOC_API_KEY; None: no key."""
    if file is not None and given is not None:
        raise UsageError("--api-key and --api-key-file both give a key", hint="keep --api-key-file")
    if given is not None:
        warn("warning: --api-key is visible to every user of this machine (ps, /proc); "
             "use --api-key-file or LLAMADOC_API_KEY")
        return given
    return read_key(file) if file is not None else env


def read_key(path: Path) -> str:
    """The API key in a file (its first line, trimmed), as --api-key-file gives it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--api-key-file {path} cannot be read ({getattr(err, 'strerror', None) or err})") from None
    key = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not key:
        raise UsageError(f"--api-key-file {path} is empty")
    return key


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    model: str | None = None
    mmproj: str | None = None
    guard: GuardPolicy = field(default_factory=GuardPolicy)
    keep_alive: float | None = 300.0  # idle seconds before the models are unloaded; None: never
    max_queue: int = 16  # requests waiting beyond those the engine is decoding
    api_key: str | None = None
    preload: bool = False
    threads: int | None = None
    gpu_layers: int = -1
    ctx: int = 0
    max_tokens: int = 1024
    max_body_mb: int = 64  # the largest request body (uploads, base64 images)
    config: Path | None = None
    verbose: bool = False
    # Who may call from where (web/access.py): origins and Host names besides the defaults.
    origins: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    # What one request may cost (server/bounds.py).
    max_prompt_kb: int = 256  # UTF-8 text of a request's prompts and system messages; more is 413
    max_pages: int = 100  # pages read of one document on the document routes
    max_documents: int = 32  # documents in one upload
    max_image_pixels: int = 4096 * 4096  # a page decoded or rendered at more is refused first
    max_connections: int = 256  # open at once; lowered to fit the process's file limit
    header_timeout: float = 10.0  # seconds a connection may take to send a request's headers
    idle_timeout: float = 5.0  # seconds a kept-alive connection may sit idle between requests
    body_timeout: float = 60.0  # seconds a request body may take to arrive (20 s at most without a byte)

    def __post_init__(self) -> None:
        if not is_loopback(self.host) and not self.api_key:
            raise UsageError(f"--host {self.host} would let other machines in without a key",
                             hint="set LLAMADOC_API_KEY or pass --api-key-file (clients send it as a Bearer token), "
                                  "or keep 127.0.0.1")
        if self.api_key is not None and len(self.api_key) < MIN_KEY:
            raise UsageError(f"the API key has {len(self.api_key)} characters; use at least {MIN_KEY}",
                             hint="e.g. `openssl rand -hex 24`")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port {self.port} is not a port number")
        if self.max_queue < 1:
            raise UsageError("--max-queue must be at least 1")
        if self.max_body_mb < 1:
            raise UsageError("--max-body-mb must be at least 1")
        for name in ("max_prompt_kb", "max_pages", "max_documents", "max_connections"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_image_pixels < 1024:
            raise UsageError("max_image_pixels must be at least 1024")

    @property
    def max_body(self) -> int:
        return self.max_body_mb << 20

    @property
    def max_prompt(self) -> int:
        return self.max_prompt_kb << 10
