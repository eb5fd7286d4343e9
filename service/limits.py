"""Request-body limits enforced before any parsing: size (413, chunked bodies too)."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _reject(code: int, message: str) -> tuple[Message, Message]:
    body = json.dumps({"error": {"code": code, "type": "request_too_large" if code == 413 else "invalid_request",
                                 "message": message, "details": []}}).encode()
    start: Message = {"type": "http.response.start", "status": code,
                      "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    return start, {"type": "http.response.body", "body": body}


class BodyTooLarge(HTTPException):
    """Raised from `receive`; an HTTPException so FastAPI's body reader passes it through as 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body must be at most {max_bytes} bytes (chunked body exceeded it)")


class BodyLimitMiddleware:
    """413 when Content-Length, or the bytes actually received, exceed `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body must be at most {self.max_bytes} bytes"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            for m in _reject(413, f"{message}. Given: {int(length)}"):
                await send(m)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                for m in _reject(413, f"{message} (chunked body exceeded it)"):
                    await send(m)
