"""The embedding interface: anything that turns texts into unit-length vectors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class TextEmbedder(Protocol):
    """Turns texts into L2-normalised float32 vectors, one row per text."""

    @property
    def dimension(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class EmbeddingModelNotFound(RuntimeError):
    """The configured model is not on this machine (Rapport never downloads weights)."""
