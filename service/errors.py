"""Errors a model replica raises on purpose; the ingress turns them into HTTP answers."""

from __future__ import annotations


class RequestRejected(Exception):
    """The request cannot be served as asked: `code` is the HTTP status for it."""

    def __init__(self, code: int, type_: str, message: str) -> None:
        super().__init__(code, type_, message)
        self.code, self.type, self.message = code, type_, message

    def __reduce__(self):
        return (RequestRejected, (self.code, self.type, self.message))
