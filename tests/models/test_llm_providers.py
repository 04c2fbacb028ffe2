"""The LLM providers against local servers that speak their wire formats: structured output, streaming,
retries on 429/5xx with backoff, and clear errors for what a retry cannot fix."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from models.llm import (
    ChatMessage,
    LLMClient,
    LLMConfigError,
    LLMOutputError,
    LLMRequestError,
    LLMUnavailable,
    RetryPolicy,
    build_llm,
)
from models.llm.anthropic import AnthropicLLM
from models.llm.openai_compatible import OpenAICompatibleLLM
from rapport.settings import LLMSettings
from tests.models.fake_llm_servers import (
    FakeServer,
    anthropic_error,
    anthropic_reply,
    anthropic_stream,
    openai_error,
    openai_reply,
    openai_stream,
    serve_fake,
)

FAST = RetryPolicy(attempts=3, base_delay_s=0.01, max_delay_s=0.05)
PROMPT = [ChatMessage("system", "Extract facts."), ChatMessage("user", "I moved to Lisbon in May.")]


class Facts(BaseModel):
    facts: list[str] = Field(max_length=5)


@pytest.fixture(scope="module")
def openai_server() -> Iterator[FakeServer]:
    with serve_fake("/v1/chat/completions") as server:
        yield server


@pytest.fixture(scope="module")
def anthropic_server() -> Iterator[FakeServer]:
    with serve_fake("/v1/messages") as server:
        yield server


@pytest.fixture
async def openai_llm(openai_server: FakeServer) -> LLMClient:
    return OpenAICompatibleLLM(f"{openai_server.url}/v1", "served-model", api_key="k-123", retry=FAST)


@pytest.fixture
async def anthropic_llm(anthropic_server: FakeServer) -> LLMClient:
    return AnthropicLLM("claude-test", api_key="sk-ant-test", base_url=anthropic_server.url, retry=FAST)


# --- OpenAI-compatible --------------------------------------------------------------------------------


async def test_openai_structured_output_sends_the_schema_and_parses_the_answer(
    openai_server: FakeServer, openai_llm: LLMClient
) -> None:
    openai_server.script(openai_reply('{"facts": ["lives in Lisbon since May"]}', 40, 9))
    facts, completion = await openai_llm.structured(PROMPT, Facts)
    assert facts.facts == ["lives in Lisbon since May"]
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (40, 9)
    sent = openai_server.requests[0]
    assert sent["model"] == "served-model"
    assert sent["messages"][0] == {"role": "system", "content": "Extract facts."}
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"] == Facts.model_json_schema()
    assert openai_server.headers[0]["authorization"] == "Bearer k-123"


async def test_openai_streaming_yields_the_pieces_in_order(
    openai_server: FakeServer, openai_llm: LLMClient
) -> None:
    openai_server.script(openai_stream(["She ", "moved ", "to Lisbon."]))
    pieces = [piece async for piece in openai_llm.stream(PROMPT)]
    assert pieces == ["She ", "moved ", "to Lisbon."]
    assert openai_server.requests[0]["stream"] is True


async def test_a_llama_cpp_server_says_where_the_time_went(
    openai_server: FakeServer, openai_llm: LLMClient, caplog: pytest.LogCaptureFixture
) -> None:
    reply = openai_reply("She moved.", 900, 40)
    reply.body["usage"]["prompt_tokens_details"] = {"cached_tokens": 600}
    reply.body["timings"] = {"prompt_ms": 5200.0, "predicted_ms": 3900.0}  # llama.cpp's extra field
    openai_server.script(reply, openai_reply("Again."))  # the second, from a server without timings
    with caplog.at_level(logging.INFO, logger="models.llm.client"):
        await openai_llm.complete(PROMPT)
        await openai_llm.complete(PROMPT)
    lines = [r.getMessage() for r in caplog.records if "read in" in r.getMessage()]
    assert lines == [
        "served-model: prompt 900 tokens (600 cached) read in 5.2 s, 40 tokens generated in 3.9 s"
    ]


async def test_prose_fields_go_with_prose_and_streams_but_not_with_a_schema(
    openai_server: FakeServer,
) -> None:
    # How workers reach a node's shared llama.cpp model: prose asks its DRY sampler not to loop.
    llm = OpenAICompatibleLLM(
        f"{openai_server.url}/v1", "served-model", retry=FAST, prose_fields={"dry_multiplier": 0.8}
    )
    openai_server.script(
        openai_reply('{"facts": []}'), openai_reply("She moved."), openai_stream(["She ", "moved."])
    )
    await llm.structured(PROMPT, Facts)
    await llm.complete(PROMPT)
    assert [piece async for piece in llm.stream(PROMPT)] == ["She ", "moved."]
    structured, prose, stream = openai_server.requests
    assert "dry_multiplier" not in structured and "response_format" in structured
    assert prose["dry_multiplier"] == 0.8 and "response_format" not in prose
    assert stream["dry_multiplier"] == 0.8 and stream["stream"] is True


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_openai_retries_rate_limits_and_server_errors(
    openai_server: FakeServer, openai_llm: LLMClient, status: int
) -> None:
    openai_server.script(openai_error(status, "busy", retry_after="0"), openai_reply("fine"))
    assert (await openai_llm.complete(PROMPT)).text == "fine"
    assert len(openai_server.requests) == 2


async def test_openai_gives_up_after_its_attempts_as_unavailable(
    openai_server: FakeServer, openai_llm: LLMClient
) -> None:
    openai_server.script(*[openai_error(503, "overloaded")] * 3)
    with pytest.raises(LLMUnavailable, match="after 3 attempts"):
        await openai_llm.complete(PROMPT)
    assert len(openai_server.requests) == 3


async def test_openai_bad_key_is_a_clear_error_not_retried(
    openai_server: FakeServer, openai_llm: LLMClient
) -> None:
    openai_server.script(openai_error(401, "Incorrect API key provided"))
    with pytest.raises(LLMConfigError, match="LLM_API_KEY"):
        await openai_llm.complete(PROMPT)
    assert len(openai_server.requests) == 1


@pytest.mark.parametrize(
    ("status", "message", "too_long"),
    [
        (400, "This model's maximum context length is 2048 tokens. However, you requested 9755 tokens", True),
        (400, "request (9755 tokens) exceeds the available context size (4096 tokens)", True),
        (413, "Request Entity Too Large", True),
        (422, "messages.0.content: unsupported input", False),
    ],
)
async def test_openai_refusing_one_request_is_that_requests_error_not_a_misconfiguration(
    openai_server: FakeServer, openai_llm: LLMClient, status: int, message: str, too_long: bool
) -> None:
    """Work that made the request fails (and is retried, then parked); the model is still up and
    configured, so nothing else waits for it."""
    openai_server.script(openai_error(status, message))
    with pytest.raises(LLMRequestError, match=f"HTTP {status}") as refused:
        await openai_llm.complete(PROMPT)
    assert not isinstance(refused.value, LLMConfigError)
    assert refused.value.too_long is too_long
    assert len(openai_server.requests) == 1, "not retried as if transient"


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (400, "Your credit balance is too low to access the API."),
        (400, "Unsupported parameter: 'max_tokens' is not supported with this model."),
        (402, "Payment required"),
        (429, None),  # (a control: transient, retried)
    ],
)
async def test_openai_4xx_that_no_request_can_pass_is_a_misconfiguration(
    openai_server: FakeServer, openai_llm: LLMClient, status: int, message: str | None
) -> None:
    """Words that say the account or the settings are wrong pause the work (nothing is parked for them)."""
    if message is None:
        openai_server.script(*[openai_error(status, "slow down", retry_after="0")] * 3)
        with pytest.raises(LLMUnavailable):
            await openai_llm.complete(PROMPT)
        return
    openai_server.script(openai_error(status, message))
    with pytest.raises(LLMConfigError, match="an operator must fix"):
        await openai_llm.complete(PROMPT)


async def test_openai_unknown_model_is_a_misconfiguration(
    openai_server: FakeServer, openai_llm: LLMClient
) -> None:
    openai_server.script(openai_error(404, "The model `served-model` does not exist."))
    with pytest.raises(LLMConfigError, match="LLM_MODEL"):
        await openai_llm.complete(PROMPT)


async def test_an_unreachable_server_is_unavailable() -> None:
    from tests.served import free_port

    llm = OpenAICompatibleLLM(f"http://127.0.0.1:{free_port()}/v1", "m", retry=FAST)
    with pytest.raises(LLMUnavailable, match="ConnectError"):
        await llm.complete(PROMPT)


async def test_broken_json_gets_one_repair_attempt(openai_server: FakeServer, openai_llm: LLMClient) -> None:
    openai_server.script(
        openai_reply('{"facts": ["unterminated'), openai_reply('{"facts": ["lives in Lisbon"]}')
    )
    facts, completion = await openai_llm.structured(PROMPT, Facts)
    assert facts.facts == ["lives in Lisbon"]
    repair = openai_server.requests[1]["messages"]
    assert repair[-2] == {"role": "assistant", "content": '{"facts": ["unterminated'}
    assert "not valid" in repair[-1]["content"]
    assert completion.usage.prompt_tokens == 22, "the usage of both calls is counted"


async def test_output_still_broken_after_the_repair_carries_the_raw_text(
    openai_server: FakeServer, openai_llm: LLMClient
) -> None:
    openai_server.script(openai_reply("not json"), openai_reply('{"facts": "a string, not a list"}'))
    with pytest.raises(LLMOutputError) as caught:
        await openai_llm.structured(PROMPT, Facts)
    assert caught.value.raw == '{"facts": "a string, not a list"}'


# --- Anthropic ----------------------------------------------------------------------------------------


async def test_anthropic_structured_output_is_a_forced_tool_call(
    anthropic_server: FakeServer, anthropic_llm: LLMClient
) -> None:
    tool_use = {"type": "tool_use", "id": "toolu_1", "name": "Facts", "input": {"facts": ["moved to Lisbon"]}}
    anthropic_server.script(anthropic_reply([tool_use], 30, 6))
    facts, completion = await anthropic_llm.structured(PROMPT, Facts)
    assert facts.facts == ["moved to Lisbon"]
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (30, 6)
    sent = anthropic_server.requests[0]
    assert sent["system"] == "Extract facts."
    assert sent["messages"] == [{"role": "user", "content": "I moved to Lisbon in May."}]
    assert sent["tools"][0]["input_schema"] == Facts.model_json_schema()
    assert sent["tool_choice"] == {"type": "tool", "name": "Facts"}
    sent_headers = anthropic_server.headers[0]
    assert "sk-ant-test" in (sent_headers.get("x-api-key", ""), sent_headers.get("authorization", "")[7:])


async def test_anthropic_text_and_streaming(anthropic_server: FakeServer, anthropic_llm: LLMClient) -> None:
    anthropic_server.script(anthropic_reply([{"type": "text", "text": "Lisbon."}]))
    assert (await anthropic_llm.complete(PROMPT)).text == "Lisbon."
    anthropic_server.script(anthropic_stream(["She lives ", "in Lisbon."]))
    assert [piece async for piece in anthropic_llm.stream(PROMPT)] == ["She lives ", "in Lisbon."]


@pytest.mark.parametrize("status", [429, 500, 529])
async def test_anthropic_retries_rate_limits_and_overload(
    anthropic_server: FakeServer, anthropic_llm: LLMClient, status: int
) -> None:
    anthropic_server.script(
        anthropic_error(status, "slow down", retry_after="0"),
        anthropic_reply([{"type": "text", "text": "ok"}]),
    )
    assert (await anthropic_llm.complete(PROMPT)).text == "ok"
    assert len(anthropic_server.requests) == 2


async def test_anthropic_bad_key_is_a_clear_error(
    anthropic_server: FakeServer, anthropic_llm: LLMClient
) -> None:
    anthropic_server.script(anthropic_error(401, "invalid x-api-key"))
    with pytest.raises(LLMConfigError, match="LLM_API_KEY"):
        await anthropic_llm.complete(PROMPT)
    assert len(anthropic_server.requests) == 1


@pytest.mark.parametrize(
    ("status", "message"),
    [(400, "prompt is too long: 212000 tokens > 200000 maximum"), (413, "request_too_large")],
)
async def test_anthropic_refusing_one_request_is_that_requests_error(
    anthropic_server: FakeServer, anthropic_llm: LLMClient, status: int, message: str
) -> None:
    anthropic_server.script(anthropic_error(status, message))
    with pytest.raises(LLMRequestError, match=f"HTTP {status}") as refused:
        await anthropic_llm.complete(PROMPT)
    assert refused.value.too_long
    assert len(anthropic_server.requests) == 1


def test_each_provider_knows_its_context_window(tmp_path: Path) -> None:
    assert LLMSettings().context_window == 8192 // 2, "the local model's slot: its share of the context"
    assert LLMSettings(local_parallel=4, local_context_tokens=16384).context_window == 4096
    assert LLMSettings(context_tokens=65536).context_window == 4096, "the local slot is what it is"
    assert LLMSettings(provider="openai").context_window == 8192
    assert LLMSettings(provider="openai", context_tokens=32768).context_window == 32768
    assert LLMSettings(provider="anthropic").context_window == 200_000
    served = build_llm(
        LLMSettings(provider="openai", base_url="http://x/v1", model="m", context_tokens=2048), tmp_path
    )
    assert served.context_tokens == 2048


def test_anthropic_without_a_key_says_which_setting_is_missing() -> None:
    with pytest.raises(LLMConfigError, match="LLM_API_KEY"):
        build_llm(LLMSettings(provider="anthropic"), Path("."))


def test_openai_without_a_url_says_which_setting_is_missing() -> None:
    with pytest.raises(LLMConfigError, match="LLM_BASE_URL"):
        build_llm(LLMSettings(provider="openai", model="m"), Path("."))


def test_a_missing_local_model_file_says_which_setting_to_change(tmp_path: Path) -> None:
    with pytest.raises(LLMConfigError, match="local_model"):
        build_llm(LLMSettings(local_model=str(tmp_path / "absent.gguf")), tmp_path)
    with pytest.raises(LLMConfigError, match="local_model"):
        build_llm(LLMSettings(local_model="gpt-17"), tmp_path)
