"""One engine and one session factory per process, and the unit of work every write goes through."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from rapport.settings import DBSettings, Settings, mask_url_password

log = logging.getLogger(__name__)


def resolve_database_url(settings: Settings) -> str:
    """The configured server, or the embedded one (started now) when none is configured."""
    if settings.db.connection_uri:
        return settings.db.connection_uri
    from storage.embedded import start_embedded_postgres

    return start_embedded_postgres(settings.home)


def make_engine(url: str, db: DBSettings) -> AsyncEngine:
    # Without a connect timeout, a server that drops packets holds every request for minutes (the OS's
    # TCP timeout) instead of letting the API answer 503 at once.
    connect_args: dict[str, object] = {"connect_timeout": db.connect_timeout_s}
    if db.statement_timeout_ms:
        connect_args["options"] = f"-c statement_timeout={db.statement_timeout_ms}"
    return create_async_engine(
        url,
        pool_size=db.pool_size,
        max_overflow=db.max_overflow,
        pool_timeout=db.pool_timeout_s,
        pool_pre_ping=False,  # connections are recycled on error; a ping per checkout costs a round trip
        pool_recycle=1800,
        echo=db.echo,
        connect_args=connect_args,
    )


class Database:
    """The engine (and its connection pool); create one per process and share it."""

    def __init__(self, url: str, db: DBSettings) -> None:
        self.url = url
        self.engine = make_engine(url, db)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(resolve_database_url(settings), settings.db)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A connection in one transaction: committed if the block succeeds, rolled back if it raises."""
        async with self.engine.begin() as connection:
            yield connection

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection whose statements each stand alone (autocommit): no BEGIN and COMMIT round trips.
        For reads (under READ COMMITTED each statement of a transaction sees its own snapshot anyway, so
        a block of reads sees nothing different) and for writes each complete in one statement; a block
        whose writes must stand or fall together, or that locks, takes ``transaction``."""
        async with self.engine.connect() as connection:
            yield await connection.execution_options(isolation_level="AUTOCOMMIT")

    async def ping(self) -> None:
        """Raise if the database can't answer a trivial query."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()

    def __repr__(self) -> str:
        return f"Database({mask_url_password(self.url)})"


async def open_database(settings: Settings) -> Database:
    """Connect to the configured (or embedded) database, migrating it first when db.migrate_on_start."""
    import asyncio

    from storage import migrate

    url = await asyncio.to_thread(resolve_database_url, settings)
    if settings.db.migrate_on_start:
        await asyncio.to_thread(migrate.upgrade, url)
    return Database(url, settings.db)
