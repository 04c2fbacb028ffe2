"""Re-derive one user from all of their messages: the unit of work of a batch job (cluster/batch.py).

The user's sessions are read in order and cut into batches as the queue cuts them (a token budget);
each batch is shown to the model with the messages before it and the session's summary up to there,
exactly as the continuous deriver shows it, and all of a user's batches may be in flight at once (a
shared semaphore bounds the calls). The facts are deduplicated and stored in one transaction with the
user's ``done`` mark in the job's ledger:

- ``replace``: the user's derived facts are deleted and the new set inserted in that transaction, so
  readers see the old set until the new one is complete, then only the new one;
- ``append``: new facts are added; those repeating a stored fact are skipped (re-reading the same
  messages is not new evidence, so nothing is reinforced).

Facts are embedded when they are stored, a group of users' at a time (one embedding call). The same
transaction marks the messages' queue items done and releases the sessions' leases, which the
job held from before reading (storage/derivation.py), so the continuous deriver never derives them too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from models.llm import Usage
from pipelines.deriver.derive import SUMMARY_LABELS, Cast, Deriver, Outcome
from pipelines.deriver.prompts import DerivedFact
from storage import collections, derivation, documents, jobs, messages, metamessages, users
from storage.jobs import Mode
from storage.query import Record

TOKENS_PER_CHAR = 0.25  # the queue's estimate (migration 0004): 4 characters a token, 8 per message


def estimated_tokens(message: Record) -> int:
    return int(len(message.content) * TOKENS_PER_CHAR) + 8


@dataclass
class UserFacts:
    """What the model derived from one user's messages, embedded, not yet stored."""

    app_id: str
    user_id: str
    session_ids: list[str] = field(default_factory=list)  # the sessions of ``message_ids``
    message_ids: list[str] = field(default_factory=list)
    facts: list[tuple[DerivedFact, list[str]]] = field(default_factory=list)
    sources: dict[str, Record] = field(default_factory=dict)  # each fact's first source message
    vectors: np.ndarray | None = None
    calls: int = 0
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """The user's row in a job's ledger, held by ``owner`` (also the token of its sessions' leases)."""

    job_id: str
    n: int
    owner: str


def batches(session: Sequence[Record], max_tokens: int) -> list[tuple[int, int]]:
    """[start, end) index ranges of a session's messages, each within ``max_tokens`` (at least one)."""
    ranges, start, total = [], 0, 0
    for i, message in enumerate(session):
        tokens = estimated_tokens(message)
        if i > start and total + tokens > max_tokens:
            ranges.append((start, i))
            start, total = i, 0
        total += tokens
    if start < len(session):
        ranges.append((start, len(session)))
    return ranges


class Rederiver:
    def __init__(self, deriver: Deriver, *, batch_max_tokens: int, llm_slots: asyncio.Semaphore) -> None:
        self.deriver = deriver
        self.memory = deriver.memory
        self.batch_max_tokens = batch_max_tokens
        self.llm_slots = llm_slots

    async def derive(self, app_id: str, user_id: str) -> UserFacts:
        """Read the user's messages and ask the model about each batch; nothing is embedded or written."""
        result = UserFacts(app_id, user_id)
        async with self.memory.database.transaction() as db:
            user = await users.get_user(db, app_id, user_id)
            rows = await messages.derivable_of_user(db, user_id)
            summaries = await metamessages.summaries_of_user(db, user_id, SUMMARY_LABELS["SHORT"])
        by_session: dict[str, list[Record]] = {}
        for row in rows:
            by_session.setdefault(row.session_id, []).append(row)
        result.message_ids = [row.id for row in rows]
        result.session_ids = list(by_session)
        summaries_of: dict[str, list[Record]] = {}
        for summary in summaries:
            summaries_of.setdefault(summary.session_id, []).append(summary)
        calls = [
            self._batch(
                Cast.of_user(user.id, user.name), session, start, end, summaries_of.get(session_id, [])
            )
            for session_id, session in by_session.items()
            for start, end in batches(session, self.batch_max_tokens)
        ]
        for facts, outcome, sources in await asyncio.gather(*calls):
            result.facts.extend(facts)
            result.sources.update(sources)
            result.usage = result.usage + outcome.usage
        result.calls = len(calls)
        return result

    async def _batch(
        self, cast: Cast, session: Sequence[Record], start: int, end: int, summaries: Sequence[Record]
    ) -> tuple[list[tuple[DerivedFact, list[str]]], Outcome, dict[str, Record]]:
        # The newest summary covering no message of this batch or later, as the queue's deriver shows it.
        summary = next((s for s in reversed(summaries) if (s.covers or 0) <= start), None)
        history = session[max(0, start - self.deriver.options.history_messages) : start]
        outcome = Outcome()
        batch = session[start:end]
        async with self.llm_slots:
            found = await self.deriver.extract(cast, summary, history, batch, outcome)
        facts = [(fact, sources) for fact, sources, _ in found]  # all the user's
        by_id = {m.id: m for m in batch}
        return facts, outcome, {sources[0]: by_id[sources[0]] for _, sources in facts}

    async def store(self, done: Sequence[tuple[UserFacts, LedgerEntry]], *, mode: Mode) -> list[int]:
        """Store these users' facts and mark them done, all in one transaction (a handful of statements
        however many users); the number of facts stored for each. ``UserLost`` or ``LeaseLost`` (nothing
        stored) if the job gave one of them to another actor meanwhile."""
        if not done:
            return []
        owner = done[0][1].owner
        # The group's facts embedded together: one call (a GPU batch) rather than one per user.
        texts = [fact.text for result, _ in done for fact, _ in result.facts]
        vectors_all = await self.memory.embedder.embed(texts) if texts else None
        at = 0
        for result, _ in done:
            if result.facts:
                assert vectors_all is not None
                result.vectors = vectors_all[at : at + len(result.facts)]
                at += len(result.facts)
        async with self.memory.documents_transaction() as tx:
            # The continuous deriver locks the same rows before it writes a user's facts.
            honcho = await collections.lock_reserved(tx.db, [(r.app_id, r.user_id) for r, _ in done])
            if mode == "replace":
                # What this job derived replaces what was derived before from the same messages; facts
                # the continuous deriver took from messages written since the job read a user stay.
                tx.removed = await documents.delete_derived_from(
                    tx.db, [honcho[r.user_id] for r, _ in done], [m for r, _ in done for m in r.message_ids]
                )
            new: list[documents.NewDocument] = []
            vectors: list[np.ndarray] = []
            counts = []
            for result, _ in done:
                collection_id = honcho[result.user_id]
                plan = await self.deriver.plan(
                    tx.db, collection_id, result.facts, result.vectors, against_stored=mode == "append"
                )
                for fact, sources, vector in plan.new:
                    metadata = self.deriver.fact_metadata(fact, sources, result.sources[sources[0]])
                    new.append(
                        documents.NewDocument(
                            result.app_id, result.user_id, collection_id, fact.text, metadata
                        )
                    )
                    vectors.append(vector)
                counts.append(len(plan.new))
            for row, vector in zip(await documents.create_many(tx.db, new), vectors, strict=True):
                tx.add(row, vector)
            await derivation.complete_users(
                tx.db,
                owner,
                {r.user_id: r.session_ids for r, _ in done},
                [m for r, _ in done for m in r.message_ids],
            )
            await jobs.finish_users(
                tx.db,
                done[0][1].job_id,
                owner,
                [(e.n, len(r.message_ids), n) for (r, e), n in zip(done, counts, strict=True)],
            )
        return counts
