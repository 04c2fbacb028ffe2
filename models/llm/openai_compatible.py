"""Any server that speaks OpenAI's chat completions API: vLLM, Ray Serve LLM, Ollama, llama.cpp's
server, OpenAI itself. Structured output goes through ``response_format`` with a JSON schema, which
vLLM, llama.cpp and Ollama all enforce by guided decoding."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx

from models.llm.client import (
    ChatMessage,
    Completion,
    LLMClient,
    LLMConfigError,
    RetryPolicy,
    TransientError,
    Usage,
    log_timings,
    refused,
    response_format,
    retry_after,
)

TRANSIENT_STATUSES = {408, 425, 429, 500, 502, 503, 504, 529}


class OpenAICompatibleLLM(LLMClient):
    provider = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_tokens: int = 512,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        prose_fields: Mapping[str, Any] | None = None,
        context_tokens: int | None = None,
    ) -> None:
        """``prose_fields``: request fields added when no schema constrains the answer, for a server's own
        sampling options (a llama.cpp server's DRY sampler: ``models.llm.local.PROSE_SAMPLING``)."""
        super().__init__(model, max_tokens=max_tokens, retry=retry, context_tokens=context_tokens)
        self.prose_fields = dict(prose_fields or {})
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            transport=transport,
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def probe(self) -> str:
        """The server's model list (vLLM, Ray Serve LLM, llama.cpp and OpenAI all serve ``/models``)."""
        try:
            response = await self._http.get("/models", timeout=5.0)
        except httpx.HTTPError as exc:
            return f"unreachable: {type(exc).__name__} talking to {self.base_url}"
        if response.status_code != 200:
            return f"unavailable: {self.base_url}/models answered HTTP {response.status_code}"
        served = {str(m.get("id")) for m in response.json().get("data", []) if isinstance(m, dict)}
        if served and self.model not in served:
            return (
                f"misconfigured: {self.base_url} serves {sorted(served)[:5]}, not {self.model!r} (LLM_MODEL)"
            )
        return "ok"

    def _body(
        self, messages: Sequence[ChatMessage], max_tokens: int, temperature: float, **extra: Any
    ) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            **extra,
        }

    async def _complete(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        schema: tuple[str, dict[str, Any]] | None,
    ) -> Completion:
        extra = response_format(schema) if schema is not None else self.prose_fields
        body = self._body(messages, max_tokens, temperature, **extra)
        try:
            response = await self._http.post("/chat/completions", json=body)
        except httpx.TransportError as exc:  # includes timeouts
            raise TransientError(f"{type(exc).__name__} talking to {self.base_url}") from exc
        self._raise_for_status(response)
        try:
            data = response.json()
            text = data["choices"][0]["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise TransientError(f"{self.base_url} answered 200 with no completion in it") from exc
        usage = data.get("usage") or {}
        log_timings(self.model, data, usage)
        return Completion(
            text,
            Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)),
            str(data.get("model") or self.model),
        )

    async def _stream(
        self, messages: Sequence[ChatMessage], max_tokens: int, temperature: float
    ) -> AsyncIterator[str]:
        body = self._body(messages, max_tokens, temperature, stream=True, **self.prose_fields)
        try:
            async with self._http.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    self._raise_for_status(response)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, event names
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        return
                    try:
                        choices = json.loads(payload).get("choices") or []
                    except ValueError as exc:
                        raise TransientError(f"{self.base_url} sent a malformed stream event") from exc
                    for choice in choices:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            yield piece
        except httpx.TransportError as exc:
            raise TransientError(f"{type(exc).__name__} talking to {self.base_url}") from exc

    def _raise_for_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        message = _error_message(response)
        if status in TRANSIENT_STATUSES:
            raise TransientError(
                f"HTTP {status}: {message}", retry_after(response.headers.get("retry-after"))
            )
        if status in (401, 403):
            raise LLMConfigError(
                f"{self.base_url} refused the API key (HTTP {status}: {message}); set LLM_API_KEY "
                "(or the deriver's own key) to a valid one"
            )
        if status == 404:
            raise LLMConfigError(
                f"{self.base_url} has no model {self.model!r} or no /chat/completions route (HTTP 404: "
                f"{message}); check LLM_BASE_URL (it usually ends in /v1) and LLM_MODEL"
            )
        # Anything else (400 "context length exceeded", 413, 422) is about this request, not the setup.
        raise refused(status, message, self.base_url)


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        if isinstance(error, dict):
            return str(error.get("message") or error)[:300]
        if error:
            return str(error)[:300]
    except (ValueError, AttributeError):
        pass
    return response.text[:300] or response.reason_phrase
