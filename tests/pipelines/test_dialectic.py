"""The dialectic with a scripted LLM against real PostgreSQL and LanceDB: what the model is shown, and
what it answers."""

from __future__ import annotations

import json

import pytest

from models.llm import LLMConfigError, LLMUnavailable
from models.llm.client import TransientError
from models.llm.lazy import LazyLLM
from models.llm.scripted import ScriptedLLM
from pipelines.context import ContextOptions
from pipelines.dialectic import Dialectic, DialecticOptions
from pipelines.dialectic.prompts import ANSWER_SYSTEM, NOTHING_KNOWN, REWRITE_SYSTEM
from pipelines.memory import Memory
from storage.db import Database
from storage.errors import NotFoundError
from tests.pipelines.knowledge import add_fact, add_summary, say
from tests.storage.factories import make_tree


async def test_with_nothing_known_the_model_gets_an_empty_context(memory: Memory, database: Database) -> None:
    tree = await make_tree(database, user_name="ana")
    llm = ScriptedLLM(["I don't know: nothing is known about ana yet."])
    answer = await Dialectic(memory, llm).answer(
        tree.app_id, tree.user_id, tree.session_id, "Where does ana live?"
    )

    assert answer == "I don't know: nothing is known about ana yet."
    [(system, user)] = llm.prompts
    assert system.content == ANSWER_SYSTEM.format(user="ana")
    assert "say plainly that you don't know" in system.content
    assert (
        user.content
        == f"Memory about ana:\n\n{NOTHING_KNOWN.format(user='ana')}\n\nQuestion: Where does ana live?"
    )


async def test_conflicting_facts_reach_the_prompt_with_their_dates_newer_first(
    memory: Memory, database: Database
) -> None:
    tree = await make_tree(database, user_name="ana")
    await add_fact(memory, tree, "ana lives in Porto", date="2024-02-01")
    await add_fact(memory, tree, "ana lives in Lisbon", date="2023-05-08")  # stored later, but older
    await add_fact(memory, tree, "ana is anxious about moving", date="2024-01-20", kind="inference")
    llm = ScriptedLLM(["ana lives in Porto (she moved from Lisbon)."])
    answer = await Dialectic(memory, llm).answer(
        tree.app_id, tree.user_id, None, "Where does ana live, Lisbon?"
    )

    assert answer == "ana lives in Porto (she moved from Lisbon)."
    system, user = llm.prompts[0]
    assert "the newer one is what holds" in system.content
    porto = user.content.index("- [2024-02-01] ana lives in Porto")
    inference = user.content.index("- [2024-01-20] ana is anxious about moving (inference)")
    lisbon = user.content.index("- [2023-05-08] ana lives in Lisbon")
    assert user.content.index("Facts about ana (newest first):") < porto < inference < lisbon


async def test_messages_summaries_and_a_list_of_questions(memory: Memory, database: Database) -> None:
    tree = await make_tree(database, user_name="ana")
    turns = await say(
        memory, tree, "I play the cello on Sundays", "Lovely!", "And I adopted a beagle named Bolt"
    )
    await add_summary(memory, tree, "SHORT", "ana talked about music and pets.", after=turns[2])
    llm = ScriptedLLM(["She plays the cello; her dog is Bolt."])
    dialectic = Dialectic(memory, llm, DialecticOptions(ContextOptions(recent_messages=1)))
    answer = await dialectic.answer(
        tree.app_id, tree.user_id, tree.session_id, ["What instrument does ana play?", "Does ana have pets?"]
    )
    assert answer == "She plays the cello; her dog is Bolt."
    prompt = llm.prompts[0][1].content
    assert "Questions (answer each):\n- What instrument does ana play?\n- Does ana have pets?" in prompt
    assert "Summary of the conversation (short):\nana talked about music and pets." in prompt
    assert "- ana (" in prompt and ": I play the cello on Sundays" in prompt
    latest = prompt.index("The latest messages of this conversation:\n")
    assert prompt.index("And I adopted a beagle named Bolt") > latest, "the last message, as recent"
    assert prompt.count("And I adopted a beagle named Bolt") == 1, "and not again as relevant"


async def test_streaming_gives_the_same_answer_in_pieces(memory: Memory, database: Database) -> None:
    tree = await make_tree(database, user_name="ana")
    text = "I don't know anything about ana's travel plans yet."
    pieces = [
        p
        async for p in Dialectic(memory, ScriptedLLM([text])).stream(
            tree.app_id, tree.user_id, None, "trips?"
        )
    ]
    assert len(pieces) > 1 and "".join(pieces) == text


async def test_failures_come_before_the_first_piece(memory: Memory, database: Database) -> None:
    tree = await make_tree(database, user_name="ana")
    down = Dialectic(memory, ScriptedLLM([TransientError("503 from the server")]))
    with pytest.raises(LLMUnavailable):
        await anext(down.stream(tree.app_id, tree.user_id, tree.session_id, "x?"))
    unused = ScriptedLLM([])
    with pytest.raises(NotFoundError):
        await anext(Dialectic(memory, unused).stream(tree.app_id, tree.user_id, "no-such-session", "x?"))
    assert unused.prompts == [], "an unknown session costs no LLM call"

    async def misconfigured() -> ScriptedLLM:
        raise LLMConfigError("provider openai needs LLM_BASE_URL")

    lazy = LazyLLM(misconfigured, name="openai/none")
    with pytest.raises(LLMConfigError, match="LLM_BASE_URL"):
        await Dialectic(memory, lazy).answer(tree.app_id, tree.user_id, None, "x?")
    assert not lazy.built, "a failed build is not remembered: fixing the setting is enough"


async def test_query_rewrite_searches_for_what_the_question_does_not_say(
    memory: Memory, database: Database
) -> None:
    tree = await make_tree(database, user_name="ana")
    cello = await add_fact(memory, tree, "ana plays the cello in an orchestra")
    await add_fact(memory, tree, "ana cooks pasta on weekday evenings")
    await add_fact(memory, tree, "ana does yoga on weekday mornings")
    for i in range(3):
        await add_fact(memory, tree, f"ana owns {i} red umbrellas")
    question = "What does ana do on weekday evenings?"
    context = ContextOptions(top_k=2)

    plain = ScriptedLLM(["She cooks."])
    await Dialectic(memory, plain, DialecticOptions(context)).answer(
        tree.app_id, tree.user_id, None, question
    )
    assert cello.content not in plain.prompts[0][1].content, "the question's words alone miss it"

    llm = ScriptedLLM(
        [json.dumps({"queries": ["cello orchestra", "music instrument"]}), "She cooks, or plays."]
    )
    options = DialecticOptions(context, query_rewrite=True)
    answer = await Dialectic(memory, llm, options).answer(tree.app_id, tree.user_id, None, question)
    assert answer == "She cooks, or plays."
    rewrite, final = llm.prompts
    assert rewrite[0].content == REWRITE_SYSTEM.format(user="ana", n=3)
    assert rewrite[1].content == f"Question: {question}"
    assert llm.schemas == ["SearchQueries", None], "structured output, then the answer"
    assert cello.content in final[1].content, "found through the rewritten queries"
    assert final[1].content.endswith(f"Question: {question}"), "the model answers the question asked"


async def test_a_rewrite_that_does_not_parse_is_skipped(memory: Memory, database: Database) -> None:
    tree = await make_tree(database, user_name="ana")
    llm = ScriptedLLM(["not json", "still not json", "I don't know."])
    options = DialecticOptions(query_rewrite=True)
    assert (
        await Dialectic(memory, llm, options).answer(tree.app_id, tree.user_id, None, "x?") == "I don't know."
    )
