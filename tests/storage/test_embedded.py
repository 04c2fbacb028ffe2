"""The embedded default: a real Postgres under RAPPORT_HOME whose data survives a stop and a start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rapport.settings import Settings
from storage.db import resolve_database_url

WRITE = """
import asyncio
from rapport.settings import Settings
from storage.db import Database
from storage import apps

async def main():
    database = Database.from_settings(Settings())
    async with database.transaction() as db:
        print((await apps.create_app(db, "survivor", {"kept": True})).id)
    await database.dispose()

asyncio.run(main())
"""

READ = """
import asyncio
from rapport.settings import Settings
from storage.db import Database
from storage import apps

async def main():
    database = Database.from_settings(Settings())
    async with database.transaction() as db:
        app = await apps.get_app_by_name(db, "survivor")
        print(app.id, app.metadata_)
    await database.dispose()

asyncio.run(main())
"""


def _run(args: list[str], home: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DB_")}
    env["RAPPORT_HOME"] = str(home)
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _postgres_running(pgdata: Path) -> bool:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_data_survives_stop_and_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    rapport = [sys.executable, "-m", "rapport.cli"]
    assert "revision" in _run([*rapport, "db", "upgrade"], home)

    app_id = _run([sys.executable, "-c", WRITE], home)
    assert not _postgres_running(home / "pgdata"), "the server stops when its last user exits"

    assert _run([sys.executable, "-c", READ], home) == f"{app_id} {{'kept': True}}"


def test_a_configured_server_starts_nothing(tmp_path: Path) -> None:
    settings = Settings(app={"home": tmp_path / "home"}, db={"connection_uri": "postgresql://u@db.example/r"})
    assert resolve_database_url(settings) == "postgresql+psycopg://u@db.example/r"
    assert not (tmp_path / "home").exists()
