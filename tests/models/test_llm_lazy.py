"""LazyLLM: built on the first call, once, rebuilt only when a build failed or its model has gone."""

from __future__ import annotations

import asyncio

import pytest

from models.llm import ChatMessage, LLMConfigError, LLMUnavailable
from models.llm.client import TransientError
from models.llm.lazy import LazyLLM
from models.llm.scripted import ScriptedLLM

HI = [ChatMessage("user", "hi")]


async def test_built_once_on_first_use_by_concurrent_callers() -> None:
    built: list[ScriptedLLM] = []

    async def build() -> ScriptedLLM:
        await asyncio.sleep(0.01)
        built.append(ScriptedLLM(lambda _: "hello"))
        return built[-1]

    lazy = LazyLLM(build, name="scripted/double")
    assert not lazy.built and lazy.name == "scripted/double" and built == []
    answers = await asyncio.gather(*(lazy.complete(HI) for _ in range(5)))
    assert [a.text for a in answers] == ["hello"] * 5 and len(built) == 1
    assert "".join([p async for p in lazy.stream(HI)]) == "hello" and len(built) == 1


async def test_a_failed_build_is_retried_and_a_gone_model_rebuilt() -> None:
    attempts = 0
    alive, down = True, True

    async def build() -> ScriptedLLM:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise LLMConfigError("set LLM_MODEL")
        return ScriptedLLM(lambda _: TransientError("connection refused") if down else "back")

    lazy = LazyLLM(build, name="local/m", alive=lambda: alive)
    with pytest.raises(LLMConfigError):
        await lazy.complete(HI)
    assert not lazy.built, "a failed build is not remembered"
    with pytest.raises(LLMUnavailable):
        await lazy.complete(HI)
    assert lazy.built and attempts == 2, "unavailable but alive: kept, the next call may succeed"
    alive = False
    with pytest.raises(LLMUnavailable):
        await lazy.complete(HI)
    assert not lazy.built, "its model has gone: dropped"
    down = False
    assert (await lazy.complete(HI)).text == "back" and attempts == 3
