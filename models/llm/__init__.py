"""LLMs: the interface (`client`) and one module per provider.

`build_llm` turns an `[llm]` settings section into a client: `local` (a GGUF model in this process,
the offline default), `anthropic`, or `openai` (any OpenAI-compatible server: vLLM, Ray Serve LLM,
Ollama, llama.cpp).
"""

from __future__ import annotations

from pathlib import Path

from models.llm.client import (
    ChatMessage,
    Completion,
    LLMClient,
    LLMConfigError,
    LLMError,
    LLMOutputError,
    LLMRequestError,
    LLMUnavailable,
    RetryPolicy,
    Usage,
)
from rapport.settings import LLMSettings

__all__ = [
    "ChatMessage",
    "Completion",
    "LLMClient",
    "LLMConfigError",
    "LLMError",
    "LLMOutputError",
    "LLMRequestError",
    "LLMUnavailable",
    "RetryPolicy",
    "Usage",
    "build_llm",
    "llm_name",
]


def llm_name(llm: LLMSettings) -> str:
    """provider/model, as logs, /health and a job's ledger name the model."""
    return f"{llm.provider}/{llm.model or (llm.local_model if llm.provider == 'local' else 'default')}"


def build_llm(llm: LLMSettings, home: Path) -> LLMClient:
    """The client an `[llm]` section describes (a role's section, after its overrides: see
    `Settings.llm_for`). Raises LLMConfigError with the setting to change when it cannot be built."""
    retry = RetryPolicy(attempts=llm.max_retries + 1)
    key = llm.api_key.get_secret_value() if llm.api_key else None
    if llm.provider == "anthropic":
        from models.llm.anthropic import DEFAULT_MODEL, AnthropicLLM

        return AnthropicLLM(
            llm.model or DEFAULT_MODEL,
            api_key=key,
            base_url=llm.base_url,
            timeout_s=llm.call_timeout_s,
            max_tokens=llm.max_tokens,
            retry=retry,
            context_tokens=llm.context_window,
        )
    if llm.provider == "openai":
        from models.llm.openai_compatible import OpenAICompatibleLLM

        if not llm.base_url or not llm.model:
            raise LLMConfigError(
                "provider openai needs LLM_BASE_URL (e.g. http://vllm:8000/v1) and LLM_MODEL (the served model's name)"
            )
        return OpenAICompatibleLLM(
            llm.base_url,
            llm.model,
            api_key=key,
            timeout_s=llm.call_timeout_s,
            max_tokens=llm.max_tokens,
            retry=retry,
            context_tokens=llm.context_window,
        )
    from models.llm.local import LocalLLM, LocalModelOptions
    from models.llm.weights import resolve_local_model

    path = resolve_local_model(llm.local_model, home)
    options = LocalModelOptions(
        context_tokens=llm.local_context_tokens, threads=llm.local_threads, parallel=llm.local_parallel
    )
    return LocalLLM(
        path, llm.model or llm.local_model, options=options, max_tokens=llm.max_tokens, retry=retry
    )
