"""The deriver's prompts, each beside the pydantic model of the output it asks for: the schema used for
constrained decoding and the words of the prompt cannot drift apart.

Messages are shown under a ``Date:`` line wherever the date changes, the user's numbered by their place in
the batch (``[3] Ana: ...``), the other speaker's not (``Sam: ...``). The model cites those numbers, never
ids, so it cannot invent a source nor cite what someone else said; the numbers are mapped back to message
ids in code.

Every token counts on a CPU (a 1.5B model there reads about 60 tokens a second and writes about 12): a
date is shown once for the messages that share it, not on every line; a stated fact is written as
``{"fact": ..., "sources": [3]}``, without the kind and confidence that only an inference needs; and a
summary may take at most twice its words in tokens. Numbering only the user's messages also keeps the
1.5B model's citations right: with every message numbered and the compact answer, it listed runs of
numbers (``[4, 5, 6, 7, 8, 9]``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from models.llm import ChatMessage, LLMRequestError
from models.llm.client import FRAMING_TOKENS, estimate_tokens

MAX_FACTS = 20
SummaryType = Literal["SHORT", "LONG"]
SUMMARY_WORDS: dict[SummaryType, int] = {"SHORT": 120, "LONG": 350}
FACT_MAX_CHARS = 240
# A fact cites at most three messages. With six allowed, the 1.5B model often listed a run of the user's
# messages ([2, 4, 6, 8, 10, 12]) for a trait it read from all of them: vague provenance, and costly, the
# tokenizer writing each digit, comma and space as a token of its own (a run of six: 20 tokens, three
# times the fact's words).
MAX_SOURCES = 3


def summary_tokens(kind: SummaryType) -> int:
    """The token limit of a summary: twice its words (English prose runs about 1.3 tokens a word). A small
    model can write on and on; on a CPU each token past the summary asked for costs a tenth of a second."""
    return 2 * SUMMARY_WORDS[kind]


class DerivedFact(BaseModel):
    """One fact or inference as the deriver stores it."""

    text: str = Field(min_length=3, max_length=FACT_MAX_CHARS)
    kind: Literal["fact", "inference"]
    confidence: float = Field(ge=0, le=1)
    sources: list[int] = Field(min_length=1, max_length=MAX_SOURCES)


def _first_sources(value: Any) -> Any:
    """A longer list keeps its first MAX_SOURCES numbers: constrained decoding never writes one, but a
    provider that treats the schema as a hint (Anthropic's tool use) may, and a fact is not lost for it."""
    return value[:MAX_SOURCES] if isinstance(value, list) else value


# One to MAX_SOURCES numbers in the schema; a longer list in an answer is cut, not refused.
Sources = Annotated[
    list[int],
    BeforeValidator(_first_sources),
    Field(
        min_length=1, max_length=MAX_SOURCES, description="The numbers of the user's messages it comes from"
    ),
]


class StatedFact(BaseModel):
    """What the user said outright, in the model's answer."""

    model_config = ConfigDict(extra="forbid")

    fact: str = Field(
        min_length=3, max_length=FACT_MAX_CHARS, description="One self-contained statement about the user"
    )
    sources: Sources

    def derived(self) -> DerivedFact:
        return DerivedFact(text=self.fact, kind="fact", confidence=1.0, sources=self.sources)


class Inference(BaseModel):
    """A theory-of-mind reading of what the user said, in the model's answer."""

    model_config = ConfigDict(extra="forbid")

    inference: str = Field(
        min_length=3, max_length=FACT_MAX_CHARS, description="What the user likely feels, values or intends"
    )
    confidence: float = Field(ge=0, le=1, description="How sure, below 1.0")
    sources: Sources

    def derived(self) -> DerivedFact:
        return DerivedFact(
            text=self.inference, kind="inference", confidence=self.confidence, sources=self.sources
        )


class Derivation(BaseModel):
    """What one batch of messages says about the user."""

    facts: list[StatedFact | Inference] = Field(max_length=MAX_FACTS)

    def derived(self) -> list[DerivedFact]:
        return [item.derived() for item in self.facts]


# Tokens one item can take in the answer: its text (at most FACT_MAX_CHARS, about 4 characters a token),
# the other fields and the JSON around them (an inference's are the longer). The answer's token limit
# grows with the facts allowed, so that constrained decoding always has room to close the JSON.
TOKENS_PER_FACT = FACT_MAX_CHARS // 4 + 40


def answer_tokens(limit: int) -> int:
    """Room for an answer of ``limit`` facts of the longest kind, and the object around them."""
    return limit * TOKENS_PER_FACT + 20


def facts_limit(user_messages: int) -> int:
    """How many facts a batch may yield: two, plus one for every two of the user's messages, at most
    MAX_FACTS. The reference observations of LoCoMo hold about one for every three messages; without a
    limit, a small model can list fact after fact until it runs out of tokens, and the cut-off answer is
    wasted (on a CPU, a minute of generation)."""
    return min(MAX_FACTS, 2 + user_messages // 2)


@functools.cache
def derivation_limited(limit: int) -> type[Derivation]:
    """Derivation with at most ``limit`` facts in its schema, so the grammar itself stops the list."""
    return create_model(
        f"Derivation{limit}",
        __base__=Derivation,
        facts=(list[StatedFact | Inference], Field(max_length=limit)),
    )


@dataclass(frozen=True, slots=True)
class Line:
    """A message as the model sees it."""

    number: int | None  # None for context the model may not cite
    speaker: str
    date: str
    content: str

    def render(self) -> str:
        head = f"[{self.number}] " if self.number is not None else ""
        return f"{head}{self.speaker}: {self.content}"


def render(lines: Sequence[Line]) -> str:
    """Messages one per line, each date once: a ``Date:`` line before the first message of each date
    (a date on every line costs a dozen prompt tokens a message, digits being a token each)."""
    out: list[str] = []
    date = None
    for line in lines:
        if line.date != date:
            out.append(f"Date: {line.date}")
            date = line.date
        out.append(line.render())
    return "\n".join(out)


FACTS_SYSTEM = """\
You keep a memory of one person, the user, from their conversations. You are shown part of a \
conversation and asked either what it reveals about the user, as JSON, or for a summary of it, as prose.

What it reveals: facts the user states about themselves (where they live, work, family, friends, pets, \
health, possessions, plans, preferences, habits, opinions, experiences) and careful theory-of-mind \
inferences (what they likely feel, value, intend or struggle with). Rules:
- Only the user. What the other speaker says is context; facts about other people count only as the \
user's relationship to them ("Ana's sister Rosa is a nurse").
- Each fact is one short, self-contained sentence that names the user as the conversation names them \
(never "the user", "I" or "he/she"), so it makes sense on its own a year later.
- Make dates absolute: turn "yesterday", "last week", "next month" into dates using the date shown above \
the message.
- Two kinds of item: {"fact": ...} for what the user said outright; {"inference": ..., "confidence": ...} \
for your reading between the lines, with a confidence below 1.0.
- sources: the numbers of the user's messages it comes from. Only the user's messages are numbered.
- Nothing from small talk, greetings, jokes or questions that reveal nothing. No duplicates. If the \
messages reveal nothing about the user, answer {"facts": []}.
- Answer with the JSON object only.

Example. Messages:
Date: 2023-05-08
[1] Ana: Yesterday I finally adopted a dog! His name is Bolt.
Sam: Congrats! What breed?
[3] Ana: A beagle. My landlord in Porto was fine with it, luckily, I was so nervous.
Sam: haha nice. I ran the Lisbon marathon last week.
Answer:
{"facts": [
 {"fact": "Ana adopted a beagle named Bolt on 2023-05-07.", "sources": [1, 3]},
 {"fact": "Ana rents her home in Porto.", "sources": [3]},
 {"inference": "Ana was anxious about whether her landlord would allow a dog.", "confidence": 0.7, "sources": [3]}
]}

A summary is one paragraph of plain prose in the past tense that keeps the names, absolute dates, \
places, decisions, plans, feelings and open questions of both speakers and drops greetings and small \
talk."""

PEOPLE_SYSTEM = """\
You keep a memory of several people from their conversations. You are shown part of a conversation and \
asked either what it reveals about those people, as JSON, or for a summary of it, as prose.

What it reveals: facts each person states about themselves (where they live, work, family, friends, pets, \
health, possessions, plans, preferences, habits, opinions, experiences) and careful theory-of-mind \
inferences (what they likely feel, value, intend or struggle with). Rules:
- Only the people you are asked about, each from their own messages, which are numbered; messages \
without a number are context. Facts about anyone else count only as a person's relationship to them.
- Each item is about one person: one short, self-contained sentence that names them as the conversation \
names them (never "I", "you" or "he/she"), so it makes sense on its own a year later.
- Make dates absolute: turn "yesterday", "last week", "next month" into dates using the date shown above \
the message.
- Two kinds of item: {"fact": ...} for what the person said outright; {"inference": ..., "confidence": \
...} for your reading between the lines, with a confidence below 1.0.
- sources: the numbers of that person's own messages it comes from, never another person's.
- Nothing from small talk, greetings, jokes or questions that reveal nothing. No duplicates. If the \
messages reveal nothing about them, answer {"facts": []}.
- Answer with the JSON object only.

Example. You are asked about Ana and Sam. Messages:
Date: 2023-05-08
[1] Ana: Yesterday I finally adopted a dog! His name is Bolt.
[2] Sam: Congrats! What breed? I ran the Lisbon marathon last week, my legs still hurt.
[3] Ana: A beagle. My landlord in Porto was fine with it, luckily, I was so nervous.
Answer:
{"facts": [
 {"fact": "Ana adopted a beagle named Bolt on 2023-05-07.", "sources": [1, 3]},
 {"fact": "Sam ran the Lisbon marathon in the week before 2023-05-08.", "sources": [2]},
 {"fact": "Ana rents her home in Porto.", "sources": [3]},
 {"inference": "Ana was anxious about whether her landlord would allow a dog.", "confidence": 0.7, "sources": [3]}
]}

A summary is one paragraph of plain prose in the past tense that keeps the names, absolute dates, \
places, decisions, plans, feelings and open questions of every speaker and drops greetings and small \
talk."""

FACTS_ASK = "Answer with the JSON object."


def names(people: Sequence[str]) -> str:
    """``A``, ``A and B``, ``A, B and C``."""
    return people[0] if len(people) == 1 else f"{', '.join(people[:-1])} and {people[-1]}"


def facts_system(people: Sequence[str]) -> str:
    """The extraction's system prompt: of one person, the user (a v1 user, or one observed peer), or of
    several (the observed peers of a v3 session, read in one pass)."""
    return FACTS_SYSTEM if len(people) == 1 else PEOPLE_SYSTEM


def _conversation(
    people: Sequence[str], summary: str | None, history: list[Line], batch: list[Line]
) -> list[str]:
    """What the model is shown of a session: the part an extraction call and a summary of the same batch
    share word for word, so that a server with a prompt cache reads it once for both."""
    parts = [f"The user is {people[0]}." if len(people) == 1 else f"You are asked about {names(people)}."]
    if summary:
        parts.append(f"Summary of the conversation so far:\n{summary}")
    if history:
        parts.append("Earlier messages (context only, not numbered):\n" + render(history))
    parts.append("Messages:\n" + render(batch))
    return parts


def facts_prompt(
    people: Sequence[str], summary: str | None, history: list[Line], batch: list[Line], limit: int = MAX_FACTS
) -> list[ChatMessage]:
    """The extraction prompt: what is known so far as context, the numbered batch to read, and how many
    facts at most (``limit``; the output schema holds the model to it). ``people``: whom it is about, as
    the conversation names them."""
    parts = _conversation(people, summary, history, batch)
    if len(people) == 1:
        ask = f"What do the numbered messages reveal about {names(people)}? At most {limit} facts, the most telling first."
    else:  # a small model asked about several at once lists a few and stops: ask for each in turn
        ask = (
            f"What do the numbered messages reveal about each of {names(people)}? Go through them one "
            f"after the other and give each person's facts, the most telling first: at most {limit} in all."
        )
    parts.append(f"{ask} {FACTS_ASK}")
    return [ChatMessage("system", facts_system(people)), ChatMessage("user", "\n\n".join(parts))]


def summary_beside_facts_prompt(
    kind: SummaryType, people: Sequence[str], summary: str | None, history: list[Line], batch: list[Line]
) -> list[ChatMessage]:
    """A summary asked of the same conversation as a batch's extraction (``facts_prompt`` with the same
    arguments), differing only in its last lines: after the extraction call, a llama.cpp or vLLM server
    finds all but those lines in its prompt cache, so the messages are read once, not twice. It builds on
    the summary shown (the previous one of its kind) and covers every message shown."""
    parts = _conversation(people, summary, history, batch)
    words = SUMMARY_WORDS[kind]
    parts.append(
        "Now do not list facts: summarise the conversation instead, "
        + ("the summary so far and every message after it, " if summary else "every message above, ")
        + f"in one paragraph of {words * 2 // 3} to {words} words. Answer with the summary only."
    )
    return [ChatMessage("system", facts_system(people)), ChatMessage("user", "\n\n".join(parts))]


def asks_for_facts(prompt: Sequence[ChatMessage]) -> bool:
    """Whether a prompt of the deriver's is an extraction (else it asks for a summary)."""
    return prompt[0].content in (FACTS_SYSTEM, PEOPLE_SYSTEM) and prompt[-1].content.endswith(FACTS_ASK)


SUMMARY_SYSTEM = """\
You write running summaries of a conversation between {user} and an assistant or another person. \
Keep names, dates (absolute), places, decisions, plans, feelings and open questions; drop greetings and \
small talk. Write plain prose in the past tense, at most {words} words, and nothing else."""


def summary_prompt(
    kind: SummaryType, user_name: str, previous: str | None, lines: list[Line]
) -> list[ChatMessage]:
    """A summary built on the previous one of the same kind and the messages after it."""
    parts = []
    if previous:
        parts.append(f"The summary so far:\n{previous}")
    parts.append(("Messages since then:\n" if previous else "Messages:\n") + render(lines))
    parts.append("Write the updated summary of the whole conversation." if previous else "Write the summary.")
    system = SUMMARY_SYSTEM.format(user=user_name, words=SUMMARY_WORDS[kind])
    return [ChatMessage("system", system), ChatMessage("user", "\n\n".join(parts))]


# --- fitting a prompt to the model's context -----------------------------------------------------------
# A message may hold 50,000 characters while a CPU model's slot holds 4,096 tokens: every prompt is fitted
# to the room the model has, so that no message can make a request the model refuses every time. The
# messages to derive come first, then the summary so far, then the earlier messages; a message too long
# for its share keeps its beginning and its end (two thirds, one third) with how much was left out.

CUT_MARK = " [... {} characters not shown ...] "
LINE_MIN_TOKENS = 24  # a message cut shorter than this would show little more than the mark


def cut(text: str, tokens: int) -> str:
    """``text`` within ``tokens``: its beginning and its end around a mark that says how many characters
    were left out."""
    if estimate_tokens(text) <= tokens:
        return text

    def kept(n: int) -> str:
        head = (2 * n) // 3
        return text[:head] + CUT_MARK.format(len(text) - n) + text[len(text) - (n - head) :]

    low, high = 0, len(text)  # the most characters kept that still fit
    while low < high:
        middle = (low + high + 1) // 2
        if estimate_tokens(kept(middle)) <= tokens:
            low = middle
        else:
            high = middle - 1
    return kept(low)


def lines_tokens(lines: Sequence[Line]) -> int:
    return estimate_tokens(render(lines)) if lines else 0


def fit_lines(lines: Sequence[Line], tokens: int) -> list[Line]:
    """``lines`` within ``tokens``: the longest messages are cut first, each to the same length, so
    that no message is cut while a longer one stays whole. Raises LLMRequestError when even a few
    words of each do not fit."""
    if not lines or lines_tokens(lines) <= tokens:
        return list(lines)
    framing = lines_tokens([replace(line, content="") for line in lines])
    room = tokens - framing
    if room < LINE_MIN_TOKENS * len(lines):
        raise LLMRequestError(f"{len(lines)} messages do not fit in {tokens} tokens of prompt", too_long=True)
    costs = [estimate_tokens(line.content) for line in lines]
    # The largest length at which every message longer than it is cut and the total fits.
    left, longer, cap = room, len(costs), room
    for cost in sorted(costs):
        if cost * longer > left:
            cap = left // longer
            break
        left -= cost
        longer -= 1
    fitted = [
        replace(line, content=cut(line.content, cap)) if c > cap else line
        for line, c in zip(lines, costs, strict=True)
    ]
    # The estimate of the whole may round differently from the sum of its parts: trim once more if so.
    excess = lines_tokens(fitted) - tokens
    if excess > 0:
        return fit_lines(lines, tokens - excess)
    return fitted


@dataclass(frozen=True, slots=True)
class Shown:
    """What a derivation prompt shows of a session, fitted to the model's room."""

    summary: str | None
    history: list[Line]
    batch: list[Line]


def fit_conversation(
    system: str,
    summary: str | None,
    history: Sequence[Line],
    batch: Sequence[Line],
    tokens: int | None,
    *,
    attempts: int = 0,
    summary_share: float = 1.0,
) -> Shown:
    """The batch, the summary so far and the earlier messages within ``tokens`` of prompt (None: as they
    are). The batch comes first; the summary gets what is left, cut if need be; the earlier messages
    get the rest, the oldest left out first when not even a few words of each fit. After ``attempts``
    failed attempts the messages get half as much room for each (a server that refused the prompt may
    count its tokens more strictly than the estimate here). ``summary_share``: the most of what is left
    after the batch that the summary may take (a new summary must see the messages it adds)."""
    if tokens is None:
        return Shown(summary, list(history), list(batch))
    left = (tokens - estimate_tokens(system) - FRAMING_TOKENS) >> min(attempts, 16)
    shown_batch = fit_lines(batch, left)
    left -= lines_tokens(shown_batch)
    if summary is not None:
        share = max(int(left * summary_share), left - lines_tokens(history))
        summary = cut(summary, share) if share >= LINE_MIN_TOKENS else None
        left -= estimate_tokens(summary) if summary else 0
    kept = list(history)
    while kept and left < LINE_MIN_TOKENS * len(kept) + lines_tokens([replace(h, content="") for h in kept]):
        kept.pop(0)
    return Shown(summary, fit_lines(kept, left) if kept else [], shown_batch)
