"""A long text costs a bounded number of model passes (issue #27): at most
``embedding.max_windows_per_text`` windows, averaged into one vector."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from models.embedding import DEFAULT_MAX_WINDOWS, SentenceTransformerEmbedder
from rapport.settings import EmbeddingSettings

SENTENCE = "the weather report for the region said it would stay mild and dry. "


def _count_passes(embedder: SentenceTransformerEmbedder, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of texts (windows) each model call is given."""
    calls: list[int] = []
    encode = embedder.model.encode

    def counted(pieces: list[str], **kwargs: Any) -> Any:
        calls.append(len(pieces))
        return encode(pieces, **kwargs)

    monkeypatch.setattr(embedder.model, "encode", counted)
    return calls


def test_the_default_cap_is_the_settings_default() -> None:
    assert EmbeddingSettings().max_windows_per_text == DEFAULT_MAX_WINDOWS


def test_a_very_long_text_costs_at_most_the_cap_and_gives_one_unit_vector(
    real_embedder: SentenceTransformerEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_passes(real_embedder, monkeypatch)
    longest = (SENTENCE * 800)[:50_000]  # a message at MESSAGE_CONTENT_MAX: 47 windows uncapped
    vectors = real_embedder.embed_sync([longest, "a short one"])
    assert vectors.shape == (2, real_embedder.dimension)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert calls == [real_embedder.max_windows + 1], "the cap's windows, and one for the short text"

    monkeypatch.setattr(real_embedder, "max_windows", 2)
    calls.clear()
    vector = real_embedder.embed_sync([longest])
    assert calls == [2] and vector.shape == (1, real_embedder.dimension)


def test_words_within_the_cap_count_and_words_past_it_do_not(
    real_embedder: SentenceTransformerEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(real_embedder, "max_windows", 2)
    filler = SENTENCE * 60  # past two windows of MiniLM's 256 tokens
    assert len(real_embedder.tokenizer(filler)["input_ids"]) > 2 * real_embedder.max_tokens
    early_text = SENTENCE * 5 + "My daughter plays the violin. " + SENTENCE * 55
    plain, early, late = real_embedder.embed_sync(
        [filler, early_text, filler + "My daughter plays the violin."]
    )
    violin = real_embedder.embed_sync(["violin lessons"])[0]
    assert early @ violin > plain @ violin + 0.02, "within the cap, the words count"
    assert np.isclose(late @ violin, plain @ violin, atol=1e-3), "past the cap, they are not embedded"
