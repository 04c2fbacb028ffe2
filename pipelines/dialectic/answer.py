"""Answer a question about a user from what Rapport knows about them: gather the context
(pipelines/context.py) and make one LLM call instructed to answer from it only.

With ``query_rewrite`` on, one more call first asks the model for a few search queries beyond the
question's own words (structured output); a rewrite that fails to parse is logged and skipped, since
the question alone still finds most of what it needs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from models.llm import ChatMessage, LLMClient, LLMOutputError
from pipelines.context import Context, ContextOptions, check_queries, gather_context
from pipelines.dialectic.prompts import SearchQueries, answer_prompt, rewrite_prompt
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
        completion = await self.llm.complete(prepared.prompt)
        return completion.text.strip()

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
        async for piece in self.llm.stream(prepared.prompt):
            yield piece

    async def _rewrite(self, app_id: str, user_id: str, questions: list[str]) -> list[str]:
        """Extra search queries for each question, from the model."""
        async with self.memory.database.transaction() as db:
            user = await users.get_user(db, app_id, user_id)  # a 404 before paying for a call
        extra: list[str] = []
        for question in questions:
            try:
                written, _ = await self.llm.structured(
                    rewrite_prompt(user.name, question), SearchQueries, max_tokens=REWRITE_MAX_TOKENS
                )
            except LLMOutputError as exc:
                log.warning("query rewrite skipped: %s", exc)
                continue
            extra += [q.strip()[:200] for q in written.queries if q.strip()]
        return extra
