"""Dreams: a consolidation pass over what one observer holds about one peer.

1. **Near-duplicates** (no LLM): conclusions of one level whose embeddings are at least
   ``dream.duplicate_similarity`` alike are merged into the most reinforced of them (then the oldest):
   it takes their ``times_derived`` and sources, and they are marked superseded by it.
2. **Contradictions and deductions** (one LLM call, structured output): the conclusions that still hold
   are shown numbered, oldest first, each with its date; the model names pairs that cannot both hold
   now, and may write a few deductive conclusions, each with the numbers of its premises. Of a
   contradicting pair the older (by the date it holds from) is marked superseded by the newer, whatever
   order the model gave them in. A pair about unrelated things (embeddings less than
   ``RELATED_SIMILARITY`` alike) is not taken: a small model sees contradictions that are not there.
3. **The card** is refreshed from the most reinforced conclusions that still hold
   (storage/dreams.py ``refresh_card``; a card set through the API is left alone).

Nothing is deleted: a superseded conclusion keeps its row with ``invalid_at`` and ``superseded_by``,
leaves what context, representations and chat read, and stays in the conclusions list and the history.
Everything is written in one transaction under the pair's collection lock (the deriver's), and only
while the dream's lease is the worker's own.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from models.llm import ChatMessage, LLMClient
from models.llm.client import billed_to
from pipelines.context import fact_date, fact_time
from pipelines.deriver.derive import reinforce
from pipelines.memory import Memory
from rapport import metrics
from rapport.settings import DreamSettings
from storage import collections, documents, dreams
from storage.dreams import DreamClaim
from storage.query import Record, fetch_by_ids
from storage.tables import User

log = logging.getLogger(__name__)

RELATED_SIMILARITY = 0.4
DEDUCTION_MAX_CHARS = 300


class Conflict(BaseModel):
    older: int = Field(description="The number of the fact that no longer holds")
    newer: int = Field(description="The number of the fact that replaced it")


class Deduction(BaseModel):
    text: str = Field(min_length=3, max_length=DEDUCTION_MAX_CHARS)
    premises: list[int] = Field(min_length=1, max_length=5)


class DreamOutput(BaseModel):
    """What a dream's model call returns."""

    contradictions: list[Conflict] = Field(default_factory=list, max_length=30)
    deductions: list[Deduction] = Field(default_factory=list, max_length=20)


DREAM_SYSTEM = """\
You keep a memory of facts about {name}. The facts are numbered, oldest first, each with the date it \
holds from.

1. Contradictions: list the pairs of facts that cannot both be true now, because something about \
{name} changed (moved to another place, changed job, a relationship began or ended, a preference \
changed). Give the number of the older fact and of the newer one. Facts that are merely different, \
or can both be true, are not contradictions.
2. Deductions: write at most {k} new facts about {name} that follow with certainty from two or more of \
the facts together, each with the numbers of the facts it follows from. Do not repeat a listed fact. \
Write none if nothing follows.

Answer with the JSON object only, e.g. {{"contradictions": [{{"older": 1, "newer": 4}}], \
"deductions": [{{"text": "...", "premises": [2, 3]}}]}}"""


class BothHold(BaseModel):
    """Whether two facts about a person can both be true now."""

    both_true: bool


PAIR_SYSTEM = """\
You keep a memory of facts about {name}. You are shown an older and a newer fact, each with the date \
it was learned. Decide whether both can be true at the same time now, or whether the newer one \
replaced the older because something about {name} changed (moved to another place, changed job or \
studies, a relationship ended, stopped or started doing something, a pet died or a new one came, a \
preference changed). Answer with the JSON object only: {{"both_true": true}} or {{"both_true": false}}."""


def pair_prompt(name: str, older: Record, newer: Record) -> list[ChatMessage]:
    shown = (
        f"Older fact ({fact_date(older)}): {older.content}\nNewer fact ({fact_date(newer)}): {newer.content}"
    )
    return [ChatMessage("system", PAIR_SYSTEM.format(name=name)), ChatMessage("user", shown)]


def dream_prompt(name: str, facts: Sequence[Record], max_deductions: int) -> list[ChatMessage]:
    lines = [f"{i}. [{fact_date(f)}] {f.content}" for i, f in enumerate(facts, start=1)]
    system = DREAM_SYSTEM.format(name=name, k=max_deductions)
    return [ChatMessage("system", system), ChatMessage("user", "Facts:\n" + "\n".join(lines))]


@dataclass
class DreamResult:
    read: int = 0
    merged: int = 0
    superseded: int = 0
    deduced: int = 0
    card: bool = False
    tokens: int = 0


def _when(row: Record) -> tuple[Any, int]:
    return fact_time(row), row.seq


async def _supersede_each(
    db: Any, rows: Sequence[Record], pairs: Sequence[tuple[int, int]], reason: dreams.Reason, gone: set[str]
) -> list[tuple[int, int]]:
    """Mark each (old, new) pair's old superseded by its new, for those where neither is ``gone`` (no
    longer holding; what this marks is added to it). The pairs marked."""
    done = []
    for older, newer in pairs:
        old, new = rows[older], rows[newer]
        if old.id in gone or new.id in gone:
            continue
        if await dreams.supersede(db, old.id, new.id, reason):
            gone.add(old.id)
            done.append((older, newer))
    return done


class Dreamer:
    """Runs dreams with the deriver's memory and model. One per worker process is enough."""

    def __init__(self, memory: Memory, llm: LLMClient, settings: DreamSettings | None = None) -> None:
        self.memory = memory
        self.llm = llm
        self.settings = settings or DreamSettings()

    async def dream(
        self, app_id: str, observer_id: str, observed_id: str, *, claim: DreamClaim | None = None
    ) -> DreamResult:
        """Consolidate what ``observer_id`` holds about ``observed_id``; with ``claim``, record the dream
        done in the same transaction (LeaseLost, and nothing stored, if its lease was lost)."""
        with billed_to(app_id, "dream"):
            return await self._dream(app_id, observer_id, observed_id, claim)

    async def _dream(
        self, app_id: str, observer_id: str, observed_id: str, claim: DreamClaim | None
    ) -> DreamResult:
        result = DreamResult()
        pair = (observer_id, observed_id)
        async with self.memory.database.transaction() as db:
            found = await collections.pair_ids(db, [pair])
            named = {row.id: row for row in await fetch_by_ids(db, User, [observed_id])}
            if not found:  # nothing held about the peer: nothing to do, and no collection to make
                if claim is not None:
                    await dreams.finish(db, claim, asdict(result))
                return result
            rows = await dreams.valid_of(db, found[pair], limit=self.settings.max_conclusions)
        rows = sorted(rows, key=_when)  # oldest first
        result.read = len(rows)
        vectors = await self.memory.embedder.embed([r.content for r in rows]) if rows else np.zeros((0, 1))
        merges = self._duplicates(rows, vectors)
        merged_away = {dup for dup, _ in merges}
        kept = [i for i in range(len(rows)) if i not in merged_away]
        conflicts: list[tuple[int, int]] = []
        deductions: list[tuple[str, list[int]]] = []
        if len(kept) >= 2 and observed_id in named:
            output, tokens = await self._ask(named[observed_id].name, [rows[i] for i in kept])
            result.tokens = tokens
            conflicts = self._conflicts(output, kept, rows, vectors)
            deductions = self._deductions(output, kept, rows)
            checked, tokens = await self._check_pairs(named[observed_id].name, kept, rows, vectors, conflicts)
            conflicts += checked
            result.tokens += tokens

        new_vectors = await self.memory.embedder.embed([t for t, _ in deductions]) if deductions else None
        async with self.memory.documents_transaction() as tx:
            locked = await collections.lock_pairs(tx.db, app_id, [pair])
            collection_id = locked[pair]
            involved = [rows[i].id for i, _ in merges] + [rows[i].id for pair_ in conflicts for i in pair_]
            invalid = await dreams.invalid_among(tx.db, involved)  # since they were read
            gone: set[str] = set(invalid)
            merged = await _supersede_each(tx.db, rows, merges, "duplicate", gone)
            result.merged = len(merged)
            absorbed: dict[int, list[Record]] = {}
            for dup, keeper in merged:
                absorbed.setdefault(keeper, []).append(rows[dup])
            for keeper, duplicates in absorbed.items():
                await self._absorb(tx.db, app_id, observed_id, collection_id, rows[keeper].id, duplicates)
            result.superseded = len(await _supersede_each(tx.db, rows, conflicts, "contradiction", gone))
            # a deduction resting on a conclusion that no longer holds is not written
            standing = [k for k, (_, p) in enumerate(deductions) if not any(rows[i].id in gone for i in p)]
            deductions = [deductions[k] for k in standing]
            if deductions:
                assert new_vectors is not None
                new_rows = await documents.create_many(
                    tx.db,
                    [
                        documents.NewDocument(
                            app_id,
                            observed_id,
                            collection_id,
                            text,
                            {
                                "premises": [rows[i].id for i in premises],
                                "source": "dream",
                                "times_derived": 1,
                            },
                            level="deductive",
                        )
                        for text, premises in deductions
                    ],
                )
                for row, vector in zip(new_rows, new_vectors[standing], strict=True):
                    tx.add(row, vector)
                result.deduced = len(new_rows)
            card = await dreams.refresh_card(tx.db, app_id, observer_id, observed_id, collection_id)
            result.card = card is not None
            if claim is not None:
                await dreams.finish(tx.db, claim, asdict(result))
        metrics.DREAMS.inc(outcome="done")
        metrics.DREAM_CHANGES.inc(result.merged, change="merged")
        metrics.DREAM_CHANGES.inc(result.superseded, change="superseded")
        metrics.DREAM_CHANGES.inc(result.deduced, change="deduced")
        log.info("dream of %s by %s: %s", observed_id, observer_id, result)
        return result

    def _duplicates(self, rows: Sequence[Record], vectors: np.ndarray) -> list[tuple[int, int]]:
        """(duplicate, keeper) positions: groups of one level whose embeddings are alike, each merged
        into its most reinforced member, then its oldest."""
        if len(rows) < 2:
            return []
        similar = vectors @ vectors.T
        parent = list(range(len(rows)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i in range(len(rows)):
            for j in range(i + 1, len(rows)):
                if rows[i].level == rows[j].level and similar[i, j] >= self.settings.duplicate_similarity:
                    parent[root(j)] = root(i)
        groups: dict[int, list[int]] = {}
        for i in range(len(rows)):
            groups.setdefault(root(i), []).append(i)
        merges = []
        for members in groups.values():
            if len(members) < 2:
                continue
            keeper = min(
                members, key=lambda i: (-documents.times_derived(rows[i].metadata_), i)
            )  # rows are oldest first
            merges += [(i, keeper) for i in members if i != keeper]
        return merges

    async def _check_pairs(
        self,
        name: str,
        kept: Sequence[int],
        rows: Sequence[Record],
        vectors: np.ndarray,
        named: Sequence[tuple[int, int]],
    ) -> tuple[list[tuple[int, int]], int]:
        """Ask about the likeliest contradictions one pair at a time (a small model misses most of them
        in a list): the ``dream.max_pair_checks`` pairs of different dates most alike in embedding (but
        not duplicates), not already named. (older, newer) of those that cannot both hold, and tokens."""
        seen = {frozenset(p) for p in named}
        candidates: list[tuple[float, int, int]] = []
        for x, a in enumerate(kept):
            for b in kept[x + 1 :]:
                similarity = float(vectors[a] @ vectors[b])
                if not RELATED_SIMILARITY <= similarity < self.settings.duplicate_similarity:
                    continue
                if frozenset((a, b)) in seen or fact_time(rows[a]) == fact_time(rows[b]):
                    continue
                older, newer = sorted((a, b), key=lambda i: _when(rows[i]))
                candidates.append((similarity, older, newer))
        candidates.sort(reverse=True)
        found: list[tuple[int, int]] = []
        tokens = 0
        for _, older, newer in candidates[: self.settings.max_pair_checks]:
            answer, completion = await self.llm.structured(
                pair_prompt(name, rows[older], rows[newer]), BothHold, max_tokens=30
            )
            tokens += completion.usage.prompt_tokens + completion.usage.completion_tokens
            if not answer.both_true:
                found.append((older, newer))
        return found, tokens

    async def _ask(self, name: str, facts: Sequence[Record]) -> tuple[DreamOutput, int]:
        prompt = dream_prompt(name, facts, self.settings.max_deductions)
        output, completion = await self.llm.structured(prompt, DreamOutput, max_tokens=600)
        usage = completion.usage
        return output, (usage.prompt_tokens + usage.completion_tokens) if usage else 0

    def _conflicts(
        self, output: DreamOutput, kept: Sequence[int], rows: Sequence[Record], vectors: np.ndarray
    ) -> list[tuple[int, int]]:
        """(older, newer) positions of the contradictions the model named that can be taken."""
        found: list[tuple[int, int]] = []
        for conflict in output.contradictions:
            numbers = (conflict.older, conflict.newer)
            if not all(1 <= n <= len(kept) for n in numbers) or numbers[0] == numbers[1]:
                continue
            a, b = (kept[n - 1] for n in numbers)
            if float(vectors[a] @ vectors[b]) < RELATED_SIMILARITY:
                log.info(
                    "dream: not superseding unrelated conclusions %r / %r", rows[a].content, rows[b].content
                )
                continue
            older, newer = sorted((a, b), key=lambda i: _when(rows[i]))
            if fact_time(rows[older]) == fact_time(rows[newer]):
                continue  # no telling which holds now
            found.append((older, newer))
        return found

    def _deductions(
        self, output: DreamOutput, kept: Sequence[int], rows: Sequence[Record]
    ) -> list[tuple[str, list[int]]]:
        known = {documents.normalized(r.content) for r in rows}
        found: list[tuple[str, list[int]]] = []
        for deduction in output.deductions[: self.settings.max_deductions]:
            text = deduction.text.strip()
            premises = sorted({kept[n - 1] for n in deduction.premises if 1 <= n <= len(kept)})
            key = documents.normalized(text)
            if not premises or not key or key in known:
                continue
            known.add(key)
            found.append((text, premises))
        return found

    async def _absorb(
        self,
        db: Any,
        app_id: str,
        observed_id: str,
        collection_id: str,
        keeper_id: str,
        duplicates: Sequence[Record],
    ) -> None:
        """The keeper takes its merged duplicates' reinforcement and sources, read again under the pair's
        lock (the deriver may have reinforced either since the dream read them)."""
        fresh = [await documents.lock_by_id(db, d.id) for d in duplicates]
        merged = [d for d in fresh if d is not None]
        sources = [s for d in merged for s in documents.source_ids(d.metadata_)]
        times = sum(documents.times_derived(d.metadata_) for d in merged)
        await reinforce(db, app_id, observed_id, collection_id, keeper_id, sources, times=times)
