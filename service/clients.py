"""How the HTTP layer reaches a model: in its own process (LocalModel) or through a Serve handle
(RemoteModel, a separate deployment). Both answer the same four calls, so routes do not care
which; cancelling the caller's task stops the model's share of the work either way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any, Protocol

from service.schemas import TranslationJob


class ModelClient(Protocol):
    async def translate(self, job: TranslationJob) -> Any: ...

    def stream(self, job: TranslationJob) -> AsyncGenerator[dict, None]: ...

    async def attention(self, job: TranslationJob) -> dict: ...

    async def info(self) -> dict: ...


class LocalModel:
    """A ModelHost in this process: a call is a coroutine, no serialization, no hop."""

    def __init__(self, host: Any) -> None:
        self.host = host

    async def translate(self, job: TranslationJob) -> Any:
        return await self.host.translate(job)

    def stream(self, job: TranslationJob) -> AsyncGenerator[dict, None]:
        return self.host.translate_stream(job)

    async def attention(self, job: TranslationJob) -> dict:
        return await self.host.attention(job)

    async def info(self) -> dict:
        return self.host.info()


class RemoteModel:
    """A model deployment behind a Serve handle; a cancelled call cancels the remote request."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    @staticmethod
    async def _await(response: Any) -> Any:
        try:
            return await response
        except asyncio.CancelledError:
            response.cancel()  # deadline passed or client gone: the model drops the work
            raise

    async def translate(self, job: TranslationJob) -> Any:
        return await self._await(self.handle.translate.remote(job))

    async def stream(self, job: TranslationJob) -> AsyncGenerator[dict, None]:
        events = self.handle.options(stream=True).translate_stream.remote(job)
        try:
            async for event in events:
                yield event
        finally:
            events.cancel()  # the reader stopped early: the model withdraws the rest

    async def attention(self, job: TranslationJob) -> dict:
        return await self._await(self.handle.attention.remote(job))

    async def info(self) -> dict:
        return await self._await(self.handle.info.remote())
