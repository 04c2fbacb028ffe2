"""cluster.stack.LLMs: the one place each part's LLM client is chosen and built."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.stack import LLMs
from models.llm import LLMConfigError
from models.llm.lazy import LazyLLM
from models.llm.openai_compatible import OpenAICompatibleLLM
from rapport.settings import Settings


def _settings(tmp_path: Path, **sections: dict[str, object]) -> Settings:
    return Settings.model_validate({"app": {"home": str(tmp_path)}, **sections})


async def test_parts_with_the_same_settings_share_one_client(tmp_path: Path) -> None:
    llms = LLMs(
        _settings(
            tmp_path,
            llm={
                "provider": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "model": "big",
                "context_tokens": 2048,
            },
            deriver={"summary_model": "small"},
        )
    )
    deriver, dialectic, summary = llms("deriver"), llms("dialectic"), llms("summary")
    assert dialectic is deriver, "the same settings: one client, one connection pool"
    assert summary is not deriver and llms("summary") is summary
    built = await llms.built("deriver")
    assert isinstance(built, OpenAICompatibleLLM) and built.name == "openai/big"
    assert built.context_tokens == 2048, "the deriver fits its prompts to the built client's limits"
    assert (await llms.built("summary")).name == "openai/small"
    assert llms.alive(), "no node's model is in use"
    await llms.close()


async def test_a_client_is_built_on_its_first_call_and_a_wrong_setting_fails_that_call(
    tmp_path: Path,
) -> None:
    llms = LLMs(_settings(tmp_path, llm={"provider": "openai"}))  # no base_url, no model
    dialectic = llms("dialectic")  # an API starts with it, whatever the settings say
    assert isinstance(dialectic, LazyLLM) and not dialectic.built
    with pytest.raises(LLMConfigError, match="LLM_BASE_URL"):
        await llms.built("deriver")  # the deriver fails fast, naming the setting
    await llms.close()


async def test_a_local_model_loads_nothing_until_asked(tmp_path: Path) -> None:
    llms = LLMs(_settings(tmp_path, llm={"provider": "local", "local_model": "smollm2-135m"}))
    dialectic = llms("dialectic")
    assert isinstance(dialectic, LazyLLM) and not dialectic.built
    assert dialectic.name == "local/smollm2-135m"
    assert (await dialectic.probe()).startswith("not loaded yet"), "a probe loads nothing"
    assert llms("deriver") is dialectic
    await llms.close()
