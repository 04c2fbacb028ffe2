"""Derive conclusions about the observed peers of one claimed batch of a session's messages, and keep
the session's summaries up to date.

Who is observed, and by whom, is the session's configuration (pipelines/deriver/observers.py): in a v1
session, its user by itself; in a v3 session, every sender whose ``observe_me`` is on, by itself and by
the members with ``observe_others``. One call to the model reads the batch once for all of them: the
observed senders' messages are numbered, and each fact belongs to the sender of the messages it cites.

What the model sees is the session's latest summary and the messages just before the batch, never a
later one. A peer's facts are deduplicated against each observer's collection of it (a normalised exact
match, then cosine similarity): a repeat reinforces the fact it repeats (``times_derived``, more
sources) instead of being stored twice. A fact that contradicts an older one is stored beside it; both
keep their times. New facts, reinforcements, summaries and the queue items' ``done`` are written in one
transaction, which the claim's lease guards: nothing is marked done unless its output was stored, and
nothing is stored by a worker that lost its lease.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Collection as AbstractCollection
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.ext.asyncio import AsyncConnection

from models.llm import ChatMessage, LLMClient, LLMConfigError, Usage
from pipelines.deriver import observers
from pipelines.deriver.prompts import (
    MAX_FACTS,
    DerivedFact,
    Line,
    Shown,
    SummaryType,
    answer_tokens,
    derivation_limited,
    facts_limit,
    facts_prompt,
    facts_system,
    fit_conversation,
    names,
    summary_beside_facts_prompt,
    summary_prompt,
    summary_tokens,
)
from pipelines.memory import Memory
from rapport.settings import DeriverSettings
from storage import collections, derivation, documents, dreams, messages, metamessages, observation
from storage.derivation import Claim
from storage.documents import normalized
from storage.index import DOCUMENTS, Hit
from storage.observation import Scene
from storage.query import Record, fetch_by_ids
from storage.tables import Message
from storage.validation import METADATA_MAX_BYTES

log = logging.getLogger(__name__)

SUMMARY_LABELS: dict[SummaryType, str] = {
    "SHORT": "honcho_chat_summary_short",
    "LONG": "honcho_chat_summary_long",
}
SUMMARY_EVERY: dict[SummaryType, int] = {"SHORT": 20, "LONG": 60}
# Messages before a batch shown so that a short summary asked beside its extraction reaches back to the
# previous one; further back than this, the summary is asked on its own.
BESIDE_FACTS_HISTORY_MAX = 2 * SUMMARY_EVERY["SHORT"]
METADATA_TEXT_MAX = 200
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MAX_SOURCE_IDS = 200  # message_ids kept on a much-repeated fact (the first ones, then the newest)


@dataclass(frozen=True, slots=True)
class DeriverOptions:
    dedup_threshold: float = 0.90  # cosine similarity at or above which a fact repeats a stored one
    history_messages: int = 8  # messages before the batch shown as context
    observe_assistants: bool = False  # whether assistant peers are observed unless configured

    @classmethod
    def of(cls, settings: DeriverSettings) -> DeriverOptions:
        return cls(
            dedup_threshold=settings.dedup_threshold,
            history_messages=settings.history_messages,
            observe_assistants=settings.observe_assistants,
        )


@dataclass
class Outcome:
    """What one batch produced."""

    stored: list[str] = field(default_factory=list)  # new fact documents
    reinforced: list[str] = field(default_factory=list)  # existing facts derived again
    summaries: list[str] = field(default_factory=list)  # labels of summaries written
    usage: Usage = field(default_factory=Usage)


def speaker(message: Record, names: Mapping[str, str]) -> str:
    """Who said it, as the conversation names them: the app's ``speaker``/``name`` metadata, else the
    sender's name in ``names`` (by peer id), else "assistant"."""
    metadata = message.metadata_ or {}
    for key in ("speaker", "name"):
        value = metadata.get(key)
        if isinstance(value, str | int | float) and str(value).strip():
            return str(value)[:METADATA_TEXT_MAX]
    return names.get(message.peer_id, "assistant")


def date_of(message: Record) -> str:
    metadata = message.metadata_ or {}
    for key in ("date", "timestamp"):
        value = metadata.get(key)
        if isinstance(value, str | int | float) and str(value).strip():
            return str(value)[:METADATA_TEXT_MAX]
    return str(message.created_at.date().isoformat())


def _tidy_summary(text: str, cut: bool) -> str:
    """A summary without repeated sentences (a small model can loop, writing the same few sentences until
    its token limit) and, if it was ``cut`` off, without its unfinished last sentence."""
    sentences = SENTENCE_END.split(text.strip())
    if cut and len(sentences) > 1 and not sentences[-1].endswith((".", "!", "?")):
        sentences.pop()
    seen: set[str] = set()
    kept = []
    for sentence in sentences:
        key = " ".join(sentence.lower().split())
        if key not in seen:
            seen.add(key)
            kept.append(sentence)
    return " ".join(kept)


def line(message: Record, names: Mapping[str, str], number: int | None = None) -> Line:
    return Line(number, speaker(message, names), date_of(message), message.content)


@dataclass(frozen=True, slots=True)
class Cast:
    """Who speaks in a batch, and whom the model is asked about."""

    names: Mapping[str, str]  # peer id -> name, for a message without a speaker in its metadata
    observed: Mapping[str, str]  # the observed senders' ids -> their names in the prompt, in order

    @classmethod
    def of_user(cls, user_id: str, name: str) -> Cast:
        """A v1 user's: the user observed, any other speaker "assistant"."""
        return cls({user_id: name}, {user_id: name})

    @property
    def people(self) -> list[str]:
        return list(self.observed.values())

    def about(self, text: str, among: AbstractCollection[str] | None = None) -> str | None:
        """The one observed peer (of ``among``, if given) a fact names as a word, if it names exactly one
        (or only one is observed)."""
        candidates = [peer for peer in self.observed if among is None or peer in among]
        if len(candidates) == 1 and among is None:
            return candidates[0]
        named = [
            peer
            for peer in candidates
            if re.search(rf"(?<!\w){re.escape(self.observed[peer])}(?!\w)", text, re.IGNORECASE)
        ]
        return named[0] if len(named) == 1 else None

    def subject_of(self, text: str, cited: Sequence[Record]) -> str | None:
        """Whom a fact is about: the sender of the messages it cites; citing several senders' messages,
        the one of them it names, else the one it cites most (no one on a tie); citing none, the one
        observed peer it names."""
        if not cited:
            return self.about(text)
        counts = Counter(m.peer_id for m in cited).most_common()
        if len(counts) == 1:
            return counts[0][0]
        named = self.about(text, among={peer for peer, _ in counts})
        if named is not None:
            return named
        return counts[0][0] if counts[0][1] > counts[1][1] else None


def numbered(batch: Sequence[Record], cast: Cast) -> list[Line]:
    """The batch as the model sees it: the observed senders' messages numbered by position, the others
    not, so the model can cite only what an observed sender said."""
    return [
        line(m, cast.names, i if m.peer_id in cast.observed else None) for i, m in enumerate(batch, start=1)
    ]


@dataclass(frozen=True, slots=True)
class Plan:
    """What to write: new facts (with vectors) and reinforcements of stored ones."""

    new: list[tuple[DerivedFact, list[str], np.ndarray]]
    repeats: dict[str, list[str]]  # document id -> the new source message ids


class Deriver:
    """Turns claimed batches into facts and summaries. One per worker; holds no state between batches."""

    def __init__(
        self,
        memory: Memory,
        llm: LLMClient,
        summary_llm: LLMClient | None = None,
        options: DeriverOptions | None = None,
    ) -> None:
        self.memory = memory
        self.llm = llm
        self.summary_llm = summary_llm or llm
        self.options = options or DeriverOptions()

    async def derive(self, held: Claim) -> Outcome:
        """Derive the batch and record it (or raise, having recorded nothing)."""
        async with self.memory.database.autocommit() as db:
            batch = sorted(await fetch_by_ids(db, Message, held.message_ids), key=lambda m: m.seq)
            scene = await observation.scene_of(db, held.session_id, {m.peer_id for m in batch})
            context = await self._context(db, held, batch) if batch and scene is not None else None
        if context is None or scene is None:  # the messages or the session went meanwhile: nothing to derive
            async with self.memory.database.transaction() as db:
                await derivation.complete(db, held, held.message_ids)
            return Outcome()
        before, summary, covered, beside, history = context
        watched = (
            observers.observations(
                scene, [m.peer_id for m in batch], observe_assistants=self.options.observe_assistants
            )
            if observers.enabled(scene, "reasoning")
            else {}
        )
        summarised = observers.enabled(scene, "summary")
        cast = self.cast(scene, watched, [*history, *batch])
        subject = names(cast.people) if cast.people else self.subject(scene, batch)
        outcome = Outcome()
        # A batch retried after a failure holds its head message alone; its prompt gets less room.
        attempts = held.items[0].attempts if held.items else 0
        beside = beside and summarised and bool(watched) and before - len(history) <= covered
        facts: list[tuple[DerivedFact, list[str], str]] = []
        shown = None
        if watched:
            shown = self.shown(cast, summary, history, batch, attempts=attempts, beside=beside)
            facts = await self.extract(cast, summary, history, batch, outcome, shown=shown)
        summaries = []
        if beside and shown is not None:
            summaries.append(await self._summary_beside_facts(cast.people, shown, batch, before, outcome))
        if summarised:
            summaries += await self._summaries(
                subject,
                cast.names,
                held,
                batch,
                before,
                outcome,
                skip={kind for kind, _, _ in summaries},
                attempts=attempts,
            )
        vectors = await self.memory.embedder.embed([f.text for f, _, _ in facts]) if facts else None
        # Each fact goes to every observer's collection of its peer.
        about: dict[str, list[int]] = {}  # observed peer -> the positions of its facts
        for i, (_, _, peer) in enumerate(facts):
            about.setdefault(peer, []).append(i)
        targets = {(observer, peer): which for peer, which in about.items() for observer in watched[peer]}
        # The stored facts closest to these, found before the peers' locks are taken: the search is the
        # slowest part of the plan, and the index learns of another batch's new facts only after its
        # commit anyway (an exact repeat is still caught under the lock, in PostgreSQL).
        async with self.memory.database.autocommit() as db:
            known = await collections.pair_ids(db, list(targets))
        closest = {
            pair: await self.closest_stored(known[pair], vectors[which])
            for pair, which in targets.items()
            if pair in known and vectors is not None
        }

        async with self.memory.documents_transaction() as tx:
            # The pairs' collections, created if missing and locked: one writer of a peer's conclusions
            # (by one observer) at a time from here to the commit, so two sessions of the same peer
            # cannot both store the same new fact. (Batch jobs lock the same rows.)
            locked = await collections.lock_pairs(tx.db, held.app_id, list(targets))
            for pair, which in targets.items():
                collection_id, peer = locked[pair], pair[1]
                assert vectors is not None
                plan = await self.plan(
                    tx.db,
                    collection_id,
                    [facts[i][:2] for i in which],
                    vectors[which],
                    closest=closest.get(pair) if known.get(pair) == collection_id else None,
                )
                new = [
                    documents.NewDocument(
                        held.app_id,
                        peer,
                        collection_id,
                        fact.text,
                        self.fact_metadata(fact, sources, next(m for m in batch if m.id == sources[0])),
                    )
                    for fact, sources, _ in plan.new
                ]
                for row, (_, _, vector) in zip(
                    await documents.create_many(tx.db, new), plan.new, strict=True
                ):
                    tx.add(row, vector)
                    outcome.stored.append(row.id)
                for document_id, sources in plan.repeats.items():
                    await reinforce(tx.db, held.app_id, peer, collection_id, document_id, sources)
                    outcome.reinforced.append(document_id)
                # the pair's card, from its most reinforced conclusions (one set through the API stays)
                await dreams.refresh_card(tx.db, held.app_id, pair[0], peer, collection_id)
            for kind, text, message in summaries:
                await metamessages.create_metamessage(
                    tx.db,
                    held.app_id,
                    message.row.user_id,  # whose the message is: a v1 session's user, a v3 sender
                    label=SUMMARY_LABELS[kind],
                    content=text,
                    session_id=held.session_id,
                    message_id=message.id,
                    metadata={"message_count": message.position, "summary_type": kind},
                )
                outcome.summaries.append(SUMMARY_LABELS[kind])
            await derivation.complete(tx.db, held, held.message_ids)
        return outcome

    async def _context(
        self, db: AsyncConnection, held: Claim, batch: Sequence[Record]
    ) -> tuple[int, Record | None, int, bool, Sequence[Record]]:
        """What the model is shown beside the batch: (messages before the batch, the latest short
        summary, the messages it covers, whether this batch's short summary is asked beside its facts, the
        messages shown before the batch)."""
        before = await messages.count_before(db, held.session_id, batch[0].seq)
        summary = await metamessages.latest_summary(
            db, held.session_id, SUMMARY_LABELS["SHORT"], covering_at_most=before
        )
        covered = _covers(summary)
        history_limit = self.options.history_messages
        beside = self._short_summary_beside_facts(before, len(batch))
        if beside:  # show the messages back to what the summary so far covers, for the summary's sake
            history_limit = max(history_limit, min(before - covered, BESIDE_FACTS_HISTORY_MAX))
        history = await messages.session_window(
            db, held.session_id, before_seq=batch[0].seq, limit=history_limit, newest=True
        )
        return before, summary, covered, beside, history

    @staticmethod
    def cast(scene: Scene, watched: Mapping[str, Sequence[str]], shown: Sequence[Record]) -> Cast:
        """The batch's speakers by peer id, and the observed ones as the prompt names them: a v1 session's
        user by the user's name (as v1 always has), a v3 session's peers as the conversation names them
        (the speaker of their first message shown)."""
        speakers = {peer.id: peer.name for peer in scene.peers.values()}
        if scene.owner_id is not None:
            # v1's prompts call its assistant "assistant", whatever its peer's name
            speakers.update({peer.id: "assistant" for peer in scene.peers.values() if peer.assistant})
            return Cast(speakers, {peer: speakers[peer] for peer in watched})
        first: dict[str, str] = {}
        for message in shown:
            first.setdefault(message.peer_id, speaker(message, speakers))
        return Cast(speakers, {peer: first.get(peer, speakers[peer]) for peer in watched})

    @staticmethod
    def subject(scene: Scene, batch: Sequence[Record]) -> str:
        """Whom a summary of a session with no one observed is about: a v1 session's user, else the
        batch's senders."""
        if scene.owner_id is not None:
            return scene.name(scene.owner_id)
        return names(list(dict.fromkeys(scene.name(m.peer_id) for m in batch)))

    # --- facts -------------------------------------------------------------------------------------

    def fact_metadata(self, fact: DerivedFact, sources: list[str], source: Record) -> dict[str, Any]:
        """A new fact's metadata: its provenance (``source`` is the first of ``sources``) and model."""
        return {
            "message_id": sources[0],
            "message_ids": sources,
            "session_id": source.session_id,
            "kind": fact.kind,
            "confidence": round(fact.confidence, 3),
            "times_derived": 1,
            "model": self.llm.name,
            "date": date_of(source),
        }

    def shown(
        self,
        cast: Cast,
        summary: Record | None,
        history: Sequence[Record],
        batch: Sequence[Record],
        *,
        attempts: int = 0,
        beside: bool = False,
    ) -> Shown:
        """What the extraction prompt shows (and, ``beside`` it, the short summary's, which shares it
        word for word), fitted to the room the model leaves beside the longer of their answers."""
        answer = answer_tokens(_limit(batch, cast))
        if beside:
            answer = max(answer, summary_tokens("SHORT"))
        return fit_conversation(
            facts_system(cast.people),
            summary.content if summary is not None else None,
            [line(m, cast.names) for m in history],
            numbered(batch, cast),
            prompt_room(self.llm, max(self.llm.max_tokens, answer)),
            attempts=attempts,
        )

    async def extract(
        self,
        cast: Cast,
        summary: Record | None,
        history: Sequence[Record],
        batch: Sequence[Record],
        outcome: Outcome,
        *,
        shown: Shown | None = None,
    ) -> list[tuple[DerivedFact, list[str], str]]:
        """The model's facts, each with its source message ids and the observed peer it is about: the
        sender of the messages it cites (only the observed senders' messages count; a fact citing none
        belongs to the one observed peer it names). ``shown``: the conversation as fitted for the prompt
        (default: ``shown`` of these)."""
        cited = {i: m for i, m in enumerate(batch, start=1) if m.peer_id in cast.observed}
        if not cited:
            return []  # nothing an observed sender said: context for later batches, no facts
        limit = _limit(batch, cast)
        shown = shown or self.shown(cast, summary, history, batch)
        prompt = facts_prompt(cast.people, shown.summary, shown.history, shown.batch, limit)
        result, completion = await self.llm.structured(
            prompt,
            derivation_limited(limit),
            max_tokens=max(self.llm.max_tokens, answer_tokens(limit)),
        )
        outcome.usage = outcome.usage + completion.usage
        facts = []
        for fact in result.derived():
            text = " ".join(fact.text.split())
            if len(text) < 3:
                continue
            sources = [cited[n] for n in dict.fromkeys(fact.sources) if n in cited]
            about = cast.subject_of(text, sources)
            if about is None:
                log.info("left out a fact whose subject is unclear (its sources and words): %r", text)
                continue
            # Only the messages of the peer it is about are its sources; citing none of them, it still
            # came from this batch: credit all of that peer's.
            ids = [m.id for m in sources if m.peer_id == about]
            ids = ids or [m.id for m in cited.values() if m.peer_id == about]
            facts.append((fact.model_copy(update={"text": text}), ids, about))
        return facts

    async def plan(
        self,
        db: AsyncConnection,
        collection_id: str,
        facts: list[tuple[DerivedFact, list[str]]],
        vectors: np.ndarray | None,
        *,
        against_stored: bool = True,
        closest: dict[int, Hit] | None = None,
    ) -> Plan:
        """Which facts are new and which repeat a stored one (``against_stored``) or each other.
        ``closest``: each fact's closest stored fact (``closest_stored``), if already looked up."""
        plan = Plan([], {})
        if not facts or vectors is None:
            return plan
        exact = (
            await documents.find_normalized(db, collection_id, [normalized(f.text) for f, _ in facts])
            if against_stored
            else {}
        )
        # The closest stored fact to each fact without an exact match, in one query.
        unmatched = [i for i, (fact, _) in enumerate(facts) if normalized(fact.text) not in exact]
        if not against_stored:
            closest = {}
        elif closest is None:
            closest = await self.closest_stored(collection_id, vectors, unmatched) if unmatched else {}
        kept: list[np.ndarray] = []
        seen: dict[str, int] = {}  # normalised text -> its index in plan.new
        # A repeat of a fact a dream merged into another reinforces that other one. A fact a dream found
        # contradicted is not repeated by a new one: the new one is stored (it may be what holds again,
        # e.g. a move back), and the next dream settles it.
        superseded = await dreams.invalid_among(db, [h.id for h in closest.values()])
        merged_into = [s.by for s in superseded.values() if s.reason == "duplicate" and s.by]
        still_invalid = await dreams.invalid_among(db, merged_into)
        for i, ((fact, sources), vector) in enumerate(zip(facts, vectors, strict=True)):
            repeat: Any = exact.get(normalized(fact.text))
            hit = closest.get(i)
            if hit is not None and hit.id in superseded:
                gone = superseded[hit.id]
                keeper = gone.by if gone.reason == "duplicate" else None
                hit = Hit(keeper, hit.score) if keeper and keeper not in still_invalid else None
            if repeat is None and hit is not None and hit.score >= self.options.dedup_threshold:
                repeat = hit
            if repeat is not None:
                plan.repeats.setdefault(repeat.id, []).extend(sources)
                continue
            # The same fact twice in one answer (or a paraphrase of one just planned): keep the first.
            similar = seen.get(normalized(fact.text))
            if similar is None and kept:
                scores = np.stack(kept) @ vector
                best = int(np.argmax(scores))
                similar = best if float(scores[best]) >= self.options.dedup_threshold else None
            if similar is not None:
                first_sources = plan.new[similar][1]
                first_sources.extend(s for s in sources if s not in first_sources)
                continue
            seen[normalized(fact.text)] = len(plan.new)
            plan.new.append((fact, list(sources), vector))
            kept.append(vector)
        return plan

    async def closest_stored(
        self, collection_id: str, vectors: np.ndarray, which: Sequence[int] | None = None
    ) -> dict[int, Hit]:
        """The stored fact closest to each of ``vectors`` (or to those ``which`` picks), by position, in
        one search of the collection."""
        picked = list(range(len(vectors))) if which is None else list(which)
        found = await self.memory.index.nearest_each(
            DOCUMENTS, vectors[picked], scope={"collection_id": collection_id}, limit=1
        )
        return {i: hits[0] for i, hits in zip(picked, found, strict=True) if hits}

    # --- summaries ---------------------------------------------------------------------------------

    def _short_summary_beside_facts(self, before: int, size: int) -> bool:
        """Whether this batch's short summary (if one is due) is asked beside its extraction, sharing its
        prompt: when the same model writes both, a server's prompt cache then reads the messages once."""
        every = SUMMARY_EVERY["SHORT"]
        return (before + size) // every > before // every and self.summary_llm is self.llm

    async def _summary_beside_facts(
        self, people: Sequence[str], shown: Shown, batch: Sequence[Record], before: int, outcome: Outcome
    ) -> tuple[SummaryType, str, _Positioned]:
        """The short summary through the batch's last message, built on the summary shown with the
        extraction (the previous short one) and every message shown after it."""
        prompt = summary_beside_facts_prompt("SHORT", people, shown.summary, shown.history, shown.batch)
        return (
            "SHORT",
            await self._summary_text("SHORT", prompt, outcome),
            _Positioned(batch[-1], before + len(batch)),
        )

    async def _summary_text(self, kind: SummaryType, prompt: list[ChatMessage], outcome: Outcome) -> str:
        limit = summary_tokens(kind)
        completion = await self.summary_llm.complete(prompt, max_tokens=limit)
        outcome.usage = outcome.usage + completion.usage
        text = _tidy_summary(completion.text, cut=completion.usage.completion_tokens >= limit)
        if not text:
            raise ValueError(f"the model wrote an empty {kind.lower()} summary")
        return text

    async def _summaries(
        self,
        subject: str,
        speakers: Mapping[str, str],
        held: Claim,
        batch: Sequence[Record],
        before: int,
        outcome: Outcome,
        skip: AbstractCollection[SummaryType] = (),
        attempts: int = 0,
    ) -> list[tuple[SummaryType, str, _Positioned]]:
        """A summary of each kind (but ``skip``) whose interval ends inside this batch, through the
        message that ends the interval, built on its previous one and the messages after it."""
        written = []
        for kind, every in SUMMARY_EVERY.items():
            if kind in skip:
                continue
            last_position = before + len(batch)
            due = last_position - last_position % every
            if due <= before:
                continue
            message = _Positioned(batch[due - before - 1], due)
            async with self.memory.database.autocommit() as db:
                previous = await metamessages.latest_summary(
                    db, held.session_id, SUMMARY_LABELS[kind], covering_at_most=due - 1
                )
                covered = _covers(previous)
                since = await messages.session_window(
                    db, held.session_id, through_seq=message.row.seq, skip=covered, limit=due - covered
                )
            system = summary_prompt(kind, subject, None, [])[0].content
            # The messages since the last summary go where the earlier messages of an extraction go:
            # cut to fit, and if not even a few words of each fit, the oldest are left out.
            fitted = fit_conversation(
                system,
                previous.content if previous else None,
                [line(m, speakers) for m in since],
                [],
                prompt_room(self.summary_llm, summary_tokens(kind)),
                attempts=attempts,
                summary_share=1 / 3,
            )
            prompt = summary_prompt(kind, subject, fitted.summary, fitted.history)
            written.append((kind, await self._summary_text(kind, prompt, outcome), message))
        return written


def prompt_room(llm: LLMClient, answer: int) -> int | None:
    """Tokens of prompt a call to ``llm`` may hold beside an answer of ``answer`` tokens (None: the
    model's context is not known, so prompts are not fitted)."""
    if llm.context_tokens is None:
        return None
    room = llm.context_tokens - answer
    if room <= 0:
        raise LLMConfigError(
            f"{llm.name} has a context of {llm.context_tokens} tokens, no more than the {answer} its answer "
            "needs: raise llm.local_context_tokens (or llm.context_tokens)",
        )
    return room


def _covers(summary: Record | None) -> int:
    """How many of its session's first messages a summary covers (none: 0)."""
    return int((summary.metadata_ or {}).get("message_count", 0)) if summary is not None else 0


@dataclass(frozen=True, slots=True)
class _Positioned:
    """A message and its 1-based position in its session."""

    row: Record
    position: int

    @property
    def id(self) -> str:
        return str(self.row.id)


def _limit(batch: Sequence[Record], cast: Cast) -> int:
    """How many facts a batch may yield: ``facts_limit`` of each observed sender's messages, summed (a
    v1 batch has one), so two people read in one pass are allowed what two passes would allow."""
    per_sender = Counter(m.peer_id for m in batch if m.peer_id in cast.observed)
    return min(MAX_FACTS, sum(facts_limit(n) for n in per_sender.values()))


async def reinforce(
    db: AsyncConnection,
    app_id: str,
    peer_id: str,
    collection_id: str,
    document_id: str,
    sources: Sequence[str],
    *,
    times: int = 1,
) -> None:
    """Count a stored fact derived ``times`` more (a dream's merge adds its duplicates' counts) and add
    the new sources to its provenance, under its row lock."""
    row = await documents.lock_by_id(db, document_id)
    if row is None:  # deleted meanwhile (by an erasure): nothing to reinforce
        return
    metadata: dict[str, Any] = dict(row.metadata_ or {})
    known = documents.source_ids(metadata)
    known += [s for s in sources if s not in known]
    if len(known) > MAX_SOURCE_IDS:
        known = known[: MAX_SOURCE_IDS // 2] + known[-MAX_SOURCE_IDS // 2 :]
    if known:
        metadata["message_ids"] = known
        metadata.setdefault("message_id", known[0])
    metadata["times_derived"] = documents.times_derived(metadata) + times
    if len(str(metadata)) < METADATA_MAX_BYTES:
        await documents.update_document(db, app_id, peer_id, collection_id, document_id, metadata=metadata)
