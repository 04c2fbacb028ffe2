"""Re-derive one user from all of their messages: the unit of work of a batch job (cluster/batch.py).

The user's sessions are read in order and cut into batches as the queue cuts them (a token budget);
each batch is shown to the model with the messages before it and the session's summary up to there,
exactly as the continuous deriver shows it, and all of a user's batches may be in flight at once (a
shared semaphore bounds the calls). The facts are embedded together, deduplicated, and stored in one
transaction with the user's ``done`` mark in the job's ledger:

- ``replace``: the user's derived facts are deleted and the new set inserted in that transaction, so
  readers see the old set until the new one is complete, then only the new one;
- ``append``: new facts are added; those repeating a stored fact are skipped (re-reading the same
  messages is not new evidence, so nothing is reinforced).

The same transaction marks the messages' queue items done and releases the sessions' leases, which the
job held from before reading (storage/derivation.py), so the continuous deriver never derives them too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select, text

from models.llm import Usage
from pipelines.deriver.derive import SUMMARY_LABELS, Deriver, Outcome
from pipelines.deriver.prompts import DerivedFact
from storage import collections, derivation, documents, jobs, users
from storage.jobs import Mode
from storage.query import Record, record_columns
from storage.tables import Collection, Message

TOKENS_PER_CHAR = 0.25  # the queue's estimate (migration 0004): 4 characters a token, 8 per message


def estimated_tokens(message: Record) -> int:
    return int(len(message.content) * TOKENS_PER_CHAR) + 8


@dataclass
class UserFacts:
    """What the model derived from one user's messages, embedded, not yet stored."""

    app_id: str
    user_id: str
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
        """Read the user's messages and ask the model about each batch; nothing is written."""
        result = UserFacts(app_id, user_id)
        async with self.memory.database.transaction() as db:
            user = await users.get_user(db, app_id, user_id)
            rows = (
                await db.execute(
                    select(*record_columns(Message))
                    .where(Message.user_id == user_id)
                    .where(
                        text(
                            "messages.session_id IN (SELECT id FROM sessions WHERE user_id = :u AND "
                            "coalesce(metadata -> 'deriver_disabled', 'null'::jsonb) IN ('null'::jsonb, 'false'::jsonb))"
                        ).bindparams(u=user_id)
                    )
                    .order_by(Message.session_id, Message.seq)
                )
            ).all()
            summaries = (
                await db.execute(
                    text(
                        "SELECT session_id, content, (metadata ->> 'message_count')::int AS covers "
                        "FROM metamessages WHERE user_id = :u AND label = :label ORDER BY seq"
                    ),
                    {"u": user_id, "label": SUMMARY_LABELS["SHORT"]},
                )
            ).all()
        by_session: dict[str, list[Record]] = {}
        for row in rows:
            by_session.setdefault(row.session_id, []).append(row)
        result.message_ids = [row.id for row in rows]
        calls = [
            self._batch(user.name, session, start, end, [s for s in summaries if s.session_id == session_id])
            for session_id, session in by_session.items()
            for start, end in batches(session, self.batch_max_tokens)
        ]
        for facts, outcome, sources in await asyncio.gather(*calls):
            result.facts.extend(facts)
            result.sources.update(sources)
            result.usage = result.usage + outcome.usage
        result.calls = len(calls)
        if result.facts:
            result.vectors = await self.memory.embedder.embed([fact.text for fact, _ in result.facts])
        return result

    async def _batch(
        self, user_name: str, session: Sequence[Record], start: int, end: int, summaries: Sequence[Record]
    ) -> tuple[list[tuple[DerivedFact, list[str]]], Outcome, dict[str, Record]]:
        # The newest summary covering no message of this batch or later, as the queue's deriver shows it.
        summary = next((s for s in reversed(summaries) if (s.covers or 0) <= start), None)
        history = session[max(0, start - self.deriver.options.history_messages) : start]
        outcome = Outcome()
        batch = session[start:end]
        async with self.llm_slots:
            facts = await self.deriver.extract(user_name, summary, history, batch, outcome)
        by_id = {m.id: m for m in batch}
        return facts, outcome, {sources[0]: by_id[sources[0]] for _, sources in facts}

    async def store(self, result: UserFacts, *, mode: Mode, entry: LedgerEntry) -> int:
        """Store the user's facts and mark the user done, in one transaction; the number stored.
        ``UserLost`` or ``LeaseLost`` (nothing stored) if the job gave this user to another actor."""
        async with self.memory.documents_transaction() as tx:
            honcho = await collections.get_or_create_reserved(tx.db, result.app_id, result.user_id)
            # The continuous deriver locks the same row before it writes the user's facts.
            await tx.db.execute(select(Collection.id).where(Collection.id == honcho.id).with_for_update())
            if mode == "replace":
                tx.removed = await documents.delete_all(tx.db, honcho.id)
            plan = await self.deriver.plan(
                tx.db, honcho.id, result.facts, result.vectors, against_stored=mode == "append"
            )
            rows = await documents.create_many(
                tx.db,
                result.app_id,
                result.user_id,
                honcho.id,
                [
                    (fact.text, self.deriver.fact_metadata(fact, sources, result.sources[sources[0]]))
                    for fact, sources, _ in plan.new
                ],
            )
            for row, (_, _, vector) in zip(rows, plan.new, strict=True):
                tx.add(row, vector)
            await derivation.complete_user(tx.db, result.user_id, entry.owner, result.message_ids)
            await jobs.finish_user(
                tx.db, entry.job_id, entry.n, entry.owner, messages=len(result.message_ids), facts=len(rows)
            )
        return len(rows)
