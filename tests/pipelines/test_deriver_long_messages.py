"""Prompts that fit the model: a message longer than the model's context is cut, a batch never asks for
more than the context holds, and a request the provider refuses is that batch's failure (retried with
less room, then parked with the reason), never an outage that stops every other session's derivation."""

from __future__ import annotations

from sqlalchemy import text

from models.llm import ChatMessage
from models.llm.client import refused
from models.llm.scripted import ScriptedLLM
from pipelines.deriver.prompts import CUT_MARK, cut, estimate_tokens
from pipelines.memory import Memory
from storage.db import Database
from tests.pipelines.test_deriver import (
    SETTINGS,
    counts,
    facts,
    facts_of,
    is_extraction,
    say,
    worker,
)
from tests.storage.factories import make_tree

HEAD = "I adopted a beagle named Bolt last week."
TAIL = "Anyway, my sister Rosa is a nurse in Porto."
LONG = HEAD + " " + "Here is the recipe I pasted, line after line. " * 1080 + TAIL  # ~50,000 characters


def requested(llm: ScriptedLLM, call: int) -> int:
    """What a call asked of the model, counted as the double counts it (4 characters a token)."""
    return sum(len(m.content) for m in llm.prompts[call]) // 4 + llm.max_tokens_asked[call]


def test_a_cut_text_keeps_its_beginning_and_end_and_says_how_much_is_left_out() -> None:
    shown = cut(LONG, 300)
    assert estimate_tokens(shown) <= 300
    assert shown.startswith(HEAD) and shown.endswith(TAIL)
    left_out = int(shown.split("[... ")[1].split(" characters")[0])
    assert CUT_MARK.format(left_out) in shown
    assert len(shown) - len(CUT_MARK.format(left_out)) + left_out == len(LONG), "it says what it left out"
    assert cut("short", 300) == "short"
    assert estimate_tokens("日本語のテキスト" * 100) > len("日本語のテキスト" * 100) / 2, (
        "other scripts count high"
    )


async def test_a_message_longer_than_the_models_context_is_cut_and_derived(
    database: Database, memory_hashed: Memory
) -> None:
    tree = await make_tree(database, user_name="ana")
    await say(database, tree, LONG, "Wow, that is a lot.", "I live in Porto")

    def answer(prompt: list[ChatMessage]) -> str:
        batch = prompt[1].content.split("\nMessages:\n")[1]
        return facts(
            ("ana adopted a beagle named Bolt.", [1]) if HEAD in batch else ("ana lives in Porto.", [2])
        )

    llm = ScriptedLLM(answer, context_tokens=4096)
    w = worker(memory_hashed, llm)
    assert [await w.run_once() for _ in range(3)] == ["done", "done", "idle"]
    assert len(llm.prompts) == 2, "the long message alone (its batch is full), then the rest; each accepted"
    assert all(requested(llm, i) <= 4096 for i in range(2))
    alone, after = (p[1].content for p in llm.prompts)
    assert HEAD in alone and TAIL in alone and "characters not shown" in alone
    assert "I live in Porto" in after.split("\nMessages:\n")[1] and HEAD in after, "shown cut as context"
    assert [f.content for f in await facts_of(database, tree)] == [
        "ana adopted a beagle named Bolt.",
        "ana lives in Porto.",
    ]


async def test_no_prompt_of_a_session_of_long_messages_exceeds_the_context(
    database: Database, memory_hashed: Memory
) -> None:
    """Extractions, short summaries asked beside them (with the messages back to the last summary) and
    the long summary over sixty messages, all within the model's room."""
    tree = await make_tree(database, user_name="ana")
    await say(database, tree, *[f"message {i + 1}: " + "so much to say " * 200 for i in range(60)])
    llm = ScriptedLLM(lambda p: facts() if is_extraction(p) else "a summary.", context_tokens=2048)
    w = worker(memory_hashed, llm)
    while await w.run_once() == "done":
        pass
    state = await counts(database)
    assert (state.done, state.parked, state.pending) == (60, 0, 0)
    assert all(requested(llm, i) <= 2048 for i in range(len(llm.prompts)))
    summaries = [p for p in llm.prompts if not is_extraction(p)]
    assert len(summaries) == 4, "three short summaries and a long one"
    long_summary = next(p for p in summaries if "350 words" in p[0].content)[1].content
    assert "message 60:" in long_summary, "the newest messages are kept"
    shown = [n for n in range(1, 61) if f"message {n}:" in long_summary]
    assert shown == list(range(shown[0], 61)), "when not all fit, the oldest are left out"


async def test_a_refused_request_is_retried_with_less_room_not_an_outage(
    database: Database, memory_hashed: Memory
) -> None:
    """The model's context is smaller than the deriver was told (a server's max_model_len set lower than
    llm.context_tokens): the first attempt is refused as too long, a failed attempt is counted, and the
    retry's smaller prompt goes through."""
    tree = await make_tree(database, user_name="ana")
    await say(database, tree, LONG)
    actual = ScriptedLLM(
        lambda p: facts(("ana adopted a beagle named Bolt.", [1])), context_tokens=4096, refuses_past=2048
    )
    w = worker(memory_hashed, actual)
    results = []
    for _ in range(SETTINGS.max_attempts):
        results.append(await w.run_once())
        if results[-1] == "done":
            break
        async with database.transaction() as db:
            await db.execute(text("UPDATE derivation_sessions SET not_before = now()"))  # skip the backoff
    assert "outage" not in results and results[0] == "failed" and results[-1] == "done", results
    assert [f.content for f in await facts_of(database, tree)] == ["ana adopted a beagle named Bolt."]


async def test_a_request_refused_every_time_is_parked_with_the_reason_and_others_go_on(
    database: Database, memory_hashed: Memory
) -> None:
    """A provider's 4xx on one batch (here: every time) is that batch's failure: the other sessions'
    messages are derived meanwhile, and the batch is parked with the provider's words once its attempts
    are spent. Before, any such 4xx paused every worker as if the LLM were misconfigured, for good."""
    tree = await make_tree(database, user_name="ana")
    await say(database, tree, "POISON: something this provider will not take")
    other = await make_tree(database, app_name="other", user_name="bo")
    await say(database, other, "I live in Lisbon")

    def answer(prompt: list[ChatMessage]) -> str:
        if "POISON" in prompt[1].content:
            raise refused(422, "unsupported input", "the test server")
        return facts(("bo lives in Lisbon.", [1]))

    w = worker(memory_hashed, ScriptedLLM(answer))
    results = []
    for _ in range(SETTINGS.max_attempts + 2):
        results.append(await w.run_once())
        async with database.transaction() as db:
            await db.execute(text("UPDATE derivation_sessions SET not_before = now()"))  # skip the backoff
    assert "outage" not in results and results.count("failed") == SETTINGS.max_attempts, results
    assert [f.content for f in await facts_of(database, other)] == ["bo lives in Lisbon."]
    state = await counts(database)
    assert (state.done, state.parked, state.pending) == (1, 1, 0)
    async with database.transaction() as db:
        reason = (
            await db.execute(text("SELECT last_error FROM derivation_queue WHERE status = 'parked'"))
        ).scalar()
    assert "LLMRequestError" in reason and "HTTP 422: unsupported input" in reason


async def test_a_repair_that_would_overflow_the_context_is_asked_without_the_broken_answer(
    database: Database, memory_hashed: Memory
) -> None:
    """A prompt fitted to the context has room for one answer: the repair turn re-asks with what was
    wrong instead of echoing a long broken answer the context cannot hold beside it."""
    tree = await make_tree(database, user_name="ana")
    await say(database, tree, LONG)
    broken = '{"facts": [{"fact": "' + "ana " * 600  # cut off at the token limit: invalid JSON
    llm = ScriptedLLM([broken, facts(("ana adopted a beagle named Bolt.", [1]))], context_tokens=4096)
    assert await worker(memory_hashed, llm).run_once() == "done"
    first, repair = llm.prompts
    assert len(repair) == len(first) and broken not in repair[-1].content, "not echoed"
    assert "A first answer was not valid" in repair[-1].content
    assert requested(llm, 1) <= 4096
    assert [f.content for f in await facts_of(database, tree)] == ["ana adopted a beagle named Bolt."]
