"""In-process API clients over real Postgres (the Ray Serve path is tested in test_served_scenario.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from deployments.api import create_api
from pipelines.memory import Memory
from rapport.settings import Settings
from storage.db import Database
from storage.tables import Base

SECRET = "test-secret-5e0b9c2a7f14d83e6a91c4b07d2f58e3a6c19b4d70e2f85a"


def make_settings(**sections: dict[str, Any]) -> Settings:
    """Settings from these values only: no env, no files (model_validate skips the sources)."""
    return Settings.model_validate(sections)


@pytest.fixture
def api_client(memory: Memory) -> Callable[..., httpx.AsyncClient]:
    """Build a client for an API made from the given settings sections, over the test's Memory."""

    def build(**sections: dict[str, Any]) -> httpx.AsyncClient:
        app = create_api(make_settings(**sections), memory=memory)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rapport.test")

    return build


@pytest.fixture
async def client(api_client: Callable[..., httpx.AsyncClient]) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client() as c:
        yield c


async def snapshot(database: Database) -> dict[str, list[str]]:
    """Every row of every table, as text: equal snapshots mean nothing changed."""
    result: dict[str, list[str]] = {}
    async with database.transaction() as db:
        for table in Base.metadata.sorted_tables:
            rows = await db.execute(text(f"SELECT t::text FROM {table.name} t ORDER BY 1"))
            result[table.name] = [row[0] for row in rows]
    return result
