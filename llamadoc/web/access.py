"""Who may call a local web face (`llamadoc serve`, `llamadoc review`) from where, checked as Ollama
checks it (envconfig/config.go AllowedOrigins,
server/routes.go allowedHostsMiddleware), before the API key and before any body is read.

A browser sends ``Origin`` with every cross-site request, and a web page may POST ``text/plain``
and ``multipart/form-data`` without asking first: a request whose Origin is not allowed is 403.
The allowed origins are localhost, 127.0.0.1 and 0.0.0.0 on any port (http and https) and the
schemes of desktop apps and editors, plus what ``--allow-origin`` and LLAMADOC_ORIGINS add.

DNS rebinding points an attacker's name at 127.0.0.1, so the page's requests are same-origin
and carry the attacker's name as ``Host``: a Host that is not an address, a loopback name or the
bound name is 403 unless ``--allow-host`` names it (a LAN name, a reverse proxy's name). An
address can never be rebound, so any IP literal passes, as in Ollama.

Preflights (OPTIONS with Access-Control-Request-Method) are answered for allowed origins only,
and answers to them carry Access-Control-Allow-Origin. JSON routes take JSON only as JSON, or
untyped (streams.json_body): a page cannot send application/json without a preflight, and its
untyped POST carries an Origin, checked here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# An error's body as the face shapes it: (path, status, message, code) -> JSON.
Shape = Callable[[str, int, str, str], dict[str, Any]]

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "0.0.0.0")
APP_ORIGINS = ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")
# The client libraries' own headers (openai's x-stainless-*, ollama's) are allowed by echoing
# the preflight's list back: the origin is allowed already.
ALLOWED_METHODS = "GET, POST, HEAD, OPTIONS"
EXPOSED = "X-Llamadoc-Exit-Code, Retry-After"
PREFLIGHT_MAX_AGE = "43200"  # 12 h, as gin-contrib/cors (Ollama) sends


def default_origins() -> tuple[str, ...]:
    web = [f"{scheme}://{host}{port}" for host in DEFAULT_HOSTS for scheme in ("http", "https") for port in ("", ":*")]
    return (*web, *APP_ORIGINS)


def _pattern(glob: str) -> re.Pattern[str]:
    """A glob where * matches any run of characters (gin-contrib/cors's wildcard), case-insensitive."""
    glob = glob.strip().rstrip("/")
    return re.compile(".*".join(re.escape(part) for part in glob.split("*")), re.IGNORECASE)


def host_name(header: str) -> str:
    """The host of a Host header, without its port, lowercase: '[::1]:80' -> '::1'."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


@dataclass(frozen=True)
class Access:
    origins: tuple[str, ...] = field(default_factory=default_origins)
    hosts: tuple[str, ...] = ()  # Host names allowed besides addresses and loopback names
    bound: str = "127.0.0.1"  # the address (or name) the server listens on

    def __post_init__(self) -> None:
        object.__setattr__(self, "_origins", [_pattern(o) for o in self.origins])
        names = ("localhost", "*.localhost", host_name(self.bound), *self.hosts)
        object.__setattr__(self, "_hosts", [_pattern(h) for h in names if h])

    def origin_allowed(self, origin: str) -> bool:
        return any(p.fullmatch(origin.strip().rstrip("/")) for p in self._origins)  # type: ignore[attr-defined]

    def host_allowed(self, header: str | None) -> bool:
        if not header:
            return True  # HTTP/1.0 without Host: no name to have been rebound
        host = host_name(header)
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            return any(p.fullmatch(host) for p in self._hosts)  # type: ignore[attr-defined]


# How `llamadoc serve` lets an origin, and a Host name, in.
SERVE_HINTS = ("start llamadoc serve with --allow-origin ORIGIN, or set LLAMADOC_ORIGINS",
               "start llamadoc serve with --allow-host NAME for a name of your own")


def _plain(path: str, status: int, message: str, code: str) -> dict[str, Any]:
    return {"error": message}


class Gate:
    """Pure ASGI middleware, outermost: Host, then Origin, then preflights; the rest passes on
    with CORS headers added for an allowed origin. ``hints`` say how the face lets an origin,
    and a Host, in; ``shape`` writes the refusal in the face's own error shape."""

    def __init__(self, app: ASGIApp, access: Access, hints: tuple[str, str] = SERVE_HINTS,
                 shape: Shape = _plain) -> None:
        self.app, self.access, self.hints, self.shape = app, access, hints, shape

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        path = scope["path"]
        host = headers.get(b"host", b"").decode("latin-1")
        if not self.access.host_allowed(host):
            await self._refuse(path, f"the Host {host_name(host)!r} is not this server's name (DNS rebinding?)",
                               self.hints[1])(
                scope, receive, send)
            return
        origin = headers.get(b"origin", b"").decode("latin-1")
        if not origin:
            await self.app(scope, receive, send)
            return
        if not self.access.origin_allowed(origin):
            await self._refuse(path, f"requests from the web origin {origin!r} are not allowed", self.hints[0])(
                scope, receive, send)
            return
        cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin", "Access-Control-Expose-Headers": EXPOSED}
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            asked = headers.get(b"access-control-request-headers", b"").decode("latin-1")
            preflight = {**cors, "Access-Control-Allow-Methods": ALLOWED_METHODS, "Access-Control-Max-Age":
                         PREFLIGHT_MAX_AGE, **({"Access-Control-Allow-Headers": asked} if asked else {})}
            await Response(status_code=204, headers=preflight)(scope, receive, send)
            return

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      *((k.lower().encode(), v.encode("latin-1")) for k, v in cors.items())]
            await send(message)

        await self.app(scope, receive, with_cors)

    def _refuse(self, path: str, message: str, hint: str) -> Response:
        return JSONResponse(self.shape(path, 403, f"{message}: {hint}", "forbidden"), status_code=403)
