"""cluster.stack.LLMs: the one place each part's LLM client is chosen and built."""

from __future__ import annotations

from pathlib import Path

from cluster.stack import LLMs
from models.llm.lazy import LazyLLM
from models.llm.openai_compatible import OpenAICompatibleLLM
from rapport.settings import Settings


def _settings(tmp_path: Path, **sections: dict[str, object]) -> Settings:
    return Settings.model_validate({"app": {"home": str(tmp_path)}, **sections})


async def test_parts_with_the_same_settings_share_one_client_and_a_remote_one_is_built_at_once(
    tmp_path: Path,
) -> None:
    llms = LLMs(
        _settings(
            tmp_path,
            llm={"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "big"},
            deriver={"summary_model": "small"},
        )
    )
    deriver, dialectic, summary = llms("deriver"), llms("dialectic"), llms("summary")
    assert isinstance(deriver, OpenAICompatibleLLM) and deriver.name == "openai/big"
    assert dialectic is deriver, "the same settings: one client, one connection pool"
    assert (
        isinstance(summary, OpenAICompatibleLLM) and summary.name == "openai/small" and summary is not deriver
    )
    assert llms("summary") is summary
    assert llms.alive(), "no node's model is in use"
    await llms.close()


async def test_a_local_model_is_built_on_its_first_call_not_when_asked_for(tmp_path: Path) -> None:
    llms = LLMs(_settings(tmp_path, llm={"provider": "local", "local_model": "smollm2-135m"}))
    dialectic = llms("dialectic")
    assert isinstance(dialectic, LazyLLM) and not dialectic.built
    assert dialectic.name == "local/smollm2-135m"
    assert (await dialectic.probe()).startswith("not loaded yet"), "a probe loads nothing"
    assert llms("deriver") is dialectic
    await llms.close()
