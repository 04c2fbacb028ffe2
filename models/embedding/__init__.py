"""Text embeddings: the interface (`client`) and the local sentence-transformers provider."""

from __future__ import annotations

from models.embedding.client import EmbeddingModelNotFound, TextEmbedder
from models.embedding.sentence_transformer import (
    DEFAULT_MAX_WINDOWS,
    SentenceTransformerEmbedder,
    locate_model,
)

__all__ = [
    "DEFAULT_MAX_WINDOWS",
    "EmbeddingModelNotFound",
    "SentenceTransformerEmbedder",
    "TextEmbedder",
    "load_embedder",
    "locate_model",
]


def load_embedder(
    source: str,
    device: str = "auto",
    precision: str = "auto",
    cpu_threads: int = 0,
    max_windows: int = DEFAULT_MAX_WINDOWS,
) -> SentenceTransformerEmbedder:
    """The configured model, loaded in this process."""
    return SentenceTransformerEmbedder(
        source, device=device, precision=precision, cpu_threads=cpu_threads, max_windows=max_windows
    )
