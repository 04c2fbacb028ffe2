"""Answer a question about a user from what Rapport knows about them: gather the context
(pipelines/context.py) and make one LLM call instructed to answer from it only.

With ``query_rewrite`` on, one more call first asks the model for a few search queries beyond the
question's own words (structured output); a rewrite that fails to parse is logged and skipped, since
the question alone still finds most of what it needs.

v3's peer chat asks the same of what one peer holds about another (``PeerView``), at a
``reasoning_level`` (``LEVELS``): how deep the searches go, how much context the answer reads, and
whether the question is rewritten first. With a ``response_format`` the answer is a JSON object of the
caller's schema (``ask_structured``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import BaseModel

from models.llm import ChatMessage, LLMClient, LLMOutputError
from pipelines.context import (
    Context,
    ContextOptions,
    PeerView,
    check_queries,
    gather_context,
    gather_peer_context,
)
from pipelines.dialectic.prompts import SearchQueries, answer_prompt, format_instruction, rewrite_prompt
from pipelines.memory import Memory
from rapport.settings import DialecticSettings
from storage import users

log = logging.getLogger(__name__)

REWRITE_MAX_TOKENS = 200
MAX_RELATED = 10  # rewritten queries searched, in all: each costs an embedding and two searches


@dataclass(frozen=True, slots=True)
class DialecticOptions:
    context: ContextOptions = ContextOptions()
    query_rewrite: bool = False

    @classmethod
    def of(cls, settings: DialecticSettings) -> DialecticOptions:
        return cls(ContextOptions.of(settings), settings.query_rewrite)

    def at(self, level: ReasoningLevel) -> DialecticOptions:
        """These options at a v3 reasoning level: ``low`` is the settings' own; each level above reads
        more facts and messages and more context, and rewrites the question; ``minimal`` reads less."""
        depth, rewrite = LEVELS[level]
        context = self.context
        return replace(
            self,
            context=replace(
                context,
                top_k=max(1, round(context.top_k * depth)),
                max_tokens=max(256, round(context.max_tokens * depth)),
                recent_messages=round(context.recent_messages * min(depth, 2.0)),
            ),
            query_rewrite=self.query_rewrite if rewrite is None else rewrite,
        )


ReasoningLevel = Literal["minimal", "low", "medium", "high", "max"]
# Per level: the factor on the settings' top_k, context tokens and recent messages (recent at most
# doubled), and whether to rewrite the question (None: as the settings say).
LEVELS: dict[ReasoningLevel, tuple[float, bool | None]] = {
    "minimal": (0.5, False),
    "low": (1.0, None),
    "medium": (1.5, True),
    "high": (2.0, True),
    "max": (3.0, True),
}


@dataclass(frozen=True, slots=True)
class Prepared:
    """What the answer call is given: the gathered context and the prompt made of it."""

    context: Context
    prompt: list[ChatMessage]


class Dialectic:
    """Answers questions about a user. Holds no state between questions; one per process is enough."""

    def __init__(self, memory: Memory, llm: LLMClient, options: DialecticOptions | None = None) -> None:
        self.memory = memory
        self.llm = llm
        self.options = options or DialecticOptions()

    async def prepare(
        self,
        app_id: str,
        user_id: str,
        session_id: str | None,
        queries: str | Sequence[str],
        *,
        session_only: bool = False,
    ) -> Prepared:
        """The context for the questions and the answer prompt (``session_only``: from what the session
        holds, see ``gather_context``). Raises NotFoundError for an unknown user or session and
        InvalidError for unusable queries, before any LLM call."""
        questions = check_queries(queries)
        related = await self._rewrite(app_id, user_id, questions) if self.options.query_rewrite else []
        context = await gather_context(
            self.memory,
            app_id=app_id,
            user_id=user_id,
            session_id=session_id,
            queries=questions,
            related=related[:MAX_RELATED],
            options=self.options.context,
            session_only=session_only,
        )
        return Prepared(context, answer_prompt(context, questions))

    async def answer(
        self,
        app_id: str,
        user_id: str,
        session_id: str | None,
        queries: str | Sequence[str],
        *,
        session_only: bool = False,
    ) -> str:
        prepared = await self.prepare(app_id, user_id, session_id, queries, session_only=session_only)
        return await self.complete(prepared)

    async def stream(
        self,
        app_id: str,
        user_id: str,
        session_id: str | None,
        queries: str | Sequence[str],
        *,
        session_only: bool = False,
    ) -> AsyncGenerator[str, None]:
        """The answer as the model writes it. Everything that can fail before the model's first piece
        (unknown ids, bad queries, an LLM that is down or misconfigured) fails on the first ``anext``."""
        prepared = await self.prepare(app_id, user_id, session_id, queries, session_only=session_only)
        async for piece in self.stream_prepared(prepared):
            yield piece

    async def prepare_peer(self, view: PeerView, query: str) -> Prepared:
        """The context and answer prompt for a v3 peer chat: what ``view.observer`` holds about
        ``view.observed``."""
        questions = check_queries(query, field="query")
        name = view.observed.name
        related = await self._rewritten(name, questions) if self.options.query_rewrite else []
        context = await gather_peer_context(
            self.memory, view, questions, related=related[:MAX_RELATED], options=self.options.context
        )
        observer = view.observer.name if view.observer.id != view.observed.id else None
        return Prepared(context, answer_prompt(context, questions, observer=observer))

    async def complete(self, prepared: Prepared) -> str:
        completion = await self.llm.complete(prepared.prompt)
        return completion.text.strip()

    async def stream_prepared(self, prepared: Prepared) -> AsyncGenerator[str, None]:
        async for piece in self.llm.stream(prepared.prompt):
            yield piece

    async def complete_structured(self, prepared: Prepared, output: type[BaseModel]) -> str:
        """The answer as a JSON object of ``output`` (the model is shown its schema, its answer checked
        against it with one repair); LLMOutputError if it still does not fit."""
        prompt = [*prepared.prompt[:-1], format_instruction(prepared.prompt[-1], output)]
        answer, _ = await self.llm.structured(prompt, output)
        return answer.model_dump_json(by_alias=True, exclude_unset=True)

    async def _rewrite(self, app_id: str, user_id: str, questions: list[str]) -> list[str]:
        """Extra search queries for each question, from the model."""
        async with self.memory.database.transaction() as db:
            user = await users.get_user(db, app_id, user_id)  # a 404 before paying for a call
        return await self._rewritten(user.name, questions)

    async def _rewritten(self, name: str, questions: list[str]) -> list[str]:
        extra: list[str] = []
        for question in questions:
            try:
                written, _ = await self.llm.structured(
                    rewrite_prompt(name, question), SearchQueries, max_tokens=REWRITE_MAX_TOKENS
                )
            except LLMOutputError as exc:
                log.warning("query rewrite skipped: %s", exc)
                continue
            extra += [q.strip()[:200] for q in written.queries if q.strip()]
        return extra
