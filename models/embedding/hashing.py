"""A deterministic embedder with no weights, for tests and benchmarks of the pipelines around the model.

Each word (lower-cased, letters and digits) is hashed to a few signed dimensions; a text's vector is
the normalised sum. The same text always gives the same vector, texts sharing most words are close
(cosine near 1), and unrelated ones are near 0, which is all deduplication and ranking logic needs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from rapport import metrics

WORD = re.compile(r"[0-9a-z]+")


class HashingEmbedder:
    def __init__(self, dimension: int = 384, *, spread: int = 3) -> None:
        self._dimension = dimension
        self._spread = spread

    @property
    def dimension(self) -> int:
        return self._dimension

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        metrics.EMBED_BATCH.observe(len(texts), model="hashing")
        vectors = np.zeros((len(texts), self._dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in WORD.findall(text.lower()):
                digest = hashlib.blake2b(word.encode(), digest_size=4 * self._spread).digest()
                for i in range(self._spread):
                    value = int.from_bytes(digest[4 * i : 4 * i + 4], "little")
                    vectors[row, value % self._dimension] += 1.0 if value & 1 << 31 else -1.0
            norm = np.linalg.norm(vectors[row])
            if norm > 0:
                vectors[row] /= norm
            else:
                vectors[row, 0] = 1.0
        return vectors

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_sync(texts)
