"""An LLM client built on its first call, once, and shared by every caller after that.

The API serves the dialectic from every replica, but a replica that never gets a chat request must not
pay for a model: the default local one is 1.9 GB of memory and seconds to load. A build that fails (a
missing key, a missing weights file) is not remembered, so fixing the setting and retrying works, and
every call until then fails with the error that names the setting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from models.llm.client import ChatMessage, Completion, LLMClient, LLMUnavailable, M

log = logging.getLogger(__name__)


class LazyLLM(LLMClient):
    """Stands in for the client ``build`` returns, calling it on first use.

    ``alive``: asked after a call fails as unavailable; when it says the model is gone (a node's shared
    model host that died with its owner), the client is dropped and the next call builds a new one.
    """

    def __init__(
        self,
        build: Callable[[], Awaitable[LLMClient]],
        *,
        name: str,
        alive: Callable[[], bool] | None = None,
    ) -> None:
        provider, _, model = name.partition("/")
        super().__init__(model or provider)
        self.provider = provider
        self._build = build
        self._alive = alive
        self._client: LLMClient | None = None
        self._lock = asyncio.Lock()

    @property
    def built(self) -> bool:
        return self._client is not None

    @property
    def name(self) -> str:
        return self._client.name if self._client is not None else super().name

    async def client(self) -> LLMClient:
        """The real client, built now if this is the first call (concurrent first calls build once)."""
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    log.info("building the LLM client %s on first use", super().name)
                    self._client = await self._build()
        return self._client

    async def probe(self) -> str:
        """The built client's probe; a model not built yet is not built for a health check."""
        if self._client is None:
            return "not loaded yet (built on first use)"
        return await self._client.probe()

    def _check(self, error: BaseException) -> None:
        if isinstance(error, LLMUnavailable) and self._alive is not None and not self._alive():
            log.warning("the model behind %s is gone; the next call builds a new client", self.name)
            self._client = None

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int | None = None,
        temperature: float = 0.0,
        schema: tuple[str, dict[str, Any]] | None = None,
    ) -> Completion:
        client = await self.client()
        try:
            return await client.complete(
                messages, max_tokens=max_tokens, temperature=temperature, schema=schema
            )
        except LLMUnavailable as exc:
            self._check(exc)
            raise

    async def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int | None = None, temperature: float = 0.0
    ) -> AsyncIterator[str]:
        client = await self.client()
        try:
            async for piece in client.stream(messages, max_tokens=max_tokens, temperature=temperature):
                yield piece
        except LLMUnavailable as exc:
            self._check(exc)
            raise

    async def structured(
        self,
        messages: Sequence[ChatMessage],
        output: type[M],
        *,
        max_tokens: int | None = None,
        temperature: float = 0.0,
    ) -> tuple[M, Completion]:
        client = await self.client()
        try:
            return await client.structured(messages, output, max_tokens=max_tokens, temperature=temperature)
        except LLMUnavailable as exc:
            self._check(exc)
            raise

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    # Every public call is delegated whole (retries included) to the real client.
    async def _complete(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        schema: tuple[str, dict[str, Any]] | None,
    ) -> Completion:
        raise NotImplementedError("LazyLLM delegates complete() to the client it builds")

    def _stream(
        self, messages: Sequence[ChatMessage], max_tokens: int, temperature: float
    ) -> AsyncIterator[str]:
        raise NotImplementedError("LazyLLM delegates stream() to the client it builds")
