"""Parameters shared by the routers, declared once (names and descriptions as in the contract)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request

from pipelines.dialectic import Dialectic, DialecticOptions
from pipelines.memory import Memory


async def get_memory(request: Request) -> Memory:
    return request.app.state.memory  # type: ignore[no-any-return]


async def get_dialectic(request: Request) -> Dialectic:
    """The dialectic over the app's memory and its one LLM client (built on the first chat, not here)."""
    state = request.app.state
    return Dialectic(state.memory, state.dialectic_llm, DialecticOptions.of(state.settings.dialectic))


Mem = Annotated[Memory, Depends(get_memory)]
Dial = Annotated[Dialectic, Depends(get_dialectic)]

AppId = Annotated[str, Path(description="ID of the app")]
UserId = Annotated[str, Path(description="ID of the user")]
SessionId = Annotated[str, Path(description="ID of the session")]
CollectionId = Annotated[str, Path(description="ID of the collection")]

PageNumber = Annotated[int, Query(ge=1, description="Page number")]
PageSize = Annotated[int, Query(ge=1, le=100, description="Page size")]
Reverse = Annotated[bool | None, Query(description="Whether to reverse the order of results")]
