"""Outages: with the database or the search index out of reach, the API answers 503 with Retry-After,
loses nothing it acknowledged, and works again once the store is back.

The database is real PostgreSQL reached through a TCP relay on loopback that the test cuts and restores:
cutting it drops every open connection and refuses new ones, as a stopped or restarting server does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from sqlalchemy.engine import make_url

from deployments.api import create_api
from models.embedding import SentenceTransformerEmbedder
from pipelines.indexing import IndexSync
from pipelines.memory import Memory
from rapport.settings import DBSettings, Settings
from storage.db import Database
from storage.index import VectorIndex


class Relay:
    """Forwards 127.0.0.1:<port> to a TCP server; ``cut`` drops every connection and stops listening."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, server_writer}

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))
        self._writers -= {client_writer, server_writer}


@pytest.fixture
async def relay(database_url: str) -> AsyncIterator[Relay]:
    url = make_url(database_url)
    relay = Relay(url.host or "127.0.0.1", url.port or 5432)
    await relay.start()
    yield relay
    with contextlib.suppress(Exception):
        await relay.cut()


@pytest.fixture
async def relayed_client(
    relay: Relay,
    database: Database,
    database_url: str,
    embedder: SentenceTransformerEmbedder,
    vector_index: VectorIndex,
) -> AsyncIterator[httpx.AsyncClient]:
    """The API over its own database pool, which reaches PostgreSQL only through the relay (``database``,
    the shared direct pool, is asked for so the tables are emptied after the test)."""
    url = make_url(database_url).set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    database = Database(url, DBSettings(pool_size=4, connect_timeout_s=2, pool_timeout_s=5))
    memory = Memory(database, embedder, vector_index, IndexSync(database, vector_index, embedder))
    app = create_api(Settings.model_validate({}), memory=memory)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://rapport.test") as client:
        yield client
    await database.dispose()


def assert_retry_later(response: httpx.Response, what: str) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1
    assert what in response.json()["detail"]


async def test_a_database_outage_is_503_and_writes_work_once_it_is_back(
    relayed_client: httpx.AsyncClient, relay: Relay
) -> None:
    client = relayed_client
    app = (await client.post("/v1/apps", json={"name": "a"})).json()["id"]
    assert (await client.post(f"/v1/apps/{app}/users", json={"name": "before"})).status_code == 200

    await relay.cut()
    # Pooled connections now fail mid-use; new ones are refused. Both are outages, neither a 500.
    for name in ("during-1", "during-2", "during-3"):
        assert_retry_later(await client.post(f"/v1/apps/{app}/users", json={"name": name}), "database")
    assert_retry_later(await client.post(f"/v1/apps/{app}/users/list"), "database")
    health = await client.get("/health")
    assert health.status_code == 503 and int(health.headers["retry-after"]) >= 1

    await relay.start()
    retried = await client.post(f"/v1/apps/{app}/users", json={"name": "during-1"})
    assert retried.status_code == 200, retried.text
    assert (await client.get("/health")).status_code == 200

    listed = await client.post(f"/v1/apps/{app}/users/list")
    assert sorted(u["name"] for u in listed.json()["items"]) == ["before", "during-1"], (
        "the refused writes left nothing behind; the acknowledged ones are all there"
    )


async def test_after_a_fast_restart_a_retry_succeeds(relayed_client: httpx.AsyncClient, relay: Relay) -> None:
    client = relayed_client
    app = (await client.post("/v1/apps", json={"name": "a"})).json()["id"]
    # Fill the pool with open connections, then restart "the server" before anyone notices.
    lists = [client.post(f"/v1/apps/{app}/users/list") for _ in range(8)]
    assert {r.status_code for r in await asyncio.gather(*lists)} == {200}
    await relay.cut()
    await relay.start()

    statuses = []
    for _ in range(3):
        response = await client.post(f"/v1/apps/{app}/users", json={"name": "after"})
        statuses.append(response.status_code)
        if response.status_code == 200:
            break
        assert_retry_later(response, "database")
    # A connection the restart broke fails its request with a 503; that also drops the rest of the pool,
    # so the retry gets a fresh connection.
    assert statuses[-1] == 200 and len(statuses) <= 2, statuses


class UnreachableIndex(VectorIndex):
    """An index whose storage has gone away: every read fails on I/O, as LanceDB's do then."""

    @classmethod
    async def around(cls, index: VectorIndex) -> UnreachableIndex:
        return cls(index.uri, index._db, index._tables, index.dimension, index.ann)

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[None]:
        async with super()._reading():
            raise OSError("LanceError(IO): connection reset by the object store")
            yield  # pragma: no cover


async def test_an_index_outage_is_503_for_the_routes_that_need_it(
    api_client: Callable[..., httpx.AsyncClient], memory: Memory, vector_index: VectorIndex
) -> None:
    memory.index = await UnreachableIndex.around(vector_index)
    async with api_client() as client:
        app = (await client.post("/v1/apps", json={"name": "a"})).json()["id"]
        user = (await client.post(f"/v1/apps/{app}/users", json={"name": "u"})).json()["id"]
        base = f"/v1/apps/{app}/users/{user}"
        collection = (await client.post(f"{base}/collections", json={"name": "notes"})).json()["id"]

        assert_retry_later(await client.post(f"{base}/search", json={"query": "tea"}), "search index")
        query = await client.post(f"{base}/collections/{collection}/documents/query", json={"query": "tea"})
        assert_retry_later(query, "search index")
        # Routes that do not read the index are unaffected.
        assert (await client.post(f"{base}/collections/list")).status_code == 200
