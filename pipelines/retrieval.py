"""Finding things again: document query (Honcho's cosine search) and hybrid search over messages.

Search strategies are data: a mode names a `SearchRecipe`, and one function runs any recipe. Results
come back from PostgreSQL (the source of truth), in the order the index ranked them.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from models.embedding import TextEmbedder
from storage import collections, documents, messages, sessions, users
from storage.db import Database
from storage.index import DOCUMENTS, MESSAGES, Hit, VectorIndex
from storage.query import Record
from storage.validation import check_filter, check_text

Mode = Literal["semantic", "fulltext", "hybrid"]
MAX_CANDIDATES = 5_000
QUERY_MAX = 1_000


@dataclass(frozen=True, slots=True)
class SearchRecipe:
    """How one search mode ranks messages.

    semantic/fulltext: which retrievers run. With both, each list's scores are scaled to [0, 1] and
    mixed as ``alpha * semantic + (1 - alpha) * fulltext``. ``neighbour_boost`` then adds that share of
    the best score among a message's session neighbours (the turns just before and after it), since the
    evidence for an answer is often spread over adjacent turns. ``candidates`` is how many each
    retriever returns before fusion.
    """

    semantic: bool
    fulltext: bool
    alpha: float = 0.5
    neighbour_boost: float = 0.0
    candidates: int = 100


# Tuned on LoCoMo (bench/locomo_retrieval.py; figures in docs/benchmarks.md).
RECIPES: dict[Mode, SearchRecipe] = {
    "semantic": SearchRecipe(semantic=True, fulltext=False),
    "fulltext": SearchRecipe(semantic=False, fulltext=True),
    "hybrid": SearchRecipe(semantic=True, fulltext=True, alpha=0.5, neighbour_boost=0.3),
}


def _scaled(hits: Sequence[Hit]) -> dict[str, float]:
    """Scores scaled to [0, 1] within the list (all 1 when they are equal)."""
    if not hits:
        return {}
    low, high = min(h.score for h in hits), max(h.score for h in hits)
    span = high - low
    return {h.id: (h.score - low) / span if span > 0 else 1.0 for h in hits}


def fuse(semantic: Sequence[Hit], fulltext: Sequence[Hit], recipe: SearchRecipe) -> dict[str, float]:
    """One score per candidate: a single retriever's own score, or the scaled mix of both."""
    if not (recipe.semantic and recipe.fulltext):
        return {h.id: h.score for h in (semantic or fulltext)}
    scores: dict[str, float] = {}
    for weight, hits in ((recipe.alpha, semantic), (1 - recipe.alpha, fulltext)):
        for hit_id, value in _scaled(hits).items():
            scores[hit_id] = scores.get(hit_id, 0.0) + weight * value
    return scores


def boost_neighbours(
    scores: dict[str, float], neighbours: dict[str, tuple[str | None, str | None]], share: float
) -> dict[str, float]:
    if not share:
        return scores
    boosted = {}
    for message_id, score in scores.items():
        before, after = neighbours.get(message_id, (None, None))
        best_neighbour = max(scores.get(before or "", 0.0), scores.get(after or "", 0.0))
        boosted[message_id] = score + share * best_neighbour
    return boosted


async def _none() -> list[Hit]:
    return []


async def search_messages(
    database: Database,
    index: VectorIndex,
    embedder: TextEmbedder,
    *,
    app_id: str,
    user_id: str | None,
    session_id: str | None = None,
    query: str,
    top_k: int = 10,
    mode: Mode = "hybrid",
    filter: dict[str, Any] | None = None,
    conditions: Sequence[Any] = (),
    vector: np.ndarray | Awaitable[np.ndarray] | None = None,
    scope_checked: bool = False,
) -> list[tuple[Record, float]]:
    """A user's (or one session's) messages that best answer ``query``, best first, with their scores.

    The full-text search needs no embedding, so it runs while the query is embedded. ``vector``: the
    query's embedding, or a task that will have it, when the caller embeds its queries itself (context
    gathering embeds them once for facts and messages alike). ``scope_checked``: the caller has already
    found the user (and session), so an unknown one needs no second look-up to become a 404.

    v3 searches a whole app (``user_id`` None, ``scope_checked``) or a session of it, and narrows what the
    index finds with ``conditions`` (SQL conditions on the messages: its filters, a sender)."""
    query = check_text(query, what="query", min_length=1, max_length=QUERY_MAX)
    filter = check_filter(filter)
    recipe = RECIPES[mode]
    if user_id is None and not scope_checked:
        raise ValueError("a search of a whole app checks its scope first (scope_checked=True)")
    if not scope_checked and user_id is not None:
        async with database.transaction() as db:  # a clear 404 for an unknown user or session
            if session_id is None:
                await users.get_user(db, app_id, user_id)
            else:
                await sessions.get_session(db, app_id, user_id, session_id)
    scope: dict[str, str | None] = {"app_id": app_id, "user_id": user_id, "session_id": session_id}
    resolved: list[np.ndarray] = []  # the query's vector, once known

    async def nearest(limit: int) -> list[Hit]:
        if not resolved:
            if vector is None:
                resolved.append((await embedder.embed([query]))[0])
            else:
                resolved.append(await vector if inspect.isawaitable(vector) else vector)
        return await index.nearest(MESSAGES, resolved[0], scope=scope, limit=limit)

    candidates = max(recipe.candidates, 5 * top_k)
    while True:
        semantic, fulltext = await gather_all(  # the two retrievers side by side
            nearest(candidates) if recipe.semantic else _none(),
            index.matching(MESSAGES, query, scope=scope, limit=candidates) if recipe.fulltext else _none(),
        )
        scores = fuse(semantic, fulltext, recipe)
        async with database.transaction() as db:
            found = await messages.fetch_with_neighbours(
                db,
                list(scores),
                app_id=app_id,
                user_id=user_id,
                session_id=session_id,
                filter=filter,
                conditions=conditions,
            )
        scores = boost_neighbours(
            scores, {i: (p, n) for i, (_, p, n) in found.items()}, recipe.neighbour_boost
        )
        ranked = sorted((i for i in scores if i in found), key=lambda i: scores[i], reverse=True)
        exhausted = max(len(semantic), len(fulltext)) < candidates
        if len(ranked) >= top_k or exhausted or candidates >= MAX_CANDIDATES:
            return [(found[i][0], scores[i]) for i in ranked[:top_k]]
        candidates *= 4  # the filter (or stale index rows) took too many: look further down the lists


async def gather_all(*awaitables: Awaitable[Any]) -> list[Any]:
    """The results of ``awaitables`` run side by side, in order; the first failure cancels the rest and
    is raised as itself (``asyncio.gather`` leaves the others running, ``TaskGroup`` wraps the error)."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def nearest_documents(
    index: VectorIndex,
    embedder: TextEmbedder,
    query: str,
    *,
    scope: dict[str, str | None],
    top_k: int,
    distance: float | None,
    keep: Callable[[list[str]], Awaitable[list[Record]]],
) -> list[Record]:
    """The documents in ``scope`` closest to ``query`` (within cosine ``distance`` when given) that
    ``keep`` returns (it reads them from PostgreSQL and applies the caller's conditions), best first."""
    query = check_text(query, what="query", min_length=1, max_length=QUERY_MAX)
    vector = (await embedder.embed([query]))[0]
    candidates = max(top_k, 50)
    while True:
        hits = await index.nearest(DOCUMENTS, vector, scope=scope, limit=candidates)
        close = [h.id for h in hits if distance is None or 1.0 - h.score <= distance]
        kept = await keep(close)
        if (
            len(kept) >= top_k
            or len(hits) < candidates
            or len(close) < len(hits)
            or candidates >= MAX_CANDIDATES
        ):
            return kept[:top_k]
        candidates *= 4


async def query_documents(
    database: Database,
    index: VectorIndex,
    embedder: TextEmbedder,
    *,
    app_id: str,
    user_id: str,
    collection_id: str,
    query: str,
    top_k: int = 5,
    filter: dict[str, Any] | None = None,
) -> list[Record]:
    """The collection's documents closest to ``query`` by cosine similarity, best first."""
    query = check_text(query, what="query", min_length=1, max_length=QUERY_MAX)
    filter = check_filter(filter)
    async with database.transaction() as db:
        await collections.get_collection(db, app_id, user_id, collection_id)
    vector = (await embedder.embed([query]))[0]
    scope: dict[str, str | None] = {"app_id": app_id, "user_id": user_id, "collection_id": collection_id}
    candidates = top_k if not filter else max(10 * top_k, 100)
    while True:
        hits = await index.nearest(DOCUMENTS, vector, scope=scope, limit=candidates)
        async with database.transaction() as db:
            found = await documents.fetch_many(
                db,
                [h.id for h in hits],
                app_id=app_id,
                user_id=user_id,
                collection_id=collection_id,
                filter=filter,
            )
        # a conclusion a dream superseded stays a document, but is no answer to a query
        ranked = [found[h.id] for h in hits if h.id in found and found[h.id].invalid_at is None]
        if len(ranked) >= top_k or len(hits) < candidates or candidates >= MAX_CANDIDATES:
            return ranked[:top_k]
        candidates *= 4
