"""The deriver over v3 sessions, with a scripted LLM against real PostgreSQL and LanceDB: every observed
sender's conclusions from one pass over a batch, the observe flags, assistant peers, the configuration
switches, provenance, and erasure of an observed peer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, text

from models.llm import ChatMessage
from models.llm.scripted import ScriptedLLM
from pipelines.deriver.prompts import FACTS_SYSTEM, PEOPLE_SYSTEM, asks_for_facts
from pipelines.memory import Memory
from rapport.settings import DeriverSettings
from storage import conclusions, derivation, messages, v3, workspaces
from storage.db import Database
from storage.index import DOCUMENTS
from storage.query import Record, record_columns
from storage.tables import Collection, Document, User
from tests.pipelines.test_deriver import SETTINGS, facts, say, worker
from tests.storage.factories import make_tree

WS = "ws"


async def session_of(
    database: Database, name: str, peers: dict[str, tuple[bool | None, bool | None]], **options: Any
) -> None:
    async with database.transaction() as db:
        await v3.get_or_create_session_in(db, WS, name, peers=peers, field=("session_id",), **options)


async def send(database: Database, session: str, *turns: tuple[str, str]) -> list[str]:
    """Messages of peers, (peer name, text) each, in order."""
    async with database.transaction() as db:
        rows = await messages.create_peer_messages(
            db,
            WS,
            session,
            [{"peer_id": peer, "content": text, "metadata": {"date": "2023-05-08"}} for peer, text in turns],
        )
    return [r.id for r in rows]


async def held(database: Database, observer: str, observed: str) -> list[Record]:
    """What ``observer`` concludes about ``observed`` (peer names), oldest first."""
    async with database.transaction() as db:
        app = await v3.workspace(db, WS)
        peers = {
            row.name: row.id
            for row in await db.execute(select(User.id, User.name).where(User.app_id == app.id))
        }
        name = "honcho" if observer == observed else f"observer:{peers[observer]}"
        query = (
            select(*record_columns(Document))
            .join(Collection, Collection.id == Document.collection_id)
            .where(Collection.user_id == peers[observed], Collection.name == name)
            .order_by(Document.seq)
        )
        return list((await db.execute(query)).all())


def extractions(llm: ScriptedLLM) -> list[str]:
    return [prompt[1].content for prompt in llm.prompts if asks_for_facts(prompt)]


async def test_one_pass_over_a_batch_yields_conclusions_about_both_speakers(
    database: Database, memory_hashed: Memory
) -> None:
    await session_of(database, "chat", {"alice": (None, None), "bob": (None, None)})
    ids = await send(
        database,
        "chat",
        ("alice", "I moved to Lisbon in May"),
        ("bob", "Nice. I adopted a cat called Tom last week"),
        ("alice", "I work at a bakery there"),
        ("bob", "Cool"),
    )
    llm = ScriptedLLM(
        [
            facts(
                ("alice lives in Lisbon since May 2023.", [1]),
                ("bob adopted a cat called Tom.", [1, 2]),  # cites alice's first, names bob: bob's, from 2
                ("alice is settling into a new city.", [9], "inference", 0.6),  # cites nothing; names alice
                ("Someone likes cats.", [9]),  # cites nothing and names no one: left out
            )
        ]
    )
    assert await worker(memory_hashed, llm).run_once() == "done"

    assert len(llm.prompts) == 1, "one call to the model for both speakers"
    system, shown = llm.prompts[0][0].content, llm.prompts[0][1].content
    assert system == PEOPLE_SYSTEM
    assert "You are asked about alice and bob." in shown
    assert "[1] alice: I moved to Lisbon in May\n[2] bob: Nice." in shown and "[3] alice: I work" in shown

    alice = await held(database, "alice", "alice")
    assert [f.content for f in alice] == [
        "alice lives in Lisbon since May 2023.",
        "alice is settling into a new city.",
    ]
    assert [f.metadata_["message_ids"] for f in alice] == [[ids[0]], [ids[0], ids[2]]]
    assert [f.level for f in alice] == ["explicit", "deductive"]
    bob = await held(database, "bob", "bob")
    assert [(f.content, f.metadata_["message_ids"]) for f in bob] == [
        ("bob adopted a cat called Tom.", [ids[1]])
    ]
    async with database.transaction() as db:
        session = await v3.session_in(db, WS, "chat")
    assert {f.session_id for f in alice + bob} == {session.id}
    assert await held(database, "alice", "bob") == [] and await held(database, "bob", "alice") == []
    async with database.transaction() as db:
        assert (await derivation.counts(db)).done == 4
        # each peer's card, from its conclusions (no model call), most reinforced then newest first
        assert await conclusions.card_of(db, WS, "alice", None) == [
            "alice is settling into a new city.",
            "alice lives in Lisbon since May 2023.",
        ]
        assert await conclusions.card_of(db, WS, "bob", None) == ["bob adopted a cat called Tom."]


async def test_observe_flags_choose_who_is_observed_and_by_whom(
    database: Database, memory_hashed: Memory
) -> None:
    # alice is not observed; bob observes the others; carol is observed by herself and by bob.
    await session_of(database, "chat", {"alice": (False, None), "bob": (None, True), "carol": (None, None)})
    ids = await send(
        database, "chat", ("alice", "I am a pilot"), ("bob", "I am a chef"), ("carol", "I am a nurse")
    )
    llm = ScriptedLLM([facts(("bob is a chef.", [2]), ("carol is a nurse.", [3]))])
    assert await worker(memory_hashed, llm).run_once() == "done"

    shown = extractions(llm)[0]
    assert "alice: I am a pilot\n[2] bob: I am a chef\n[3] carol: I am a nurse" in shown, (
        "alice's not numbered"
    )
    assert "You are asked about bob and carol." in shown
    assert [f.content for f in await held(database, "carol", "carol")] == ["carol is a nurse."]
    assert [f.content for f in await held(database, "bob", "carol")] == ["carol is a nurse."]
    assert [f.metadata_["message_ids"] for f in await held(database, "bob", "carol")] == [[ids[2]]]
    assert [f.content for f in await held(database, "bob", "bob")] == ["bob is a chef."]
    assert await held(database, "alice", "alice") == []
    assert await held(database, "carol", "bob") == [], "carol does not observe others"


async def test_a_peers_own_configuration_can_turn_its_observation_off(
    database: Database, memory_hashed: Memory
) -> None:
    async with database.transaction() as db:
        await v3.get_or_create_peer_in(db, WS, "alice", metadata={}, configuration={"observe_me": False})
    await session_of(database, "chat", {"alice": (None, None), "bob": (None, None)})
    await send(database, "chat", ("alice", "I am a pilot"), ("bob", "I am a chef"))
    llm = ScriptedLLM([facts(("bob is a chef.", [2]))])
    assert await worker(memory_hashed, llm).run_once() == "done"
    assert llm.prompts[0][0].content == FACTS_SYSTEM, "one observed peer: the one-person prompt"
    assert "The user is bob." in extractions(llm)[0]
    assert [f.content for f in await held(database, "bob", "bob")] == ["bob is a chef."]


async def test_assistant_peers_are_observed_only_when_the_setting_says_so(
    database: Database, memory_hashed: Memory
) -> None:
    tree = await make_tree(database, user_name="ana")
    await say(database, tree, "I moved to Lisbon", "I am an assistant that likes puns")
    llm = ScriptedLLM([facts(("ana moved to Lisbon.", [1]))])
    assert await worker(memory_hashed, llm).run_once() == "done"
    assert "[1] ana: I moved to Lisbon\nassistant: I am" in extractions(llm)[0], "v1: only the user's"

    await say(database, tree, "I like tea", "I like puns a lot")
    llm = ScriptedLLM([facts(("ana likes tea.", [1]), ("assistant likes puns.", [2]))])
    settings = DeriverSettings(**{**SETTINGS.model_dump(), "observe_assistants": True})
    assert await worker(memory_hashed, llm, settings).run_once() == "done"
    assert "[1] ana: I like tea\n[2] assistant: I like puns a lot" in extractions(llm)[0]
    async with database.transaction() as db:
        assistant = (
            await db.execute(select(User.id).where(User.app_id == tree.app_id, User.assistant))
        ).scalar_one()
        stored = (
            (
                await db.execute(
                    select(Document.content).join(Collection).where(Collection.user_id == assistant)
                )
            )
            .scalars()
            .all()
        )
    assert stored == ["assistant likes puns."]


async def test_a_session_or_workspace_can_switch_reasoning_and_summaries_off(
    database: Database, memory_hashed: Memory
) -> None:
    await session_of(
        database,
        "quiet",
        {"alice": (None, None), "bob": (None, None)},
        configuration={"reasoning": {"enabled": False}},
    )
    await send(database, "quiet", ("alice", "I am a pilot"), ("bob", "I am a chef"))
    llm = ScriptedLLM([])  # any call fails the test
    assert await worker(memory_hashed, llm).run_once() == "done"
    assert llm.prompts == []
    assert await held(database, "alice", "alice") == []
    async with database.transaction() as db:
        assert (await derivation.counts(db)).done == 2

    # The workspace's switch holds where the session says nothing; the session's wins where it does.
    async with database.transaction() as db:
        await workspaces.update_workspace(
            db, WS, metadata=None, configuration={"reasoning": {"enabled": False}}
        )
    await session_of(database, "also-quiet", {"alice": (None, None)})
    await session_of(
        database, "loud", {"alice": (None, None)}, configuration={"reasoning": {"enabled": True}}
    )
    await send(database, "also-quiet", ("alice", "I am a pilot"))
    await send(database, "loud", ("alice", "I fly to Porto often"))
    llm = ScriptedLLM([facts(("alice flies to Porto often.", [1]))])
    while await worker(memory_hashed, llm).run_once() == "done":
        pass
    assert len(llm.prompts) == 1
    assert [f.content for f in await held(database, "alice", "alice")] == ["alice flies to Porto often."]


async def test_erasing_a_peer_removes_what_was_concluded_about_it_and_what_it_held(
    database: Database, memory_hashed: Memory
) -> None:
    await session_of(database, "chat", {"alice": (None, True), "bob": (None, True)})
    await send(database, "chat", ("alice", "I am a pilot"), ("bob", "I am a chef"))
    llm = ScriptedLLM([facts(("alice is a pilot.", [1]), ("bob is a chef.", [2]))])
    assert await worker(memory_hashed, llm).run_once() == "done"
    assert [f.content for f in await held(database, "alice", "bob")] == ["bob is a chef."]

    bobs_view = (await held(database, "bob", "alice"))[0]
    assert bobs_view.content == "alice is a pilot."
    async with database.transaction() as db:
        app = await v3.workspace(db, WS)
        bob = (
            await db.execute(select(User.id).where(User.app_id == app.id, User.name == "bob"))
        ).scalar_one()
    erased = await memory_hashed.erase_user(app.id, bob)
    assert erased.documents == 3, "his own conclusion, alice's view of him and his view of alice"
    async with database.transaction() as db:
        left = (await db.execute(select(Document.content, Document.user_id))).all()
    assert [row.content for row in left] == ["alice is a pilot."], (
        "nothing about bob, nor bob's view of alice"
    )
    # ... in the index too: bob's view of alice (a document of alice's) is gone from it, hers stays.
    vector = (await memory_hashed.embedder.embed(["alice is a pilot."]))[0]
    hits = await memory_hashed.index.nearest(DOCUMENTS, vector, scope={"user_id": left[0].user_id}, limit=5)
    assert [hit.id for hit in hits] == [(await held(database, "alice", "alice"))[0].id]


async def test_queue_status_counts_by_sender_and_observer_and_parked_work_as_finished(
    database: Database, memory_hashed: Memory
) -> None:
    await session_of(database, "chat", {"alice": (None, None), "bob": (None, True), "carol": (None, None)})
    await session_of(database, "other", {"carol": (None, None)})
    await send(database, "chat", ("alice", "a"), ("bob", "b"), ("alice", "c"))
    await send(database, "other", ("carol", "d"))

    async def status(**peers: str) -> tuple[int, int, int, int]:
        async with database.transaction() as db:
            total, _ = await v3.queue_status(db, WS, **peers)
        return total.total, total.pending, total.completed, total.parked

    assert await status() == (4, 4, 0, 0)
    assert await status(sender="alice") == (2, 2, 0, 0)
    assert await status(sender="carol") == (1, 1, 0, 0)
    assert await status(observer="alice") == (2, 2, 0, 0), "her own messages"
    assert await status(observer="bob") == (3, 3, 0, 0), "all of the session he watches, none of the other"
    assert await status(sender="nobody") == (0, 0, 0, 0)

    # Work parked after its failures is finished, not waiting forever.
    async with database.transaction() as db:
        await db.execute(
            text(
                "UPDATE derivation_queue SET status = 'parked' WHERE session_id = (SELECT id FROM sessions WHERE name = 'other')"
            )
        )
    assert await status() == (4, 3, 1, 1)
    assert await status(sender="carol") == (1, 0, 1, 1)


async def test_a_multi_peer_sessions_summary_is_written_whoever_ends_its_interval(
    database: Database, memory_hashed: Memory
) -> None:
    # The message that ends the first summary's interval (the 20th) is sent by each peer in turn.
    for name, first in (("one", "alice"), ("two", "bob")):
        await session_of(database, name, {"alice": (None, None), "bob": (None, None)})
        other = "bob" if first == "alice" else "alice"
        await send(database, name, *((first if i % 2 else other, f"line {i}") for i in range(20)))

    def answer(prompt: Sequence[ChatMessage]) -> str:
        return facts() if asks_for_facts(prompt) else "They talked about lines."

    llm = ScriptedLLM(answer)
    while await worker(memory_hashed, llm).run_once() == "done":
        pass
    async with database.transaction() as db:
        assert (await derivation.counts(db)).parked == 0
        for name in ("one", "two"):
            summaries = await v3.summaries_in(db, WS, name)
            assert summaries["honcho_chat_summary_short"].content == "They talked about lines."
