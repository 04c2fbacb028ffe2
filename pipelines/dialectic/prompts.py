"""The dialectic's prompts, each beside the pydantic model of the output it asks for.

The answer prompt shows the context as sections of plain lines: facts newest first, each with its date
(the deriver keeps a contradicting fact beside the older one, so the model must see which is newer),
then summaries and messages as ``Speaker (date): text``. An empty context is said in words, so the
model has no room to guess.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from pydantic import BaseModel, Field

from models.llm import ChatMessage
from pipelines.context import Context, fact_date, fact_time
from pipelines.deriver.derive import date_of, speaker
from storage.query import Record

MAX_EXTRA_QUERIES = 3
NOTHING_KNOWN = "Nothing is known about {user} yet: no facts, no summaries and no messages."


class SearchQueries(BaseModel):
    """Search queries that find what a question needs in a user's memory."""

    queries: list[str] = Field(
        max_length=MAX_EXTRA_QUERIES,
        description="Short search queries, each about one thing the answer needs",
    )


REWRITE_SYSTEM = """\
You help search a memory of one person, {user}: facts about them and their past messages. Given a \
question about {user}, write up to {n} short search queries (a few words each) that would find what \
is needed to answer it: the people, places, things, times and topics it involves, in other words than \
the question's own. Answer with the JSON object only, e.g. {{"queries": ["...", "..."]}}."""


def rewrite_prompt(user_name: str, question: str) -> list[ChatMessage]:
    """Asks for a few more search queries for ``question`` (query rewriting, ``dialectic.query_rewrite``)."""
    system = REWRITE_SYSTEM.format(user=user_name, n=MAX_EXTRA_QUERIES)
    return [ChatMessage("system", system), ChatMessage("user", f"Question: {question}")]


ANSWER_SYSTEM = """\
You answer questions about {user} for an assistant that talks with them, using only the memory \
below: facts about {user} derived from their conversations, summaries, and messages.

Rules:
- Answer from the memory only. Do not guess, and add nothing the memory does not say.
- If the memory holds nothing relevant to the question, say plainly that you don't know, in one \
sentence.
- Facts are listed newest first, each with its date. When two facts disagree, the newer one is what \
holds now; mention the older one only if the change matters to the question.
- Facts marked "inference" are readings between the lines, not things {user} said: say so if you use \
them.
- Facts under "No longer true" held once and were replaced by newer ones: never answer a question about \
now from them; use them only when asked about the past or about a change.
- Be brief: a few sentences at most, no preamble."""


def _fact_line(fact: Record) -> str:
    inferred = (fact.metadata_ or {}).get("kind") == "inference" or getattr(
        fact, "level", None
    ) == "deductive"
    kind = " (inference)" if inferred else ""
    return f"- [{fact_date(fact)}] {fact.content}{kind}"


def render_context(context: Context) -> str:
    """The context as the model reads it."""
    name = context.user.name
    # v1: the user's messages by name, any other sender's "assistant"; v3: every sender by name
    speakers = context.speakers or {context.user.id: name}
    if context.empty:
        return NOTHING_KNOWN.format(user=name)
    parts = []
    if context.facts:
        facts = sorted((row for row, _ in context.facts), key=fact_time, reverse=True)
        parts.append(f"Facts about {name} (newest first):\n" + "\n".join(_fact_line(f) for f in facts))
    for summary in context.summaries:
        kind = "long" if summary.label.endswith("_long") else "short"
        parts.append(f"Summary of the conversation ({kind}):\n{summary.content}")
    if context.messages:
        lines = [_message_line(row, speakers) for row, _ in context.messages]
        parts.append("Past messages that may be relevant:\n" + "\n".join(lines))
    if context.recent:
        lines = [_message_line(row, speakers) for row in context.recent]
        parts.append("The latest messages of this conversation:\n" + "\n".join(lines))
    earlier = [old for rows in context.replaced.values() for old in rows]
    if earlier:  # last, apart: what a dream found contradicted by a newer fact (for a question on a change)
        lines = [
            f"- [{fact_date(old)}] {old.content}" for old in sorted(earlier, key=fact_time, reverse=True)
        ]
        parts.append("No longer true (each replaced by a newer fact above):\n" + "\n".join(lines))
    return "\n\n".join(parts)


def _message_line(message: Record, speakers: dict[str, str]) -> str:
    return f"- {speaker(message, speakers)} ({date_of(message)}): {message.content}"


OBSERVER_NOTE = """
- The memory is what {observer} has learned about {user} in the conversations {observer} took part \
in: answer as {observer} would know it."""


def answer_prompt(
    context: Context, questions: Sequence[str], *, observer: str | None = None
) -> list[ChatMessage]:
    """One answer to ``questions`` from ``context`` only; ``observer``: the peer whose view of the user
    the memory is (v3), when it is not the user's own."""
    name = context.user.name
    asked = (
        f"Question: {questions[0]}"
        if len(questions) == 1
        else "Questions (answer each):\n" + "\n".join(f"- {q}" for q in questions)
    )
    body = f"Memory about {name}:\n\n{render_context(context)}\n\n{asked}"
    system = ANSWER_SYSTEM.format(user=name)
    if observer is not None:
        system += OBSERVER_NOTE.format(user=name, observer=observer)
    return [ChatMessage("system", system), ChatMessage("user", body)]


def format_instruction(question: ChatMessage, output: type[BaseModel]) -> ChatMessage:
    """The question's message, asking for the answer as a JSON object of ``output``'s schema."""
    schema = json.dumps(output.model_json_schema(by_alias=True), separators=(",", ":"))
    ask = (
        "\n\nGive the answer as one JSON object that matches this JSON Schema, and nothing else; what "
        f"the memory does not say, leave empty or null where the schema allows:\n{schema}"
    )
    return ChatMessage(question.role, question.content + ask)
