"""What Rapport knows that bears on a question: a user's facts, their relevant past messages, the
session's latest summaries and its last few messages, deduplicated and fitted to a token budget.

Cheap enough for every turn: no LLM call, one embedding per query (shared by the facts and the message
search), and the independent lookups run concurrently, each on its own pooled connection.

- **Facts** are the documents of the user's ``honcho`` collection (pipelines/deriver). The index holds
  only their vectors, so the search is hybrid in two steps: the nearest facts by embedding, then a
  lexical (BM25) score over those candidates, the two lists scaled and mixed as the message search
  mixes its own (``retrieval.fuse``). Among facts on the same topic, the newest takes the best rank:
  the deriver stores a contradiction beside the fact it contradicts, and the newer one is what holds.
- **Relevant messages** come from the message search over all of the user's sessions (what they said
  elsewhere counts); the session, when given, only picks the summaries and the recent messages.
- **Overlap**: a message that is a source of a chosen fact, or one of the recent messages, is not
  repeated among the relevant messages.
- **Budget**: the sections take turns, best item first (a fact, a relevant message, a recent message,
  a summary, then the next of each), and an item that would overflow ``max_tokens`` is skipped. Tokens
  are estimated as the derivation queue estimates them (migration 0004): 4 characters a token, plus 8
  for the item's framing.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from pipelines import retrieval
from pipelines.deriver.derive import SUMMARY_LABELS
from pipelines.memory import Memory
from rapport.settings import DialecticSettings
from storage import collections, documents, dreams, messages, metamessages, sessions, users, v3
from storage.errors import InvalidError, NotFoundError
from storage.index import DOCUMENTS, Hit
from storage.query import Record
from storage.validation import check_text

MAX_QUERIES = 10
ITEM_OVERHEAD_TOKENS = 8  # the queue's estimate adds 8 per message; here it pays for an item's framing

# Facts: the embedding's nearest candidates, re-scored on their words. Semantic similarity leads; the
# words decide between facts the embedding finds equally close (names, places, numbers).
FACTS_RECIPE = retrieval.SearchRecipe(semantic=True, fulltext=True, alpha=0.6, candidates=50)
SAME_TOPIC = 0.5  # word overlap (Jaccard) at which two facts are taken to be about the same thing


def estimate_tokens(text: str) -> int:
    """Tokens an item of context costs: the derivation queue's estimate (4 characters a token, + 8)."""
    return len(text) // 4 + ITEM_OVERHEAD_TOKENS


@dataclass(frozen=True, slots=True)
class ContextOptions:
    top_k: int = 10  # facts, and relevant messages, per query
    max_tokens: int = 2000
    recent_messages: int = 8  # the session's last messages

    @classmethod
    def of(cls, settings: DialecticSettings) -> ContextOptions:
        return cls(
            top_k=settings.top_k,
            max_tokens=settings.context_tokens,
            recent_messages=settings.recent_messages,
        )


@dataclass(frozen=True, slots=True)
class Context:
    """What was gathered. Facts and messages best first, with scores comparable within their list;
    summaries short then long; recent messages in the order they were written."""

    user: Record
    facts: list[tuple[Record, float]] = field(default_factory=list)
    messages: list[tuple[Record, float]] = field(default_factory=list)
    summaries: list[Record] = field(default_factory=list)
    recent: list[Record] = field(default_factory=list)
    tokens: int = 0  # estimated, of everything above
    speakers: dict[str, str] = field(default_factory=dict)  # senders' names by peer id (v3)
    replaced: dict[str, list[Record]] = field(default_factory=dict)  # what each fact superseded (dreams)

    @property
    def empty(self) -> bool:
        return not (self.facts or self.messages or self.summaries or self.recent)


def check_queries(queries: str | Sequence[str], *, field: str = "queries") -> list[str]:
    """One query or a list of them: 1 to MAX_QUERIES non-blank texts, duplicates dropped. ``field``
    names the input in errors."""
    items = [queries] if isinstance(queries, str) else list(queries)
    if not items:
        raise InvalidError("give at least one query", field=(field,))
    if len(items) > MAX_QUERIES:
        raise InvalidError(f"give at most {MAX_QUERIES} queries, got {len(items)}", field=(field,))
    checked = []
    for i, query in enumerate(items):
        where: tuple[str | int, ...] = (field,) if isinstance(queries, str) else (field, i)
        try:
            text = check_text(query, what="query", min_length=1, max_length=retrieval.QUERY_MAX)
        except InvalidError as exc:
            raise InvalidError(exc.detail, field=where) from exc
        if not text.strip():
            raise InvalidError("a query must not be blank", field=where)
        checked.append(text)
    return list(dict.fromkeys(checked))


async def gather_context(
    memory: Memory,
    *,
    app_id: str,
    user_id: str,
    session_id: str | None = None,
    queries: str | Sequence[str],
    related: Sequence[str] = (),
    options: ContextOptions | None = None,
    session_only: bool = False,
) -> Context:
    """The context for ``queries`` (for several: each one's facts and messages, merged; up to
    ``top_k`` of each per query), within ``options.max_tokens``. ``related`` queries (a rewrite's) widen
    the search without raising those counts. ``session_only``: only what the session holds (its
    messages and summaries, and the facts derived from its messages), for a caller whose key reaches
    that session and no other. Raises NotFoundError for an unknown user, or a session not theirs."""
    if session_only and session_id is None:
        raise InvalidError("a context limited to a session needs the session", field=("session_id",))
    options = options or ContextOptions()
    asked = check_queries(queries)
    known = asyncio.ensure_future(_known(memory, app_id, user_id, session_id, options.recent_messages))
    recall = _Recall(app_id, user_id, within=session_id if session_only else None)
    return await _gather(memory, known, recall, asked, related, options)


@dataclass(frozen=True, slots=True)
class PeerView:
    """Whose memory a v3 context is drawn from: what ``observer`` holds about ``observed`` (peer rows;
    the same row for a peer's own memory), with a session's summaries and latest messages
    (``session_id``, its id), recall limited to the sessions ``sessions`` (ids) when given."""

    app_id: str
    observer: Record
    observed: Record
    session_id: str | None = None
    sessions: Sequence[str] | None = None


async def gather_peer_context(
    memory: Memory,
    view: PeerView,
    queries: str | Sequence[str],
    *,
    related: Sequence[str] = (),
    options: ContextOptions | None = None,
) -> Context:
    """A v3 context, as ``gather_context`` gathers a user's: the conclusions the observer holds about the
    observed peer, and the messages of the sessions the observed peer is in (for another observer, only
    those it took part in too), each speaker named."""
    options = options or ContextOptions()
    asked = check_queries(queries, field="query")
    known = asyncio.ensure_future(_known_of_peer(memory, view, options.recent_messages))
    conditions = v3.recall_conditions(view.observer.id, view.observed.id, view.sessions)
    sessions = frozenset(view.sessions) if view.sessions is not None else None
    recall = _Recall(view.app_id, None, conditions=conditions, sessions=sessions)
    context = await _gather(memory, known, recall, asked, related, options)
    async with memory.database.transaction() as db:
        speakers = await v3.sender_names(db, [row for row, _ in context.messages] + context.recent)
    return replace(context, speakers={**speakers, view.observed.id: view.observed.name})


@dataclass(frozen=True, slots=True)
class _Recall:
    """Where the searches look: the user's messages (``user_id``), or, for a v3 context (``user_id``
    None), the app's messages that match ``conditions``; facts derived from a message of the session
    ``within`` (v1), or drawn from one of ``sessions`` (v3), when given."""

    app_id: str
    user_id: str | None
    within: str | None = None
    conditions: Sequence[Any] = ()
    sessions: frozenset[str] | None = None


async def _gather(
    memory: Memory,
    known: asyncio.Future[_Known],
    recall: _Recall,
    asked: list[str],
    related: Sequence[str],
    options: ContextOptions,
) -> Context:
    texts = list(dict.fromkeys([*asked, *related]))
    # Everything starts at once: the known rows (summaries, recent messages: ``known``, already
    # running), the queries' embedding, and the messages' full-text search (which needs no vector).
    # Facts wait for the embedding and for the facts collection; the message search's vector half
    # waits for the embedding alone.
    vectors = asyncio.ensure_future(memory.embedder.embed(texts))
    # More messages than top_k, since overlap with the facts and the recent messages may drop some (the
    # search ranks 100 candidates whatever it returns: the extra ones cost nothing more).
    wanted = 2 * options.top_k + options.recent_messages
    found = await retrieval.gather_all(
        known,
        vectors,
        *(_facts(memory, recall, known, vectors, i, t, options.top_k) for i, t in enumerate(texts)),
        *(_messages(memory, recall, vectors, i, t, wanted) for i, t in enumerate(texts)),
    )
    base, _, *searched = found  # _Known, the vectors, then each search
    found_facts, found_messages = searched[: len(texts)], searched[len(texts) :]
    top_k = options.top_k * len(asked)
    context = fit(
        base.user,
        facts=newest_first_within_topics(_merged(found_facts)[:top_k]),
        messages=_merged(found_messages),
        summaries=base.summaries,
        recent=base.recent,
        top_k=top_k,
        max_tokens=options.max_tokens,
    )
    if not context.facts or recall.within is not None:  # a session-only context shows no history
        return context
    async with memory.database.transaction() as db:
        earlier = await dreams.replaced_by(
            db,
            [row.id for row, _ in context.facts],
            sessions=list(recall.sessions) if recall.sessions else None,
        )
    # A message whose facts a dream found replaced is old news: it is shown as those facts, under "no
    # longer true", not among the relevant messages, where a small model takes it for what holds now.
    stale = set().union(*(sources_of(row) for rows in earlier.values() for row in rows)) if earlier else set()
    messages = [(row, score) for row, score in context.messages if row.id not in stale]
    return replace(context, replaced=earlier, messages=messages)


# --- the lookups ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Known:
    user: Record
    honcho_id: str | None  # the user's facts collection, if anything was derived yet
    summaries: list[Record]
    recent: list[Record]


async def _known(
    memory: Memory, app_id: str, user_id: str, session_id: str | None, recent_messages: int
) -> _Known:
    """The user (and session) checked, and what needs no search: summaries, recent messages."""
    async with memory.database.transaction() as db:
        user = await users.get_user(db, app_id, user_id)
        if session_id is not None:
            await sessions.get_session(db, app_id, user_id, session_id)
        try:
            honcho = await collections.get_collection_by_name(db, app_id, user_id, collections.RESERVED_NAME)
        except NotFoundError:
            honcho = None
        labels = (SUMMARY_LABELS["SHORT"], SUMMARY_LABELS["LONG"])
        summaries = await metamessages.latest_by_label(db, user_id, labels, session_id=session_id)
        recent = (
            await messages.session_window(db, session_id, limit=recent_messages, newest=True)
            if session_id is not None and recent_messages
            else []
        )
    return _Known(user, honcho.id if honcho is not None else None, summaries, recent)


async def _known_of_peer(memory: Memory, view: PeerView, recent_messages: int) -> _Known:
    """A v3 context's rows that need no search: the pair's collection, the session's summaries and its
    latest messages (of every speaker)."""
    name = collections.pair_collection_name((view.observer.id, view.observed.id))
    async with memory.database.transaction() as db:
        try:
            facts = await collections.get_collection_by_name(db, view.app_id, view.observed.id, name)
        except NotFoundError:
            facts = None
        summaries: list[Record] = []
        recent: list[Record] = []
        if view.session_id is not None:
            labels = (SUMMARY_LABELS["SHORT"], SUMMARY_LABELS["LONG"])
            summaries = await metamessages.latest_by_label(db, None, labels, session_id=view.session_id)
            if recent_messages:
                recent = await messages.session_window(
                    db, view.session_id, limit=recent_messages, newest=True
                )
    return _Known(view.observed, facts.id if facts is not None else None, summaries, recent)


async def _facts(
    memory: Memory,
    recall: _Recall,
    known: Awaitable[_Known],
    vectors: Awaitable[np.ndarray],
    i: int,
    query: str,
    top_k: int,
) -> list[tuple[Record, float]]:
    """The facts that best answer query ``i``: nearest by embedding, re-scored on their words; only
    those of the sessions ``recall`` names, if it names any."""
    base = await known
    collection_id = base.honcho_id
    if collection_id is None:  # nothing derived for this user yet
        return []
    limit = max(FACTS_RECIPE.candidates, 5 * top_k)
    semantic = await memory.index.nearest(
        DOCUMENTS, (await vectors)[i], scope={"collection_id": collection_id}, limit=limit
    )
    async with memory.database.transaction() as db:
        found = await documents.fetch_many(
            db,
            [h.id for h in semantic],
            app_id=recall.app_id,
            user_id=base.user.id,
            collection_id=collection_id,
        )
        if recall.within is not None:
            sources = {i: sources_of(fact) for i, fact in found.items()}
            ours = await messages.of_session(db, recall.within, [m for ids in sources.values() for m in ids])
            found = {i: fact for i, fact in found.items() if sources[i] & ours}
    if recall.sessions is not None:
        found = {i: fact for i, fact in found.items() if fact.session_id in recall.sessions}
    found = {i: fact for i, fact in found.items() if fact.invalid_at is None}  # a dream superseded the rest
    semantic = [h for h in semantic if h.id in found]  # the index may briefly hold deleted rows
    lexical = bm25(query, [found[h.id].content for h in semantic])
    matching = [Hit(h.id, score) for h, score in zip(semantic, lexical, strict=True) if score > 0]
    scores = retrieval.fuse(semantic, matching, FACTS_RECIPE)
    ranked = sorted(scores, key=lambda i: scores[i], reverse=True)[:top_k]
    return [(found[i], scores[i]) for i in ranked]


async def _messages(
    memory: Memory,
    recall: _Recall,
    vectors: Awaitable[np.ndarray],
    i: int,
    query: str,
    top_k: int,
) -> list[tuple[Record, float]]:
    async def vector() -> np.ndarray:
        return (await vectors)[i]

    return await retrieval.search_messages(
        memory.database,
        memory.index,
        memory.embedder,
        app_id=recall.app_id,
        user_id=recall.user_id,
        session_id=recall.within,
        query=query,
        top_k=top_k,
        vector=vector(),
        conditions=recall.conditions,
        scope_checked=True,  # the known rows are read in parallel: a 404 from there cancels this search
    )


def _merged(lists: Iterable[list[tuple[Record, float]]]) -> list[tuple[Record, float]]:
    """Several queries' results as one list, best first; an item found twice keeps its best score."""
    best: dict[str, tuple[Record, float]] = {}
    for hits in lists:
        for row, score in hits:
            if row.id not in best or score > best[row.id][1]:
                best[row.id] = (row, score)
    return sorted(best.values(), key=lambda hit: hit[1], reverse=True)


# --- lexical scoring -------------------------------------------------------------------------------------

_WORD = re.compile(r"[0-9a-z]+")
STOP_WORDS = frozenset(
    (  # noqa: SIM905  (a list literal would take 60 lines)
        "a an and are as at be been but by did do does for from had has have he her him his how i if in is "
        "it its me my not of on or our she so than that the their them then there they this to was we were "
        "what when where which who whom why will with would you your"
    ).split()
)


def words(text: str) -> list[str]:
    """Content words, lower case, a plural or possessive ``s`` dropped: enough for facts' short text."""
    out = []
    for word in _WORD.findall(text.lower()):
        if word in STOP_WORDS:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        out.append(word)
    return out


def bm25(query: str, texts: Sequence[str], *, k1: float = 1.2, b: float = 0.75) -> list[float]:
    """BM25 of each text for ``query``, with the texts themselves as the corpus."""
    terms = set(words(query))
    docs = [Counter(words(t)) for t in texts]
    if not terms or not docs:
        return [0.0] * len(texts)
    average = sum(sum(d.values()) for d in docs) / len(docs) or 1.0
    frequency = {t: sum(1 for d in docs if t in d) for t in terms}
    scores = []
    for doc in docs:
        length = sum(doc.values())
        score = 0.0
        for term in terms:
            tf = doc.get(term, 0)
            if tf:
                idf = math.log(1 + (len(docs) - frequency[term] + 0.5) / (frequency[term] + 0.5))
                score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / average))
        scores.append(score)
    return scores


# --- newer facts first ----------------------------------------------------------------------------------

_DATE_FORMATS = ("%I:%M %p on %d %B, %Y", "%d %B, %Y", "%d %B %Y", "%B %d, %Y", "%Y/%m/%d")


def fact_time(fact: Record) -> datetime:
    """When a fact holds from: the date of the message it came from (its ``date`` metadata, as the
    conversation gave it), else when it was stored."""
    value = (fact.metadata_ or {}).get("date")
    if isinstance(value, str) and value.strip():
        parsed = _parse_date(value.strip())
        if parsed is not None:
            return parsed
    created: datetime = fact.created_at
    return created if created.tzinfo else created.replace(tzinfo=UTC)


def fact_date(fact: Record) -> str:
    """A fact's date as shown to a reader: its ``date`` metadata, else the day it was stored."""
    value = (fact.metadata_ or {}).get("date")
    if isinstance(value, str | int | float) and str(value).strip():
        return str(value).strip()[:100]
    return str(fact.created_at.date().isoformat())


def _parse_date(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        parsed = None
        for format in _DATE_FORMATS:
            try:
                parsed = datetime.strptime(value, format)
                break
            except ValueError:
                continue
    if parsed is None:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def same_topic(a: str, b: str) -> bool:
    """Whether two facts are about the same thing, by the words they share (Jaccard)."""
    left, right = set(words(a)), set(words(b))
    if not left or not right:
        return False
    return len(left & right) / len(left | right) >= SAME_TOPIC


def newest_first_within_topics(facts: list[tuple[Record, float]]) -> list[tuple[Record, float]]:
    """Facts best first, except that among facts on the same topic the newest takes the best rank
    (each rank keeps its score, so the list stays best first)."""
    groups: list[list[int]] = []
    for i, (fact, _) in enumerate(facts):
        group = next(
            (g for g in groups if any(same_topic(fact.content, facts[j][0].content) for j in g)), None
        )
        if group is None:
            groups.append([i])
        else:
            group.append(i)
    ordered = list(facts)
    for group in groups:
        if len(group) < 2:
            continue
        newest = sorted((facts[i][0] for i in group), key=fact_time, reverse=True)
        for rank, fact in zip(group, newest, strict=True):
            ordered[rank] = (fact, facts[rank][1])
    return ordered


# --- overlap and budget ---------------------------------------------------------------------------------


def sources_of(fact: Record) -> set[str]:
    """The ids of the messages a fact was derived from (its provenance metadata)."""
    metadata: dict[str, Any] = fact.metadata_ or {}
    ids = metadata.get("message_ids")
    found = {i for i in ids if isinstance(i, str)} if isinstance(ids, list) else set()
    if isinstance(metadata.get("message_id"), str):
        found.add(metadata["message_id"])
    return found


def fit(
    user: Record,
    *,
    facts: Sequence[tuple[Record, float]],
    messages: Sequence[tuple[Record, float]],
    summaries: Sequence[Record],
    recent: Sequence[Record],
    top_k: int,
    max_tokens: int,
) -> Context:
    """The items that fit ``max_tokens``: sections take turns, best first (recent: newest first), and an
    item that would overflow is skipped. At most ``top_k`` facts and relevant messages; a relevant
    message that a chosen fact came from, or that is among the chosen recent messages, is left out."""
    excluded: set[str] = set()
    while True:
        chosen = _take_turns(facts[:top_k], messages, recent, summaries, top_k, max_tokens, excluded)
        told = set().union(*(sources_of(f) for f, _ in chosen["facts"])) | {m.id for m in chosen["recent"]}
        repeated = {m.id for m, _ in chosen["messages"]} & told
        if not repeated:
            break
        # A message taken before the fact it came from (or its recent copy): choose again without it,
        # so that its room goes to something new. Each round excludes more; a few rounds at most.
        excluded |= repeated
    rows = [
        *(row for row, _ in chosen["facts"]),
        *(row for row, _ in chosen["messages"]),
        *chosen["summaries"],
        *chosen["recent"],
    ]
    return Context(
        user,
        facts=chosen["facts"],
        messages=chosen["messages"],
        summaries=chosen["summaries"],
        recent=list(reversed(chosen["recent"])),
        tokens=sum(estimate_tokens(row.content) for row in rows),
    )


def _take_turns(
    facts: Sequence[tuple[Record, float]],
    messages: Sequence[tuple[Record, float]],
    recent: Sequence[Record],
    summaries: Sequence[Record],
    top_k: int,
    max_tokens: int,
    excluded: set[str],
) -> dict[str, list[Any]]:
    queues: dict[str, list[Any]] = {
        "facts": list(facts),
        "messages": [hit for hit in messages if hit[0].id not in excluded],
        "recent": list(reversed(recent)),
        "summaries": list(summaries),
    }
    chosen: dict[str, list[Any]] = {name: [] for name in queues}
    told: set[str] = set()  # sources of the facts chosen so far, and the recent messages
    left = max_tokens
    while any(queues.values()):
        for name, queue in queues.items():
            while queue:
                item = queue.pop(0)
                row = item[0] if name in ("facts", "messages") else item
                if name == "messages" and (row.id in told or len(chosen["messages"]) >= top_k):
                    continue  # told already, or enough: not a turn
                cost = estimate_tokens(row.content)
                if cost > left:
                    continue  # too big for what is left; a smaller next item may fit
                chosen[name].append(item)
                left -= cost
                if name == "facts":
                    told |= sources_of(row)
                elif name == "recent":
                    told.add(row.id)
                break
    return chosen
