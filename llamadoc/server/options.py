"""What `llamadoc serve` was started with, checked before anything loads, and Ollama-style durations."""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from llamadoc.errors import UsageError
from llamadoc.guard import GuardPolicy

DEFAULT_PORT = 11435  # Ollama's 11434 plus one: both can run on one machine
_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DURATION_S = (2**63 - 1) / 1e9  # Go's time.Duration, what Ollama can hold: about 292 years


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
    if seconds > MAX_DURATION_S:
        raise UsageError(f"{what} {value!r} is out of range", hint="at most 2562047h; -1 keeps the model loaded")
    return None if seconds < 0 else seconds


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

    def __post_init__(self) -> None:
        if not is_loopback(self.host) and not self.api_key:
            raise UsageError(f"--host {self.host} would let other machines in without a key",
                             hint="pass --api-key KEY (clients send it as a Bearer token), or keep 127.0.0.1")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port {self.port} is not a port number")
        if self.max_queue < 1:
            raise UsageError("--max-queue must be at least 1")
        if self.max_body_mb < 1:
            raise UsageError("--max-body-mb must be at least 1")

    @property
    def max_body(self) -> int:
        return self.max_body_mb << 20
