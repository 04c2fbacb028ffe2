"""The database handle: transactions, and reads without one."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from rapport.settings import DBSettings
from storage import apps
from storage.db import Database


async def test_reads_need_no_transaction_and_leave_the_pool_transactional(
    database_url: str,
    database: Database,  # the shared one: its fixture empties the tables afterwards
) -> None:
    own = Database(database_url, DBSettings(pool_size=1, max_overflow=0))  # one connection, reused
    try:
        async with own.transaction() as db:
            app = await apps.create_app(db, "reading")
        async with own.autocommit() as db:
            status = await db.execute(text("SELECT count(*) FROM apps WHERE id = :id"), {"id": app.id})
            assert status.scalar_one() == 1
            # now() is when the transaction began: the statement's own start when it is one on its own.
            in_transaction = (await db.execute(text("SELECT now() <> statement_timestamp()"))).scalar_one()
            assert in_transaction is False, "each statement on its own: no transaction was begun"
        # The same pooled connection is transactional again: a failed block leaves nothing behind.
        with pytest.raises(RuntimeError):
            async with own.transaction() as db:
                await apps.create_app(db, "rolled back")
                raise RuntimeError("abort")
        async with own.autocommit() as db:
            names = (await db.execute(text("SELECT name FROM apps ORDER BY name"))).scalars().all()
        assert names == ["reading"]
    finally:
        await own.dispose()
