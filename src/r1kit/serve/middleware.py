"""ASGI middleware of the server, outermost first: the access log and metrics, the Host allow-list, the API key,
and the request-body limits (size and read deadline). Each answers in OpenAI's error shape.

Why a Host allow-list: a web page can make the browser of someone running `r1kit serve` talk to 127.0.0.1 through
DNS rebinding (a name of the attacker's that first resolves to the attacker, then to 127.0.0.1). The browser then
sends the attacker's name in the Host header, so accepting only loopback names, names the operator lists
(`--allowed-hosts`) and IP literals closes that door; an IP literal cannot be the target of a rebinding, so clients
that reach a 0.0.0.0 server by address keep working.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import time

from r1kit.serve.errors import APIError
from r1kit.serve.metrics import Metrics, RequestRecord, log_line, request_log
from r1kit.serve.schemas import MAX_BODY_BYTES

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
API_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models")
PROTECTED = ("/v1/", "/metrics")  # what the API key guards; /health and the web page stay open


def _header(scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers") or ():
        if k == name:
            return v
    return None


def host_name(host: str) -> str:
    """The name part of a Host header value: "[::1]:8000" -> "::1", "Example.COM:80" -> "example.com"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class AccessLog:
    """One log line and one metrics update per API request, when its last byte has been sent (or it failed)."""

    def __init__(self, app, metrics: Metrics, log_prompts: bool = False):
        self.app, self.metrics, self.log_prompts = app, metrics, log_prompts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        rec = RequestRecord()
        scope.setdefault("state", {})["record"] = rec
        status = 500  # what the client sees if the app fails before answering

        async def watch(msg):
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, watch)
        finally:
            now = time.perf_counter()
            endpoint = scope["path"] if scope["path"] in API_ROUTES else "other"
            self.metrics.record(endpoint, status, rec, now)
            if not self.log_prompts:
                rec.prompt = None
            request_log.info(log_line(scope["method"], scope["path"], status, rec, now))


class HostCheck:
    """421 for a Host header that is not a loopback name, an allowed name or an IP literal ("*" allows any)."""

    def __init__(self, app, allowed_hosts: tuple[str, ...] = ()):
        self.app = app
        self.any = "*" in allowed_hosts
        self.allowed = {h.lower() for h in (*LOOPBACK_NAMES, *allowed_hosts)}

    def allows(self, host: str) -> bool:
        name = host_name(host)
        if self.any or name in self.allowed:
            return True
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return False

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = _header(scope, b"host")
            if host is not None and not self.allows(host.decode("latin-1")):
                err = APIError(421, f"Host {host.decode('latin-1')!r} is not served here (allowed: loopback names, IP "
                                    f"addresses and --allowed-hosts)", code="invalid_host",
                               headers={"Connection": "close"})
                return await err.response()(scope, receive, send)
        await self.app(scope, receive, send)


class APIKey:
    """401 on /v1/* and /metrics unless `Authorization: Bearer <key>` carries the key (compared in constant time)."""

    def __init__(self, app, api_key: str | None):
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if self.expected is not None and scope["type"] == "http" and scope["path"].startswith(PROTECTED):
            given = _header(scope, b"authorization") or b""
            if not hmac.compare_digest(given, self.expected):
                err = APIError(401, "Incorrect or missing API key: send it as 'Authorization: Bearer <key>'",
                               code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                return await err.response()(scope, receive, send)
        await self.app(scope, receive, send)


class BodyLimit:
    """Reads the whole request body before the app runs (every endpoint parses all of it anyway): 413 for a body over
    max_bytes (by Content-Length, or counted as it arrives), 408 and a closed connection for a body not complete
    `timeout` seconds after its head (a slowloris sending it byte by byte). uvicorn enforces no body deadline
    itself; its head deadline is set in serve.py."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES, timeout: float = 30.0):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        length = _header(scope, b"content-length")
        too_big = APIError(413, f"request body over {self.max_bytes} bytes", code="request_too_large",
                           headers={"Connection": "close"})
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await too_big.response()(scope, receive, send)
        chunks, seen = [], 0
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    msg = await receive()
                    if msg["type"] != "http.request":  # the client left before sending it all
                        return
                    chunks.append(msg.get("body", b""))
                    seen += len(chunks[-1])
                    if seen > self.max_bytes:
                        return await too_big.response()(scope, receive, send)
                    if not msg.get("more_body", False):
                        break
        except TimeoutError:
            late = APIError(408, f"the request body did not arrive within {self.timeout:g} s", code="request_timeout",
                            headers={"Connection": "close"})
            return await late.response()(scope, receive, send)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:  # what follows is the disconnect notice, which may come at any time
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
