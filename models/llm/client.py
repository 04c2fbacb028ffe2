"""The LLM interface every provider implements, its errors, and the retry policy they share.

Chat messages go in; out comes text, a stream of text, or an object validated against a pydantic model
(``structured``), with the token usage of the call. Providers only implement ``_complete`` and
``_stream`` for one attempt; retries, backoff and the one repair attempt for malformed structured output
live here, so every provider behaves alike.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from rapport import metrics

log = logging.getLogger(__name__)

Role = Literal["system", "user", "assistant"]
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens
        )


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    usage: Usage = field(default_factory=Usage)
    model: str = ""


# --- errors ------------------------------------------------------------------------------------------


class LLMError(Exception):
    """Base class: ``str(error)`` says what went wrong and what to do."""


class LLMUnavailable(LLMError):
    """The model cannot answer just now (rate limited, overloaded, unreachable, timed out) even after
    retrying. Work waiting on it should wait, not count a failed attempt."""


class LLMConfigError(LLMError):
    """The provider refuses this configuration (a missing or wrong key, an unknown model, a missing
    weights file). Retrying will not help; an operator must change a setting."""


class LLMRequestError(LLMError):
    """The provider refused this one request (longer than the model's context, or otherwise not
    acceptable to it) while the model itself is up and configured: the request must change, other
    requests may well succeed. Work that made it counts a failed attempt; it is never an outage."""

    def __init__(self, message: str, *, too_long: bool = False) -> None:
        super().__init__(message)
        self.too_long = too_long


# How servers say a prompt is longer than the model's context: vLLM and OpenAI ("maximum context length
# is 2048 tokens"), llama.cpp ("exceeds the available context size"), Anthropic ("prompt is too long"),
# Ollama and others ("context window", "too many tokens").
TOO_LONG = re.compile(
    r"context[ _-]?(length|size|window)|too long|too many tokens|maximum .{0,40}tokens|exceeds", re.I
)


# How servers say that no request will do until an operator acts, though they answer 400 or 402: an
# account out of credit or quota, a parameter or feature the model does not take (OpenAI's newer models
# refuse max_tokens; a server without guided decoding refuses response_format).
SETUP_WRONG = re.compile(
    r"credit balance|quota|billing|insufficient[_ ]funds|payment|unsupported (parameter|value)|not supported"
    r"|response_format|does not exist|unknown model",
    re.I,
)


def refused(status: int, message: str, where: str) -> LLMError:
    """A 4xx (not 401, 403 or 404) as the interface's error: LLMRequestError for this request alone
    (too long, unacceptable input), LLMConfigError where the words say no request will do (402, no
    credit, an unsupported parameter)."""
    text = f"{where} refused the request (HTTP {status}: {message})"
    too_long = status == 413 or bool(TOO_LONG.search(message))
    if not too_long and (status == 402 or SETUP_WRONG.search(message)):
        return LLMConfigError(f"{text}; an operator must fix the account or the settings (llm.*)")
    return LLMRequestError(text, too_long=too_long)


class LLMOutputError(LLMError):
    """The model answered, but not with what was asked (no valid JSON for the schema, even after one
    repair attempt). ``raw`` holds its last answer, for the operator."""

    def __init__(self, message: str, raw: str) -> None:
        super().__init__(message)
        self.raw = raw


class TransientError(Exception):
    """Raised by a provider for one failed attempt that may succeed if repeated (HTTP 429/5xx, a transport
    error, a timeout). ``retry_after_s`` is the server's hint, when it gave one."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 4  # in all, the first included
    base_delay_s: float = 0.5
    max_delay_s: float = 20.0

    def delay(self, attempt: int, hint: float | None) -> float:
        """Exponential backoff with full jitter; a server's Retry-After wins when it is longer."""
        backoff = random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2**attempt))
        return max(backoff, min(hint or 0.0, self.max_delay_s * 3))


async def with_retries(call: Callable[[], Awaitable[T]], policy: RetryPolicy, what: str) -> T:
    """``call()`` until it does not raise TransientError, at most ``policy.attempts`` times."""
    for attempt in range(policy.attempts):
        try:
            return await call()
        except TransientError as exc:
            if attempt + 1 >= policy.attempts:
                raise LLMUnavailable(f"{what}: {exc} (after {policy.attempts} attempts)") from exc
            pause = policy.delay(attempt, exc.retry_after_s)
            log.warning("%s: %s; retrying in %.1fs", what, exc, pause)
            await asyncio.sleep(pause)
    raise AssertionError("unreachable")


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds form only; dates are rare from LLM servers)."""
    try:
        return float(value) if value else None
    except ValueError:
        return None


# --- tokens --------------------------------------------------------------------------------------------

# Tokens a chat template adds around the turns (role headers, separators), and a request's own words.
FRAMING_TOKENS = 96

# Who pays for the LLM calls made in this context: (app id, part: deriver, dream, dialectic). Set with
# ``billed_to``; every call counts its tokens in rapport_llm_app_tokens under it.
BILLED: ContextVar[tuple[str, str] | None] = ContextVar("rapport_llm_billed", default=None)


@contextmanager
def billed_to(app_id: str, part: str) -> Iterator[None]:
    token = BILLED.set((app_id, part))
    try:
        yield
    finally:
        BILLED.reset(token)


def _bill(billed: tuple[str, str] | None, prompt: int, completion: int) -> None:
    if billed is None:
        return
    app_id, part = billed
    metrics.LLM_APP_TOKENS.inc(prompt, app_id=app_id, part=part, direction="prompt")
    metrics.LLM_APP_TOKENS.inc(completion, app_id=app_id, part=part, direction="completion")


def estimate_tokens(text: str) -> int:
    """About how many tokens ``text`` takes, erring high for prose: English runs about 4 characters a
    token in common tokenizers (Qwen's, Llama's, GPT's) and other scripts as little as one character a
    token, so it counts 3.5 characters a token plus two thirds of a token for each byte above ASCII.
    (Runs of digits or base64 can take more; a server that refuses a prompt as too long says so.)"""
    return math.ceil(len(text) / 3.5 + (len(text.encode()) - len(text)) / 1.5)


# --- the interface -----------------------------------------------------------------------------------


@cache
def output_schema(output: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema a model is constrained to, for guided decoding (built once per model: building it
    costs more than a batch's database work; callers must not change it)."""
    return output.model_json_schema()


def response_format(schema: tuple[str, dict[str, Any]] | None) -> dict[str, Any]:
    """The request fields that constrain an OpenAI-style chat completion to ``schema`` (name, JSON schema);
    none without one. vLLM, llama.cpp and Ollama enforce it by guided decoding."""
    if schema is None:
        return {}
    name, json_schema = schema
    return {"response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": json_schema}}}


def log_timings(model: str, answer: dict[str, Any], usage: dict[str, Any]) -> None:
    """One line per call where the server says where its time went (llama.cpp's ``timings``: reading
    the prompt, generating), with how much of the prompt a KV cache spared. Others log nothing."""
    timings = answer.get("timings")
    if not isinstance(timings, dict):
        return
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
    log.info(
        "%s: prompt %s tokens (%s cached) read in %.1f s, %s tokens generated in %.1f s",
        model,
        usage.get("prompt_tokens", "?"),
        cached,
        (timings.get("prompt_ms") or 0) / 1000,
        usage.get("completion_tokens", "?"),
        (timings.get("predicted_ms") or 0) / 1000,
    )


def parse_output(output: type[M], text: str) -> M:
    """The model's answer as ``output``; tolerates a fenced code block around the JSON."""
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    return output.model_validate_json(body)


class LLMClient(ABC):
    """One configured model of one provider."""

    provider: str = ""

    def __init__(
        self,
        model: str,
        *,
        max_tokens: int = 512,
        retry: RetryPolicy | None = None,
        context_tokens: int | None = None,
    ) -> None:
        self.model = model
        self.max_tokens = max_tokens
        self.retry = retry or RetryPolicy()
        # Tokens one request may hold, prompt and answer; None: not known (callers assume plenty).
        self.context_tokens = context_tokens

    @property
    def name(self) -> str:
        """``provider/model``, as recorded beside what the model derived."""
        return f"{self.provider}/{self.model}"

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int | None = None,
        temperature: float = 0.0,
        schema: tuple[str, dict[str, Any]] | None = None,
    ) -> Completion:
        """The model's answer, retried on transient failures. ``schema`` (name, JSON schema) constrains
        the output where the provider can."""
        return await self._counted(
            with_retries(
                lambda: self._measured(
                    self._complete(messages, max_tokens or self.max_tokens, temperature, schema)
                ),
                self.retry,
                self.name,
            )
        )

    async def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int | None = None, temperature: float = 0.0
    ) -> AsyncIterator[str]:
        """The answer as it is generated. A failure before the first piece is retried; after it, raised.
        Its tokens are counted when it ends, by estimate (providers do not all report a stream's usage):
        the prompt's, and what was written, however far it got."""
        billed = BILLED.get()  # read where the stream is started: it may be read on in another context
        written: list[str] = []

        async def first() -> tuple[AsyncIterator[str], str | None]:
            pieces = self._stream(messages, max_tokens or self.max_tokens, temperature)
            try:
                return pieces, await anext(pieces)
            except StopAsyncIteration:
                return pieces, None

        pieces, head = await self._counted(
            with_retries(lambda: self._measured(first()), self.retry, self.name)
        )
        try:
            if head is None:
                return
            written.append(head)
            yield head
            async for piece in pieces:
                written.append(piece)
                yield piece
        except TransientError as exc:
            metrics.LLM_ERRORS.inc(kind="unavailable", **self._labels)
            raise LLMUnavailable(f"{self.name}: the stream broke off ({exc})") from exc
        finally:
            prompt = sum(estimate_tokens(m.content) for m in messages)
            completion = estimate_tokens("".join(written)) if written else 0
            metrics.LLM_TOKENS.inc(prompt, direction="prompt", **self._labels)
            metrics.LLM_TOKENS.inc(completion, direction="completion", **self._labels)
            _bill(billed, prompt, completion)

    async def structured(
        self,
        messages: Sequence[ChatMessage],
        output: type[M],
        *,
        max_tokens: int | None = None,
        temperature: float = 0.0,
    ) -> tuple[M, Completion]:
        """An answer validated as ``output``. Invalid JSON gets one repair attempt (the error shown to the
        model); if that fails too, LLMOutputError carries the raw answer."""
        schema = (output.__name__, output_schema(output))
        first = await self.complete(messages, max_tokens=max_tokens, temperature=temperature, schema=schema)
        try:
            return parse_output(output, first.text), first
        except (ValidationError, json.JSONDecodeError, ValueError) as exc:
            problem = _describe(exc)
        log.info("%s: invalid %s output (%s); asking once for a repair", self.name, output.__name__, problem)
        ask = (
            f"That answer is not valid: {problem}. Reply again with only the JSON object, matching the "
            "schema exactly."
        )
        repair = [*messages, ChatMessage("assistant", first.text), ChatMessage("user", ask)]
        if self.context_tokens is not None:
            room = self.context_tokens - (max_tokens or self.max_tokens)
            if sum(estimate_tokens(m.content) for m in repair) + FRAMING_TOKENS > room:
                # The prompt was fitted to the context with one answer's room: shown its invalid answer
                # too, it would not fit. Asked again with only what was wrong.
                again = f"(A first answer was not valid: {problem}. Reply with only the JSON object.)"
                repair = [*messages[:-1], ChatMessage("user", f"{messages[-1].content}\n\n{again}")]
        second = await self.complete(repair, max_tokens=max_tokens, temperature=temperature, schema=schema)
        usage = first.usage + second.usage
        try:
            return parse_output(output, second.text), Completion(second.text, usage, second.model)
        except (ValidationError, json.JSONDecodeError, ValueError) as exc:
            metrics.LLM_ERRORS.inc(kind="invalid_output", **self._labels)
            raise LLMOutputError(
                f"{self.name} did not produce a valid {output.__name__} after a repair attempt: {_describe(exc)}",
                second.text,
            ) from exc

    # --- metrics (rapport/metrics.py): every request sent, its time, tokens and errors ------------------

    @property
    def _labels(self) -> dict[str, str]:
        return {"provider": self.provider, "model": self.model}

    async def _measured(self, attempt: Awaitable[T]) -> T:
        """One request to the provider, counted and timed (a stream: until its first piece)."""
        labels = self._labels
        metrics.LLM_CALLS.inc(**labels)
        start = time.perf_counter()
        try:
            result = await attempt
        except TransientError:
            metrics.LLM_ERRORS.inc(kind="transient", **labels)
            raise
        except LLMConfigError:
            metrics.LLM_ERRORS.inc(kind="config", **labels)
            raise
        except LLMRequestError:
            metrics.LLM_ERRORS.inc(kind="refused", **labels)
            raise
        finally:
            metrics.LLM_DURATION.observe(time.perf_counter() - start, **labels)
        if isinstance(result, Completion):
            metrics.LLM_TOKENS.inc(result.usage.prompt_tokens, direction="prompt", **labels)
            metrics.LLM_TOKENS.inc(result.usage.completion_tokens, direction="completion", **labels)
            _bill(BILLED.get(), result.usage.prompt_tokens, result.usage.completion_tokens)
        return result

    async def _counted(self, call: Awaitable[T]) -> T:
        """``call`` (a request with its retries), counting the give-up when the retries ran out."""
        try:
            return await call
        except LLMUnavailable:
            metrics.LLM_ERRORS.inc(kind="unavailable", **self._labels)
            raise

    async def close(self) -> None:  # noqa: B027  (a no-op for providers that hold nothing)
        """Release connections."""

    async def probe(self) -> str:
        """What /health says of this model without spending a completion: "ok" if it answered a cheap
        request, else why not. Providers with nothing cheap to ask say "configured"."""
        return "configured"

    # --- what a provider implements --------------------------------------------------------------------

    @abstractmethod
    async def _complete(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float,
        schema: tuple[str, dict[str, Any]] | None,
    ) -> Completion:
        """One attempt. Raise TransientError for what a retry may fix, LLMConfigError for settings."""

    @abstractmethod
    def _stream(
        self, messages: Sequence[ChatMessage], max_tokens: int, temperature: float
    ) -> AsyncIterator[str]:
        """One attempt, as an async generator of text pieces."""


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "the top level"
        return f"{first.get('msg', 'invalid')} at {where}"
    return str(exc).splitlines()[0][:200]
