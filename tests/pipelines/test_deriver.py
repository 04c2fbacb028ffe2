"""The deriver with a scripted LLM against real PostgreSQL and LanceDB (a deterministic embedder stands
in for the model): facts with provenance, reinforcement instead of duplicates, summaries, what the model
is shown, and what happens when the model fails."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import pytest
from pydantic import ValidationError
from sqlalchemy import select, text

from cluster.deriver import derivation_workers
from cluster.worker import QueueWorker
from models.llm import ChatMessage, LLMUnavailable
from models.llm.scripted import ScriptedLLM
from pipelines.deriver import Deriver, DeriverOptions
from pipelines.deriver.prompts import (
    FACTS_SYSTEM,
    MAX_SOURCES,
    TOKENS_PER_FACT,
    Line,
    asks_for_facts,
    derivation_limited,
    render,
)
from pipelines.memory import Memory
from rapport.settings import DeriverSettings
from storage import derivation, messages, sessions
from storage.db import Database
from storage.derivation import Claim, LeaseLost
from storage.index import DOCUMENTS
from storage.query import Record, record_columns
from storage.tables import Collection, Document, Metamessage
from tests.storage.factories import Tree, make_tree

# The hashing embedder scores close paraphrases lower than a real model would: 0.85 stands in for 0.90.
SETTINGS = DeriverSettings(
    batch_wait_s=0, max_attempts=3, poll_interval_s=0.01, lease_s=60, dedup_threshold=0.85
)


def facts(*items: tuple[str, list[int]] | tuple[str, list[int], str, float]) -> str:
    """A scripted extraction answer: (text, the message numbers it cites) for a stated fact, plus
    ("inference", confidence) for an inference."""
    out = []
    for item in items:
        text_, sources, kind, confidence = (*item, "fact", 1.0) if len(item) == 2 else item
        if kind == "fact":
            out.append({"fact": text_, "sources": sources})
        else:
            out.append({"inference": text_, "confidence": confidence, "sources": sources})
    return json.dumps({"facts": out})


def is_extraction(prompt: Sequence[ChatMessage]) -> bool:
    return asks_for_facts(prompt)


async def say(database: Database, tree: Tree, *turns: str, session_id: str | None = None) -> list[str]:
    """Messages in order: the user speaks first, then the assistant, alternately."""
    async with database.transaction() as db:
        rows = await messages.create_messages(
            db,
            tree.app_id,
            tree.user_id,
            session_id or tree.session_id,
            [
                {"content": t, "is_user": i % 2 == 0, "metadata": {"date": "2023-05-08"}}
                for i, t in enumerate(turns)
            ],
        )
    return [r.id for r in rows]


def worker(memory: Memory, llm: ScriptedLLM, settings: DeriverSettings = SETTINGS) -> QueueWorker[Claim]:
    def loud(error: BaseException) -> None:
        if isinstance(error, AssertionError | TypeError | AttributeError | NameError):
            raise error  # a bug in the pipeline must fail the test, not be parked

    deriver = Deriver(memory, llm, options=DeriverOptions.of(settings))
    return derivation_workers(deriver, settings, outage_pause_s=0.01, on_error=loud)[0]


async def facts_of(database: Database, tree: Tree) -> list[Record]:
    async with database.transaction() as db:
        query = (
            select(*record_columns(Document))
            .join(Collection, Collection.id == Document.collection_id)
            .where(Collection.user_id == tree.user_id, Collection.name == "honcho")
            .order_by(Document.seq)
        )
        return list((await db.execute(query)).all())


async def counts(database: Database) -> derivation.Counts:
    async with database.transaction() as db:
        return await derivation.counts(db)


async def test_facts_are_stored_with_their_sources(database: Database, memory_hashed: Memory) -> None:
    tree = await make_tree(database, user_name="ana")
    ids = await say(database, tree, "I moved to Lisbon in May", "Nice! Why Lisbon?", "For my job at a bakery")
    llm = ScriptedLLM(
        [
            facts(
                ("ana lives in Lisbon since May 2023.", [1]),
                ("ana works at a bakery.", [3, 2]),  # 2 is the assistant's: not a source
                ("ana is excited about the move.", [3], "inference", 0.6),
            )
        ]
    )
    assert await worker(memory_hashed, llm).run_once() == "done"

    stored = await facts_of(database, tree)
    assert [f.content for f in stored] == [
        "ana lives in Lisbon since May 2023.",
        "ana works at a bakery.",
        "ana is excited about the move.",
    ]
    lisbon, bakery, excited = (f.metadata_ for f in stored)
    assert (lisbon["message_id"], lisbon["message_ids"]) == (ids[0], [ids[0]])
    assert bakery["message_ids"] == [ids[2]]
    assert (excited["kind"], excited["confidence"]) == ("inference", 0.6)
    assert {f.metadata_["session_id"] for f in stored} == {tree.session_id}
    assert {f.metadata_["times_derived"] for f in stored} == {1}
    assert lisbon["model"] == "scripted/double"
    assert (await counts(database)).done == 3
    hits = await memory_hashed.index.nearest(
        DOCUMENTS,
        (await memory_hashed.embedder.embed(["ana bakery"]))[0],
        scope={"user_id": tree.user_id},
        limit=1,
    )
    assert hits and hits[0].id == stored[1].id, "facts are searchable as soon as they are stored"
    # The prompt shows the batch with speakers named, the user's messages numbered (only they can be
    # cited), under its date (shown once).
    shown = llm.prompts[0][1].content
    assert (
        "Date: 2023-05-08\n[1] ana: I moved to Lisbon in May\nassistant: Nice! Why Lisbon?\n[3] ana: For"
        in shown
    )
    assert shown.count("2023-05-08") == 1


def test_a_date_is_shown_once_above_the_messages_of_that_date() -> None:
    shown = render(
        [
            Line(1, "ana", "2023-05-08", "a"),
            Line(2, "sam", "2023-05-08", "b"),
            Line(3, "ana", "2023-05-09", "c"),
        ]
    )
    assert shown == "Date: 2023-05-08\n[1] ana: a\n[2] sam: b\nDate: 2023-05-09\n[3] ana: c"


def test_an_answer_holds_stated_facts_and_inferences_and_nothing_between() -> None:
    answer = derivation_limited(2).model_validate_json(
        '{"facts": [{"fact": "Ana has a cat.", "sources": [1]},'
        ' {"inference": "Ana loves animals.", "confidence": 0.6, "sources": [3, 5]}]}'
    )
    assert [(f.text, f.kind, f.confidence, f.sources) for f in answer.derived()] == [
        ("Ana has a cat.", "fact", 1.0, [1]),
        ("Ana loves animals.", "inference", 0.6, [3, 5]),
    ]
    for item in (
        '{"fact": "Ana has a cat.", "confidence": 0.6, "sources": [1]}',
        '{"inference": "Ana is sad.", "sources": [1]}',
    ):
        with pytest.raises(ValidationError):
            derivation_limited(2).model_validate_json(f'{{"facts": [{item}]}}')


def test_a_fact_cites_at_most_a_few_messages_and_a_longer_list_is_cut_not_refused() -> None:
    schema = derivation_limited(2).model_json_schema()
    assert {d["properties"]["sources"]["maxItems"] for d in schema["$defs"].values()} == {MAX_SOURCES}
    answer = derivation_limited(2).model_validate_json(
        '{"facts": [{"fact": "Ana is kind.", "sources": [2, 4, 6, 8, 10, 12]}]}'
    )
    assert [f.sources for f in answer.derived()] == [[2, 4, 6, 8, 10, 12][:MAX_SOURCES]]
    with pytest.raises(ValidationError):
        derivation_limited(2).model_validate_json('{"facts": [{"fact": "Ana is kind.", "sources": []}]}')


async def test_a_batch_yields_at_most_a_few_facts_per_message_of_the_user(
    database: Database, memory_hashed: Memory
) -> None:
    tree = await make_tree(database, user_name="ana")
    await say(database, tree, "I moved to Lisbon in May", "Why?", "For my job at a bakery")  # 2 of hers
    too_many = facts(*((f"ana fact number {i}.", [1]) for i in range(4)))
    llm = ScriptedLLM([too_many, facts(("ana lives in Lisbon.", [1]), ("ana works at a bakery.", [3]))])
    assert await worker(memory_hashed, llm).run_once() == "done"

    # The schema itself holds the model to the limit (constrained decoding stops the list there), the
    # prompt says so, and the answer has room for that many facts of the longest kind.
    limit = 3  # two, plus one for every two of the user's messages
    assert llm.schema_bodies[0]["properties"]["facts"]["maxItems"] == limit
    assert f"At most {limit} facts" in llm.prompts[0][1].content
    assert llm.max_tokens_asked[0] >= limit * TOKENS_PER_FACT
    # A model without constrained decoding that lists more gets the repair turn, not a silent cut.
    assert len(llm.prompts) == 2
    assert [f.content for f in await facts_of(database, tree)] == [
        "ana lives in Lisbon.",
        "ana works at a bakery.",
    ]


async def test_a_repeated_fact_reinforces_the_stored_one(database: Database, memory_hashed: Memory) -> None:
    tree = await make_tree(database, user_name="ana")
    first = await say(database, tree, "I live in Lisbon")
    llm = ScriptedLLM(
        [
            facts(("Ana lives in Lisbon.", [1])),
            facts(("ana lives in lisbon", [1]), ("Ana has a cat.", [1])),  # exact after normalising
            facts(("Ana lives in Lisbon, Portugal.", [1])),  # a near paraphrase (cosine 0.9)
        ]
    )
    w = worker(memory_hashed, llm)
    assert await w.run_once() == "done"
    second = await say(database, tree, "Lisbon is home, and my cat likes it")
    assert await w.run_once() == "done"
    third = await say(database, tree, "Still in Lisbon!")
    assert await w.run_once() == "done"

    stored = await facts_of(database, tree)
    assert [f.content for f in stored] == ["Ana lives in Lisbon.", "Ana has a cat."]
    lisbon = stored[0].metadata_
    assert lisbon["times_derived"] == 3
    assert lisbon["message_ids"] == [first[0], second[0], third[0]]
    assert lisbon["message_id"] == first[0], "the first source stays the first"


async def test_summaries_every_20_and_60_messages(database: Database, memory_hashed: Memory) -> None:
    tree = await make_tree(database, user_name="ana")
    summaries = iter(range(1, 100))
    llm = ScriptedLLM(lambda p: facts() if is_extraction(p) else f"summary {next(summaries)}")
    w = worker(memory_hashed, llm, SETTINGS.model_copy(update={"batch_max_tokens": 200}))
    for chunk in range(6):
        await say(database, tree, *[f"message {chunk * 10 + i + 1}" for i in range(10)])
        while await w.run_once() == "done":
            pass
    assert (await counts(database)).done == 60

    async with database.transaction() as db:
        rows = (await db.execute(select(*record_columns(Metamessage)).order_by(Metamessage.seq))).all()
    found = [(r.label, r.metadata_["message_count"], r.metadata_["summary_type"]) for r in rows]
    assert found == [
        ("honcho_chat_summary_short", 20, "SHORT"),
        ("honcho_chat_summary_short", 40, "SHORT"),
        ("honcho_chat_summary_short", 60, "SHORT"),
        ("honcho_chat_summary_long", 60, "LONG"),
    ]
    async with database.transaction() as db:
        twentieth = (await messages.session_window(db, tree.session_id, skip=19, limit=1))[0]
    assert rows[0].message_id == twentieth.id, "a summary hangs on the message that completed its interval"
    short_prompts = [p for p in llm.prompts if not is_extraction(p) and "120 words" in p[-1].content]
    assert len(short_prompts) == 3
    assert "summary 1" in short_prompts[1][1].content, "each summary builds on the previous one of its kind"
    assert "message 21" in short_prompts[1][1].content and "message 20" not in short_prompts[1][1].content
    assert "message 40" in short_prompts[1][1].content and "message 41" not in short_prompts[1][1].content
    extraction = [p for p in llm.prompts if is_extraction(p)]
    assert any("summary 1" in p[1].content for p in extraction), "the latest summary is the model's context"
    for summary_prompt in short_prompts:  # asked right after its batch's extraction, sharing its prompt
        asked = llm.prompts.index(summary_prompt)
        facts_prompt = llm.prompts[asked - 1]
        assert is_extraction(facts_prompt) and facts_prompt[0] == summary_prompt[0] == ChatMessage(
            "system", FACTS_SYSTEM
        )
        shared = facts_prompt[1].content.rsplit("\n\n", 1)[0]
        assert summary_prompt[1].content.rsplit("\n\n", 1)[0] == shared, "all but the request is the same"
    long_prompt = next(p for p in llm.prompts if "at most 350 words" in p[0].content)
    assert "message 1" in long_prompt[1].content and "message 60" in long_prompt[1].content


async def test_a_summary_model_of_its_own_gets_a_summary_prompt_of_its_own(
    database: Database, memory_hashed: Memory
) -> None:
    tree = await make_tree(database, user_name="ana")
    await say(database, tree, *[f"message {i + 1}" for i in range(20)])
    llm = ScriptedLLM(lambda p: facts())
    summarizer = ScriptedLLM(lambda p: "a summary")
    deriver = Deriver(memory_hashed, llm, summarizer, options=DeriverOptions.of(SETTINGS))
    w = derivation_workers(deriver, SETTINGS, outage_pause_s=0.01)[0]
    assert await w.run_once() == "done"
    assert len(llm.prompts) == 1 and is_extraction(llm.prompts[0])
    [asked] = summarizer.prompts
    assert "at most 120 words" in asked[0].content and "message 1" in asked[1].content


async def test_a_summary_that_loops_is_cut_at_its_token_limit_and_keeps_each_sentence_once(
    database: Database, memory_hashed: Memory
) -> None:
    tree = await make_tree(database, user_name="ana")
    await say(database, tree, *[f"message {i + 1}" for i in range(20)])
    looping = "Ana moved to Lisbon. She likes it there." + " She likes  it there." * 100 + " And then"
    summarizer = ScriptedLLM(lambda p: looping)  # the double counts a word as a token
    deriver = Deriver(memory_hashed, ScriptedLLM(lambda p: facts()), summarizer, DeriverOptions.of(SETTINGS))
    assert await derivation_workers(deriver, SETTINGS, outage_pause_s=0.01)[0].run_once() == "done"
    assert summarizer.max_tokens_asked == [240], "a short summary may take twice its 120 words in tokens"
    async with database.transaction() as db:
        [stored] = (await db.execute(select(Metamessage.content))).scalars().all()
    assert stored == "Ana moved to Lisbon. She likes it there."


async def test_later_messages_never_reach_the_prompt(database: Database, memory_hashed: Memory) -> None:
    tree = await make_tree(database, user_name="ana")
    await say(database, tree, *[f"turn number {i:02d} " + "words " * 40 for i in range(1, 9)])
    llm = ScriptedLLM(lambda _: facts())
    w = worker(memory_hashed, llm, SETTINGS.model_copy(update={"batch_max_tokens": 130}))
    while await w.run_once() == "done":
        pass
    assert len(llm.prompts) >= 3, "small token budget: several batches"
    for prompt in llm.prompts:
        shown = prompt[1].content
        numbers = [int(n) for n in re.findall(r"turn number (\d\d)", shown)]
        batch = [int(n) for n in re.findall(r"turn number (\d\d)", shown.split("\nMessages:\n")[1])]
        assert numbers and max(numbers) == max(batch), f"nothing after the batch is shown: {numbers} {batch}"


async def test_broken_json_is_repaired_once_then_retried_then_parked(
    database: Database, memory_hashed: Memory
) -> None:
    tree = await make_tree(database, user_name="ana")
    await say(database, tree, "I live in Lisbon")
    llm = ScriptedLLM(lambda p: '{"facts": [{"text": "Ana lives')  # never valid
    w = worker(memory_hashed, llm)
    for attempt in range(1, SETTINGS.max_attempts + 1):
        assert await w.run_once() == "failed"
        assert len(llm.prompts) == 2 * attempt, "each attempt: the answer, then one repair request"
        async with database.transaction() as db:
            await db.execute(text("UPDATE derivation_sessions SET not_before = now()"))  # skip the backoff
    state = await counts(database)
    assert (state.parked, state.pending, state.done) == (1, 0, 0)
    async with database.transaction() as db:
        error, raw = (await db.execute(text("SELECT last_error, raw_output FROM derivation_queue"))).one()
    assert "LLMOutputError" in error and raw == '{"facts": [{"text": "Ana lives'
    assert await facts_of(database, tree) == []

    async with database.transaction() as db:
        assert await derivation.retry_parked(db) == 1
    good = ScriptedLLM([facts(("Ana lives in Lisbon.", [1]))])
    assert await worker(memory_hashed, good).run_once() == "done"
    assert [f.content for f in await facts_of(database, tree)] == ["Ana lives in Lisbon."]


async def test_an_llm_that_is_down_parks_nothing(database: Database, memory_hashed: Memory) -> None:
    tree = await make_tree(database, user_name="ana")
    await say(database, tree, "I live in Lisbon")
    down = ScriptedLLM(lambda _: (_ for _ in ()).throw(LLMUnavailable("connection refused")))
    w = worker(memory_hashed, down)
    for _ in range(SETTINGS.max_attempts + 3):
        assert await w.run_once() in ("outage", "idle")
        async with database.transaction() as db:
            await db.execute(text("UPDATE derivation_sessions SET not_before = now()"))
    state = await counts(database)
    assert (state.parked, state.retrying, state.pending) == (0, 0, 1), "waiting, with no attempt spent"
    assert await worker(memory_hashed, ScriptedLLM([facts()])).run_once() == "done"


async def test_no_message_is_done_unless_its_output_is_stored(
    database: Database, memory_hashed: Memory
) -> None:
    tree = await make_tree(database, user_name="ana")
    await say(database, tree, "I live in Lisbon")
    async with database.transaction() as db:
        held = await derivation.claim(db, lease_s=60, wait_s=0, max_tokens=1000)
    assert held is not None
    # Another worker takes over the session while the model works (this one's lease has lapsed).
    async with database.transaction() as db:
        await db.execute(text("UPDATE derivation_sessions SET lease_owner = 'someone-else'"))
    with pytest.raises(LeaseLost):
        await Deriver(memory_hashed, ScriptedLLM([facts(("Ana lives in Lisbon.", [1]))])).derive(held)
    assert await facts_of(database, tree) == [], "the stale worker stored nothing"
    assert (await counts(database)).done == 0


async def test_sessions_with_deriver_disabled_are_never_derived(
    database: Database, memory_hashed: Memory
) -> None:
    tree = await make_tree(database, user_name="ana")
    async with database.transaction() as db:
        quiet = await sessions.create_session(db, tree.app_id, tree.user_id, {"deriver_disabled": True})
    await say(database, tree, "I live in Lisbon", session_id=quiet.id)
    llm = ScriptedLLM([])
    assert await worker(memory_hashed, llm).run_once() == "idle"
    assert llm.prompts == []
