"""A GGUF model run in this process by llama.cpp (the ``xllamacpp`` wheel): the offline default.

JSON-schema constrained decoding keeps a small model's output parseable. One model is loaded per
process and shared by every client of it (``shared_server``); llama.cpp queues concurrent requests over
``parallel`` slots and reuses the KV cache of a shared prompt prefix, which is where CPU throughput
comes from. The same server listens on a loopback port, so other processes on the node can use it as an
OpenAI-compatible endpoint instead of loading their own copy.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.llm.client import (
    ChatMessage,
    Completion,
    LLMClient,
    LLMConfigError,
    LLMError,
    RetryPolicy,
    Usage,
    log_timings,
    refused,
    response_format,
)

log = logging.getLogger(__name__)

# A small model answering at temperature 0 can loop, writing the same sentences until its token limit: a
# 1.5B summary ran to its 240-token cap repeating "They both started their businesses because ...", a
# third of a minute of generation on two cores. llama.cpp's DRY sampler ("don't repeat yourself")
# penalises a token that would extend a sequence of more than 3 tokens already seen in the last 300, more
# steeply the longer the repeat; names and short phrases stay free. Only prose gets it: a JSON answer
# repeats its keys by design, and its schema already bounds it.
PROSE_SAMPLING: dict[str, Any] = {"dry_multiplier": 0.8, "dry_allowed_length": 3, "dry_penalty_last_n": 300}


@dataclass(frozen=True, slots=True)
class LocalModelOptions:
    context_tokens: int = 8192
    threads: int | None = None  # None: every core
    parallel: int = 1  # requests decoded side by side (each gets context_tokens / parallel)


_servers: dict[tuple[str, LocalModelOptions], Any] = {}
_servers_lock = threading.Lock()


def shared_server(path: Path, options: LocalModelOptions) -> Any:
    """The process's llama.cpp server for this file, loaded on first use (about 2 s for 1.5B weights)."""
    key = (str(path), options)
    with _servers_lock:
        if key not in _servers:
            try:
                import xllamacpp
            except ImportError as exc:
                raise LLMConfigError(
                    "the local LLM needs the xllamacpp package: pip install xllamacpp (the README's install "
                    "command does it), or set LLM_PROVIDER to anthropic or openai"
                ) from exc
            params = xllamacpp.CommonParams()
            params.model.path = str(path)
            params.n_ctx = options.context_tokens
            params.n_parallel = options.parallel
            params.cpuparams.n_threads = options.threads or os.cpu_count() or 1
            params.verbosity = -1  # llama.cpp's per-request timing lines would flood the log
            log.info("loading %s (%d-token context, %d slot(s))", path.name, params.n_ctx, options.parallel)
            _servers[key] = xllamacpp.Server(params)
        return _servers[key]


class LocalLLM(LLMClient):
    provider = "local"

    def __init__(
        self,
        path: Path,
        model: str | None = None,
        *,
        options: LocalModelOptions | None = None,
        max_tokens: int = 512,
        retry: RetryPolicy | None = None,
    ) -> None:
        options = options or LocalModelOptions()
        # llama.cpp gives each slot an equal share of the context.
        super().__init__(
            model or path.stem,
            max_tokens=max_tokens,
            retry=retry,
            context_tokens=options.context_tokens // options.parallel,
        )
        if not path.is_file():
            raise LLMConfigError(f"no GGUF model file at {path}; set LLM_LOCAL_MODEL")
        self.path = path
        self.options = options

    @property
    def server(self) -> Any:
        return shared_server(self.path, self.options)

    def _request(
        self, messages: Sequence[ChatMessage], max_tokens: int, temperature: float, **extra: Any
    ) -> dict[str, Any]:
        return {
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "cache_prompt": True,  # reuse the KV cache of a prompt prefix seen before
            **extra,
        }

    async def _complete(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        schema: tuple[str, dict[str, Any]] | None,
    ) -> Completion:
        extra = response_format(schema) if schema is not None else PROSE_SAMPLING
        request = self._request(messages, max_tokens, temperature, **extra)
        server = await asyncio.to_thread(lambda: self.server)  # the first call loads the model
        try:
            result = await asyncio.to_thread(server.handle_chat_completions, request)
        except ValueError as exc:
            raise refused(400, str(exc), "the local model") from exc
        if not isinstance(result, dict) or "error" in result:
            if isinstance(result, dict) and isinstance(result.get("error"), dict):
                code = result["error"].get("code")
                if isinstance(code, int) and 400 <= code < 500:  # llama.cpp's own status for this request
                    raise refused(code, _error(result), "the local model")
            raise LLMError(f"the local model failed: {_error(result)}")
        usage = result.get("usage") or {}
        log_timings(self.model, result, usage)
        return Completion(
            result["choices"][0]["message"].get("content") or "",
            Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)),
            self.model,
        )

    async def _stream(
        self, messages: Sequence[ChatMessage], max_tokens: int, temperature: float
    ) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()
        abandoned = threading.Event()
        server = await asyncio.to_thread(lambda: self.server)

        def on_chunk(chunk: dict[str, Any]) -> bool:
            loop.call_soon_threadsafe(queue.put_nowait, chunk)
            return abandoned.is_set()  # True stops generation once the reader has gone

        def generate() -> None:
            try:
                server.handle_chat_completions(
                    self._request(messages, max_tokens, temperature, stream=True, **PROSE_SAMPLING), on_chunk
                )
            except BaseException as exc:  # handed to the reader
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            loop.call_soon_threadsafe(queue.put_nowait, None)

        worker = loop.run_in_executor(None, generate)
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise LLMError(f"the local model failed while streaming: {item}") from item
                if "error" in item:
                    raise LLMError(f"the local model failed while streaming: {_error(item)}")
                for choice in item.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        yield piece
        finally:
            abandoned.set()
            await worker


def _error(result: Any) -> str:
    if isinstance(result, dict):
        error = result.get("error")
        if isinstance(error, dict):
            return str(error.get("message") or error)
        return str(error)
    return repr(result)[:200]
