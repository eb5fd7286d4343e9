"""What every request passes before any route sees it: API keys, body size, JSON syntax, rate limit.

A pure ASGI middleware, so the checks hold for every route (FastAPI's own and Serve's) and the
body is read once: at most `max_body_bytes` (413, chunked bodies included), valid UTF-8 JSON
with no NaN/Infinity literals, no number that overflows a float, and at most `max_json_depth`
levels deep (422); JSON routes need a JSON content type (415). With API keys configured, every
route but the health checks needs `Authorization: Bearer <key>` (401), compared in constant
time; a per-key token bucket answers 429 with Retry-After, a list of N texts counting as N.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The explorer page holds no data (its API key field is sent with each /v1/attention call).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/-/healthz", "/-/routes", "/explorer"})
JSON_ROUTES = frozenset({"/v1/translate", "/v1/attention"})
MODEL_ROUTES = JSON_ROUTES | {"/translate"}
RETRY_AFTER_S = 1  # what an overloaded model tells clients to wait


class Rejected(Exception):
    def __init__(self, code: int, type_: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.type, self.message, self.headers = code, type_, message, headers or {}


def load_keys(keys: str | None, keys_file: str | None) -> list[bytes]:
    """SHA-256 digests of the configured keys (comma-separated and/or one per line in a file)."""
    raw: list[str] = [k for k in (keys or "").split(",") if k.strip()]
    if keys_file:
        raw += [line for line in Path(keys_file).read_text().splitlines() if line.strip()]
    return [hashlib.sha256(k.strip().encode()).digest() for k in raw]


def key_matches(given: str, digests: Iterable[bytes]) -> bytes | None:
    """The matching digest, comparing against every key (no early exit: constant time)."""
    probe = hashlib.sha256(given.encode()).digest()
    found = None
    for d in digests:
        if hmac.compare_digest(probe, d):
            found = d
    return found


@dataclass
class TokenBucket:
    rate_per_s: float
    capacity: float
    tokens: float = 0.0
    stamp: float = field(default_factory=time.monotonic)

    def take(self, cost: float) -> float:
        """0 if `cost` could be taken now, else seconds until it could."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate_per_s)
        self.stamp = now
        if cost <= self.tokens:
            self.tokens -= cost
            return 0.0
        return (min(cost, self.capacity) - self.tokens) / self.rate_per_s


class RateLimiter:
    """Per-key buckets of `per_minute` texts (per ingress replica)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.buckets: dict[bytes, TokenBucket] = {}
        self.lock = threading.Lock()

    def wait_for(self, key: bytes, cost: int) -> float:
        with self.lock:
            bucket = self.buckets.setdefault(
                key, TokenBucket(self.per_minute / 60.0, float(self.per_minute), float(self.per_minute)))
            return bucket.take(cost)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:32]} does not fit a 64-bit float")
    return value


def parse_json(body: bytes, max_depth: int) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(422, "invalid_request", f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise Rejected(422, "invalid_request", f"JSON must be at most {max_depth} levels deep") from None
    except ValueError as exc:
        raise Rejected(422, "invalid_request", f"body is not valid JSON: {exc}") from None
    depth = json_depth(data)
    if depth > max_depth:
        raise Rejected(422, "invalid_request", f"JSON must be at most {max_depth} levels deep. Given: {depth}")
    return data


def json_depth(value: Any) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        nxt: list[Any] = []
        for v in level:
            if isinstance(v, dict):
                nxt.extend(v.values())
            elif isinstance(v, list):
                nxt.extend(v)
        level = nxt if any(isinstance(v, (dict, list)) for v in nxt) else []
    return depth


def request_cost(data: Any) -> int:
    """How many texts a body asks to translate (a list of N counts N)."""
    if not isinstance(data, dict):
        return 1
    value = data.get("text", data.get("q"))
    return max(1, len(value)) if isinstance(value, list) else 1


def _error(code: int, type_: str, message: str, headers: dict[str, str], libre: bool) -> tuple[Message, Message]:
    payload: dict[str, Any] = {"error": message} if libre else {
        "error": {"code": code, "type": type_, "message": message, "details": []}}
    body = json.dumps(payload).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return ({"type": "http.response.start", "status": code, "headers": raw_headers},
            {"type": "http.response.body", "body": body})


@dataclass
class GateConfig:
    """Filled in by the ingress at start-up (keys are read there, once), read by the middleware."""

    max_bytes: int
    max_depth: int
    body_timeout_s: float = 15.0  # a body that trickles in slower than this is dropped (408)
    keys: list[bytes] = field(default_factory=list)
    limiter: RateLimiter | None = None
    # Set where the one model lives in this replica: True while it takes no more work. A request for it
    # is then answered before its body is read or parsed, so shedding costs the replica little.
    overloaded: Callable[[str], bool] | None = None  # (route) -> shed it

    def secure(self, keys: list[bytes], per_minute: int) -> None:
        self.keys = keys
        self.limiter = RateLimiter(per_minute) if per_minute and keys else None


class Gatekeeper:
    def __init__(self, app: ASGIApp, *, config: GateConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        libre = path in ("/translate", "/languages")
        try:
            key = self._authorize(scope)
            if self.config.overloaded is not None and path in MODEL_ROUTES and self.config.overloaded(path):
                raise Rejected(503, "overloaded", "the model's queue is full; retry later",
                               {"Retry-After": str(RETRY_AFTER_S)})
            body = await self._read_body(scope, receive) if scope.get("method") in ("POST", "PUT", "PATCH") else None
            data = None
            if body is not None and path in JSON_ROUTES:
                data = self._check_json(scope, body)
            elif body is not None and path == "/translate" and self._content_type(scope) == "application/json":
                data = parse_json(body, self.config.max_depth)
            limiter = self.config.limiter
            if limiter and key is not None and body is not None:
                wait = limiter.wait_for(key, request_cost(data))
                if wait > 0:
                    raise Rejected(429, "rate_limited", "rate limit exceeded for this API key",
                                   {"Retry-After": str(max(1, math.ceil(wait)))})
        except Rejected as exc:
            for m in _error(exc.code, exc.type, exc.message, exc.headers, libre):
                await send(m)
            return
        await self.app(scope, _replay(body, receive) if body is not None else receive, send)

    def _authorize(self, scope: Scope) -> bytes | None:
        if not self.config.keys or route_path(scope) in OPEN_PATHS:
            return None
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        found = key_matches(token.strip(), self.config.keys) if scheme.lower() == "bearer" and token.strip() else None
        if found is None:
            raise Rejected(401, "unauthorized", "a valid API key is required: Authorization: Bearer <key>",
                           {"WWW-Authenticate": "Bearer"})
        return found

    @staticmethod
    def _content_type(scope: Scope) -> str:
        raw = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1")
        return raw.split(";")[0].strip().lower()

    def _check_json(self, scope: Scope, body: bytes) -> Any:
        ctype = self._content_type(scope)
        if ctype != "application/json" and not ctype.endswith("+json"):
            raise Rejected(415, "unsupported_media_type",
                           f"Content-Type must be application/json. Given: {ctype or 'none'!r}")
        return parse_json(body, self.config.max_depth)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        max_bytes = self.config.max_bytes
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                raise Rejected(400, "invalid_request", "Content-Length is not a number")
            if int(length) > max_bytes:
                raise Rejected(413, "request_too_large",
                               f"request body must be at most {max_bytes} bytes. Given: {int(length)}")
        chunks, size = [], 0
        deadline = time.monotonic() + self.config.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise Rejected(408, "request_timeout",
                               f"the request body did not arrive within {self.config.body_timeout_s:g}s") from None
            except Exception:  # Serve's proxy dropped the request (its client left): no one reads an answer
                raise Rejected(400, "invalid_request", "client disconnected") from None
            if message["type"] == "http.disconnect":
                raise Rejected(400, "invalid_request", "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_bytes:
                raise Rejected(413, "request_too_large",
                               f"request body must be at most {max_bytes} bytes (the body sent exceeded it)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if length is not None and int(length) != len(body):
            raise Rejected(400, "invalid_request", f"Content-Length says {int(length)} bytes, body has {len(body)}")
        return body


def route_path(scope: Scope) -> str:
    """The path as the app's routes see it (Serve mounts an app under its route prefix)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] or "/" if root and path.startswith(root) else path


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that hands the app the body we already read, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
