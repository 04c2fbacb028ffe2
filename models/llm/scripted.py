"""A scripted LLM for tests and benchmarks: answers come from a list or a function, never a model.

It records every prompt it was given, can sleep to stand in for a model's latency, and fails on cue
(``TransientError`` as an outage, ``LLMOutputError`` as broken JSON: script the raw text instead).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from models.llm.client import ChatMessage, Completion, LLMClient, RetryPolicy, Usage, refused

Answer = str | BaseException
Script = Sequence[Answer] | Callable[[Sequence[ChatMessage]], Answer]


class ScriptedLLM(LLMClient):
    provider = "scripted"

    def __init__(
        self,
        script: Script,
        *,
        model: str = "double",
        latency_s: float = 0.0,
        retry: RetryPolicy | None = None,
        context_tokens: int | None = None,
        refuses_past: int | None = None,
    ) -> None:
        """``context_tokens``: the model's context as callers are told it. A request longer than
        ``refuses_past`` (default: that context) is refused as a model server refuses it, with
        LLMRequestError (counting 4 characters a token, as English runs in real tokenizers)."""
        super().__init__(model, retry=retry or RetryPolicy(attempts=1), context_tokens=context_tokens)
        self.refuses_past = refuses_past or context_tokens
        self._script = script
        self._next = 0
        self.latency_s = latency_s
        self.prompts: list[list[ChatMessage]] = []
        self.schemas: list[str | None] = []  # the output schema's name asked for in each call
        self.schema_bodies: list[dict[str, Any] | None] = []
        self.max_tokens_asked: list[int] = []

    def _answer(self, messages: Sequence[ChatMessage]) -> str:
        self.prompts.append(list(messages))
        if callable(self._script):
            answer = self._script(messages)
        else:
            if self._next >= len(self._script):
                raise AssertionError(f"the script has only {len(self._script)} answers")
            answer = self._script[self._next]
            self._next += 1
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def _complete(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        schema: tuple[str, dict[str, Any]] | None,
    ) -> Completion:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        self.schemas.append(schema[0] if schema else None)
        self.schema_bodies.append(schema[1] if schema else None)
        self.max_tokens_asked.append(max_tokens)
        requested = sum(len(m.content) for m in messages) // 4 + max_tokens
        if self.refuses_past is not None and requested > self.refuses_past:
            self.prompts.append(list(messages))
            raise refused(
                400,
                f"request ({requested} tokens) exceeds the available context size ({self.refuses_past} tokens)",
                "the scripted model",
            )
        text = self._answer(messages)
        prompt_tokens = sum(len(m.content.split()) for m in messages)
        return Completion(text, Usage(prompt_tokens, len(text.split())), self.model)

    async def _stream(
        self, messages: Sequence[ChatMessage], max_tokens: int, temperature: float
    ) -> AsyncIterator[str]:
        text = self._answer(messages)
        for i in range(0, len(text), 8):
            if self.latency_s:
                await asyncio.sleep(self.latency_s / max(1, len(text) // 8))
            yield text[i : i + 8]
