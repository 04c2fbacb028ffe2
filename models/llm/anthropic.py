"""Anthropic's Messages API through the official SDK. Structured output is a forced tool call whose
input schema is the output model's: the model must answer with an object of that shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import anthropic

from models.llm.client import (
    ChatMessage,
    Completion,
    LLMClient,
    LLMConfigError,
    RetryPolicy,
    TransientError,
    Usage,
    refused,
    retry_after,
)

DEFAULT_MODEL = "claude-sonnet-4-5"


class AnthropicLLM(LLMClient):
    provider = "anthropic"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 60.0,
        max_tokens: int = 512,
        retry: RetryPolicy | None = None,
        context_tokens: int | None = None,
    ) -> None:
        super().__init__(model, max_tokens=max_tokens, retry=retry, context_tokens=context_tokens)
        if not api_key:
            raise LLMConfigError(
                "the anthropic provider needs an API key: set LLM_API_KEY (or llm.api_key in config.toml)"
            )
        # Retries are ours (RetryPolicy), so every provider backs off the same way.
        self._sdk = anthropic.AsyncAnthropic(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0
        )

    async def close(self) -> None:
        await self._sdk.close()

    @staticmethod
    def _split(messages: Sequence[ChatMessage]) -> tuple[str, list[Any]]:
        """Anthropic takes the system prompt apart from the turns. (Its current models take no
        temperature: sampling is the model's own.)"""
        system = "\n\n".join(m.content for m in messages if m.role == "system")
        turns = [{"role": m.role, "content": m.content} for m in messages if m.role != "system"]
        return system, turns

    async def _complete(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        schema: tuple[str, dict[str, Any]] | None,
    ) -> Completion:
        system, turns = self._split(messages)
        kwargs: dict[str, Any] = {}
        if system:
            kwargs["system"] = system
        if schema is not None:
            name, input_schema = schema
            kwargs["tools"] = [
                {"name": name, "description": f"Record the answer as a {name}.", "input_schema": input_schema}
            ]
            kwargs["tool_choice"] = {"type": "tool", "name": name}
        with _translated(self.model):
            reply = await self._sdk.messages.create(
                model=self.model, max_tokens=max_tokens, messages=turns, **kwargs
            )
        usage = Usage(reply.usage.input_tokens or 0, reply.usage.output_tokens or 0)
        if schema is not None:
            for block in reply.content:
                if block.type == "tool_use":
                    return Completion(json.dumps(block.input), usage, reply.model)
        text = "".join(block.text for block in reply.content if block.type == "text")
        return Completion(text, usage, reply.model)

    async def _stream(
        self, messages: Sequence[ChatMessage], max_tokens: int, temperature: float
    ) -> AsyncIterator[str]:
        system, turns = self._split(messages)
        kwargs: dict[str, Any] = {"system": system} if system else {}
        with _translated(self.model):
            async with self._sdk.messages.stream(
                model=self.model, max_tokens=max_tokens, messages=turns, **kwargs
            ) as stream:
                async for piece in stream.text_stream:
                    yield piece


@contextmanager
def _translated(model: str) -> Iterator[None]:
    """The SDK's exceptions as the interface's: what a retry may fix, and what a setting must."""
    try:
        yield
    except (anthropic.APITimeoutError, anthropic.APIConnectionError) as exc:
        raise TransientError(f"{type(exc).__name__}: {exc}") from exc
    except anthropic.APIStatusError as exc:
        status = exc.status_code
        if status in (408, 409, 425, 429) or status >= 500:
            raise TransientError(
                f"HTTP {status}: {exc.message}", retry_after(exc.response.headers.get("retry-after"))
            ) from exc
        if status in (401, 403):
            raise LLMConfigError(
                f"Anthropic refused the API key (HTTP {status}); set LLM_API_KEY to a valid key"
            ) from exc
        if status == 404:
            raise LLMConfigError(f"Anthropic has no model {model!r} (HTTP 404); check LLM_MODEL") from exc
        # 400 (a prompt too long for the model, an invalid request) and 413 are about this request.
        raise refused(status, exc.message, "Anthropic") from exc
