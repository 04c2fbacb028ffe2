"""Small builders for test data."""

from __future__ import annotations

from dataclasses import dataclass

from storage import apps, sessions, users
from storage.db import Database


@dataclass
class Tree:
    app_id: str
    user_id: str
    session_id: str


async def make_tree(database: Database, app_name: str = "app", user_name: str = "user") -> Tree:
    """An app with one user who has one session."""
    async with database.transaction() as db:
        app = await apps.create_app(db, app_name)
        user = await users.create_user(db, app.id, user_name)
        session = await sessions.create_session(db, app.id, user.id)
    return Tree(app.id, user.id, session.id)
