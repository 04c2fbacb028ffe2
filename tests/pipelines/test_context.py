"""Context gathering against real PostgreSQL and LanceDB (a deterministic embedder): what is found,
what overlap is removed, newer facts first, and the token budget."""

from __future__ import annotations

import pytest

from pipelines import retrieval
from pipelines.context import (
    Context,
    ContextOptions,
    bm25,
    check_queries,
    estimate_tokens,
    gather_context,
    newest_first_within_topics,
)
from pipelines.memory import Memory
from storage.db import Database
from storage.errors import InvalidError, NotFoundError
from tests.pipelines.knowledge import add_fact, add_summary, say
from tests.storage.factories import make_tree


def counted(context: Context) -> int:
    """The budget as the caller counts it: every item's content, by the documented estimate."""
    rows = [
        *(f for f, _ in context.facts),
        *(m for m, _ in context.messages),
        *context.summaries,
        *context.recent,
    ]
    return sum(len(r.content) // 4 + 8 for r in rows)


async def test_context_holds_facts_messages_summaries_and_recent_without_overlap(
    memory: Memory, database: Database
) -> None:
    tree = await make_tree(database, user_name="ana")
    turns = await say(
        memory,
        tree,
        "I moved to Lisbon last spring for a job",
        "How do you like Lisbon so far?",
        "The pastries in Lisbon are wonderful, the bakery downstairs is my favourite",
        "Sounds lovely. Any hobbies?",
        "I play the cello on Sundays",
        "Nice, classical music then?",
        "Yes, mostly Bach",
        "Great taste!",
    )
    lisbon = await add_fact(memory, tree, "ana moved to Lisbon in spring 2023", sources=[turns[0]])
    cello = await add_fact(memory, tree, "ana plays the cello on Sundays", sources=[turns[4]])
    await add_summary(memory, tree, "SHORT", "An old short summary.", after=turns[1])
    short = await add_summary(memory, tree, "SHORT", "ana talked about Lisbon and music.", after=turns[5])
    long = await add_summary(memory, tree, "LONG", "ana moved to Lisbon and plays the cello.", after=turns[5])

    query = "when did ana move to Lisbon"
    plain = await retrieval.search_messages(
        memory.database, memory.index, memory.embedder, app_id=tree.app_id, user_id=tree.user_id, query=query
    )
    assert plain[0][0].id == turns[0].id, "without the fact, the search finds its source message first"

    options = ContextOptions(top_k=5, max_tokens=2000, recent_messages=2)
    context = await gather_context(
        memory,
        app_id=tree.app_id,
        user_id=tree.user_id,
        session_id=tree.session_id,
        queries=query,
        options=options,
    )
    assert context.user.name == "ana"
    assert [f.id for f, _ in context.facts][0] == lisbon.id
    assert {f.id for f, _ in context.facts} == {lisbon.id, cello.id}
    message_ids = [m.id for m, _ in context.messages]
    assert turns[0].id not in message_ids, "the fact that came from it tells it"
    assert turns[2].id in message_ids, "a relevant message no fact covers stays"
    assert [m.id for m in context.recent] == [turns[6].id, turns[7].id], "the last two, oldest first"
    assert not {m.id for m in context.recent} & set(message_ids), "recent messages are not repeated"
    assert [s.id for s in context.summaries] == [short.id, long.id], "the latest of each kind"
    for hits in (context.facts, context.messages):
        assert all(a[1] >= b[1] for a, b in zip(hits, hits[1:], strict=False)), "best first"
    assert context.tokens == counted(context) <= options.max_tokens


async def test_the_budget_is_respected_and_filled_with_what_fits(memory: Memory, database: Database) -> None:
    tree = await make_tree(database, user_name="ana")
    turns = await say(memory, tree, *[f"ana mentions Lisbon again, time number {i}" for i in range(12)])
    for i in range(10):
        await add_fact(memory, tree, f"ana fact {i} about Lisbon", sources=[turns[i]])
    await add_summary(memory, tree, "LONG", "Lisbon " * 600, after=turns[0])  # ~1,000 tokens: never fits

    for budget in (64, 150, 400):
        context = await gather_context(
            memory,
            app_id=tree.app_id,
            user_id=tree.user_id,
            session_id=tree.session_id,
            queries="Lisbon",
            options=ContextOptions(top_k=10, max_tokens=budget, recent_messages=4),
        )
        assert counted(context) == context.tokens <= budget
        assert context.facts, f"something fits in {budget} tokens"
        assert not context.summaries, "the long summary is skipped, smaller items still fill the budget"
        if len(context.facts) < 10:  # facts were left out: for want of room, not for nothing
            assert budget - context.tokens < estimate_tokens("ana fact 10 about Lisbon"), "little is left"
    small = await gather_context(
        memory,
        app_id=tree.app_id,
        user_id=tree.user_id,
        session_id=tree.session_id,
        queries="Lisbon",
        options=ContextOptions(top_k=10, max_tokens=64),
    )
    roomy = await gather_context(
        memory,
        app_id=tree.app_id,
        user_id=tree.user_id,
        session_id=tree.session_id,
        queries="Lisbon",
        options=ContextOptions(top_k=10, max_tokens=4000),
    )
    assert len(roomy.facts) == 10 and len(small.facts) < 10
    assert [f.id for f, _ in small.facts] == [f.id for f, _ in roomy.facts][: len(small.facts)], "best kept"


async def test_newer_facts_come_first_on_the_same_topic(memory: Memory, database: Database) -> None:
    tree = await make_tree(database, user_name="ana")
    # Stored in the other order: the conversation's dates decide, not when the deriver got to them.
    new = await add_fact(memory, tree, "ana lives in Porto", date="1:56 pm on 2 February, 2024")
    old = await add_fact(memory, tree, "ana lives in Lisbon", date="2023-05-08")
    other = await add_fact(memory, tree, "ana plays the cello", date="2022-01-01")

    context = await gather_context(
        memory, app_id=tree.app_id, user_id=tree.user_id, queries="does ana still live in Lisbon"
    )
    ids = [f.id for f, _ in context.facts]
    assert ids.index(new.id) < ids.index(old.id), "the query matches Lisbon best, but Porto is newer"
    assert ids[-1] == other.id
    scores = [s for _, s in context.facts]
    assert scores == sorted(scores, reverse=True), "ranks keep their scores"


def test_newest_first_only_reorders_facts_on_one_topic() -> None:
    class Row:
        def __init__(self, content: str, date: str) -> None:
            self.content, self.metadata_, self.created_at = content, {"date": date}, None

    a, b, c = (
        Row("ana likes tea", "2020-01-01"),
        Row("ana plays chess", "2024-01-01"),
        Row("ana likes coffee", "2023-01-01"),
    )
    ordered = newest_first_within_topics([(a, 0.9), (b, 0.8), (c, 0.7)])  # type: ignore[list-item]
    assert [(r.content, s) for r, s in ordered] == [
        ("ana likes coffee", 0.9),
        ("ana plays chess", 0.8),
        ("ana likes tea", 0.7),
    ]


async def test_several_queries_are_merged(memory: Memory, database: Database) -> None:
    tree = await make_tree(database, user_name="ana")
    lisbon = await add_fact(memory, tree, "ana lives in Lisbon")
    cello = await add_fact(memory, tree, "ana plays the cello")
    for i in range(6):
        await add_fact(memory, tree, f"ana owns {i} umbrellas of colour {i}")
    context = await gather_context(
        memory,
        app_id=tree.app_id,
        user_id=tree.user_id,
        queries=["where does ana live, Lisbon?", "which instrument, the cello?"],
        options=ContextOptions(top_k=1),
    )
    assert {f.id for f, _ in context.facts} == {lisbon.id, cello.id}, "each query's best, top_k each"


async def test_nothing_known_and_unknown_ids(memory: Memory, database: Database) -> None:
    tree = await make_tree(database, user_name="ana")
    other = await make_tree(database, app_name="other", user_name="bo")
    context = await gather_context(
        memory, app_id=tree.app_id, user_id=tree.user_id, session_id=tree.session_id, queries="anything?"
    )
    assert context.empty and context.tokens == 0 and context.user.name == "ana"
    with pytest.raises(NotFoundError):
        await gather_context(memory, app_id=tree.app_id, user_id="nope", queries="x")
    with pytest.raises(NotFoundError):
        await gather_context(
            memory, app_id=tree.app_id, user_id=tree.user_id, session_id=other.session_id, queries="x"
        )


def test_queries_are_checked() -> None:
    assert check_queries("a") == ["a"]
    assert check_queries(["a", "b", "a"]) == ["a", "b"]
    for bad, where in (([], ("queries",)), (["ok", "  "], ("queries", 1)), (["x"] * 11, ("queries",))):
        with pytest.raises(InvalidError) as caught:
            check_queries(bad)
        assert caught.value.field == where
    with pytest.raises(InvalidError) as caught:
        check_queries("q" * 1001, field="query")
    assert caught.value.field == ("query",)


def test_bm25_prefers_rarer_shared_words() -> None:
    scores = bm25(
        "Where does Ana's sister live?", ["Ana lives in Porto", "Ana's sister lives in Faro", "tea"]
    )
    assert scores[1] > scores[0] > scores[2] == 0
    assert bm25("the of and", ["the cat"]) == [0.0], "stop words alone match nothing"
