"""The `rapport` command against real services: reindex and its errors."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rapport.settings import DBSettings
from storage import apps, collections, documents, messages, sessions, users
from storage.db import Database
from storage.index import VectorIndex
from tests.db import scratch_database
from tests.storage.factories import make_tree


def _rapport(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rapport.cli", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_reindex_rebuilds_from_postgres(tmp_path: Path) -> None:
    with scratch_database("rapport_cli") as url:
        env = {
            "DB_CONNECTION_URI": url,
            "VECTOR_STORE_URI": str(tmp_path / "lance"),
            "RAPPORT_HOME": str(tmp_path),
        }
        assert _rapport("db", "upgrade", env=env).returncode == 0

        async def seed() -> str:
            database = Database(url, DBSettings())
            t = await make_tree(database)
            async with database.transaction() as db:
                cid = (await collections.create_collection(db, t.app_id, t.user_id, "c")).id
                await documents.create_document(db, t.app_id, t.user_id, cid, content="a fact")
                for word in ("one", "two"):
                    await messages.create_message(
                        db, t.app_id, t.user_id, t.session_id, content=word, is_user=True
                    )
            await database.dispose()
            return t.app_id

        app_id = asyncio.run(seed())
        done = _rapport("reindex", env=env)
        assert done.returncode == 0, done.stderr
        assert "re-indexed 1 documents, 2 messages" in done.stdout
        assert "re-indexed 1 documents, 2 messages" in _rapport("reindex", "--app", app_id, env=env).stdout

        # After a model change the old index is refused, with the way out; --recreate takes it.
        asyncio.run(VectorIndex.open(env["VECTOR_STORE_URI"], 768, recreate=True))
        stale = _rapport("reindex", env=env)
        assert stale.returncode == 1 and "--recreate" in stale.stderr
        rebuilt = _rapport("reindex", "--recreate", env=env)
        assert rebuilt.returncode == 0 and "re-indexed 1 documents, 2 messages" in rebuilt.stdout, (
            rebuilt.stderr
        )

        status = _rapport("index", "status", env=env)
        assert status.returncode == 0 and "pending: 0" in status.stdout and "parked: 0" in status.stdout
        assert "0 parked entries will be retried" in _rapport("index", "unpark", env=env).stdout

        unknown = _rapport("reindex", "--app", "no-such-app", env=env)
        assert unknown.returncode == 1 and "not found" in unknown.stderr
        both = _rapport("reindex", "--app", app_id, "--recreate", env=env)
        assert both.returncode == 2


def test_deriver_status_and_retry(tmp_path: Path) -> None:
    from storage import derivation

    with scratch_database("rapport_cli") as url:
        env = {"DB_CONNECTION_URI": url, "RAPPORT_HOME": str(tmp_path)}
        assert _rapport("db", "upgrade", env=env).returncode == 0

        async def seed_and_park() -> None:
            database = Database(url, DBSettings())
            t = await make_tree(database)
            async with database.transaction() as db:
                await messages.create_message(
                    db, t.app_id, t.user_id, t.session_id, content="hi", is_user=True
                )
                await messages.create_message(
                    db, t.app_id, t.user_id, t.session_id, content="yo", is_user=False
                )
            async with database.transaction() as db:
                held = await derivation.claim(db, lease_s=60, wait_s=0, max_tokens=10)  # the first alone
                assert held is not None
                await derivation.fail(db, held, "LLMOutputError: no JSON", raw_output="{", max_attempts=1)
            await database.dispose()

        asyncio.run(seed_and_park())
        status = _rapport("deriver", "status", env=env)
        assert status.returncode == 0, status.stderr
        assert "pending: 1" in status.stdout and "parked: 1" in status.stdout
        assert "1 parked: LLMOutputError: no JSON" in status.stdout
        revived = _rapport("deriver", "retry", env=env)
        assert revived.returncode == 0 and "1 parked messages will be derived again" in revived.stdout
        assert "pending: 2" in _rapport("deriver", "status", env=env).stdout
        assert "parked: 0" in _rapport("deriver", "status", env=env).stdout


def test_deriver_run_names_the_setting_when_the_model_is_missing(tmp_path: Path) -> None:
    with scratch_database("rapport_cli") as url:
        env = {
            "DB_CONNECTION_URI": url,
            "RAPPORT_HOME": str(tmp_path),
            "VECTOR_STORE_URI": str(tmp_path / "lance"),
            "LLM_LOCAL_MODEL": str(tmp_path / "absent.gguf"),
        }
        done = _rapport("deriver", "run", env=env)
        assert done.returncode == 1
        assert "local_model" in done.stderr


@pytest.mark.slow
def test_derive_runs_a_job_on_a_local_ray_and_jobs_reports_it(tmp_path: Path) -> None:
    """`rapport derive` end to end: its own local Ray, the default embedding model, an OpenAI-compatible
    server standing in for the LLM; then `rapport jobs` and the CLI's refusals."""
    import json

    from tests.models.fake_llm_servers import openai_error, openai_reply, serve_fake

    with scratch_database("rapport_cli") as url, serve_fake("/v1/chat/completions") as llm:
        env = {
            "DB_CONNECTION_URI": url,
            "RAPPORT_HOME": str(tmp_path),
            "VECTOR_STORE_URI": str(tmp_path / "lance"),
            "LLM_PROVIDER": "openai",
            "LLM_BASE_URL": f"{llm.url}/v1",
            "LLM_MODEL": "stand-in",
            "LLM_API_KEY": "k",
            "RAY_ADDRESS": "",
        }
        assert _rapport("db", "upgrade", env=env).returncode == 0

        async def seed() -> None:
            database = Database(url, DBSettings())
            async with database.transaction() as db:
                app = await apps.create_app(db, "cli-app")
                for u in range(4):
                    user = await users.create_user(db, app.id, f"user{u}")
                    session = await sessions.create_session(db, app.id, user.id)
                    await messages.create_messages(
                        db, app.id, user.id, session.id, [{"content": "I like green tea", "is_user": True}]
                    )
            await database.dispose()

        asyncio.run(seed())
        fact = {"fact": "likes green tea", "sources": [1]}
        llm.script(*(openai_reply(json.dumps({"facts": [fact]})) for _ in range(4)))

        done = _rapport("derive", "--app", "cli-app", "--all", "--concurrency", "2", env=env)
        assert done.returncode == 0, done.stderr
        assert "4 users done, 0 failed, 0 not done, 4 facts" in done.stdout
        assert len(llm.requests) == 4
        job_id = done.stdout.split()[1]

        listed = _rapport("jobs", "list", env=env)
        assert job_id in listed.stdout and "4/4 done" in listed.stdout and "openai/stand-in" in listed.stdout
        status = _rapport("jobs", "status", job_id, env=env)
        assert "job " + job_id + ": done" in status.stdout and "done: 4" in status.stdout
        again = _rapport("derive", "--resume", job_id, env=env)
        assert again.returncode == 1 and "has ended" in again.stderr
        assert _rapport("jobs", "cancel", job_id, env=env).returncode == 1
        assert _rapport("jobs", "status", "nope", env=env).returncode == 1

        # A wrong key stops the job at once with the provider's answer, instead of waiting forever.
        llm.script(*(openai_error(401, "invalid api key") for _ in range(8)))
        refused_key = _rapport("derive", "--app", "cli-app", "--all", env=env)
        assert refused_key.returncode == 1, refused_key.stdout + refused_key.stderr
        assert "refused the API key (HTTP 401" in refused_key.stderr, refused_key.stderr
        stopped_id = refused_key.stderr.split("rapport derive --resume ")[1].split()[0]
        stopped = _rapport("jobs", "status", stopped_id, env=env)
        assert f"job {stopped_id}: stopped" in stopped.stdout and "pending: 4" in stopped.stdout, (
            stopped.stdout
        )

        vague = _rapport("derive", "--app", "cli-app", env=env)
        assert vague.returncode == 2 and "--all, --users FILE or --since" in vague.stderr
        both = _rapport("derive", "--resume", job_id, "--all", env=env)
        assert both.returncode == 2
        stranger = tmp_path / "users.txt"
        stranger.write_text("not-a-user\n")
        refused = _rapport("derive", "--app", "cli-app", "--users", str(stranger), env=env)
        assert refused.returncode == 2 and "not-a-user" in refused.stderr


@pytest.mark.slow
def test_users_and_apps_delete_erase_after_confirmation(tmp_path: Path) -> None:
    from sqlalchemy import text

    from storage.index import MESSAGES

    with scratch_database("rapport_cli") as url:
        env = {
            "DB_CONNECTION_URI": url,
            "RAPPORT_HOME": str(tmp_path),
            "VECTOR_STORE_URI": str(tmp_path / "lance"),
        }
        assert _rapport("db", "upgrade", env=env).returncode == 0

        async def seed() -> tuple[str, str, str]:
            database = Database(url, DBSettings())
            async with database.transaction() as db:
                app = await apps.create_app(db, "erase-me")
                ids = []
                for name in ("ana", "bob"):
                    user = await users.create_user(db, app.id, name)
                    session = await sessions.create_session(db, app.id, user.id)
                    await messages.create_message(
                        db, app.id, user.id, session.id, content=f"{name} here", is_user=True
                    )
                    ids.append(user.id)
            await database.dispose()
            return app.id, ids[0], ids[1]

        app_id, ana, bob = asyncio.run(seed())
        assert _rapport("reindex", env=env).returncode == 0  # both users' messages in the index

        unconfirmed = _rapport("users", "delete", ana, "--app", app_id, env=env)
        assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
        done = _rapport("users", "delete", ana, "--app", app_id, "--yes", env=env)
        assert done.returncode == 0, done.stderr
        assert f"erased user {ana}: 1 messages, 0 documents; index entries removed" in done.stdout
        missing = _rapport("users", "delete", ana, "--app", app_id, "--yes", env=env)
        assert missing.returncode == 1 and "not found" in missing.stderr

        async def counts() -> tuple[int, int, int]:
            database = Database(url, DBSettings())
            async with database.transaction() as db:
                left = (
                    await db.execute(text("SELECT count(*) FROM messages WHERE user_id = :u"), {"u": ana})
                ).scalar_one()
            await database.dispose()
            index = await VectorIndex.open(env["VECTOR_STORE_URI"], 384)
            return (
                left,
                await index.count(MESSAGES, {"user_id": ana}),
                await index.count(MESSAGES, {"user_id": bob}),
            )

        assert asyncio.run(counts()) == (0, 0, 1)
        gone = _rapport("apps", "delete", app_id, "--yes", env=env)
        assert gone.returncode == 0 and f"erased app {app_id}: 1 messages" in gone.stdout, gone.stderr
        assert asyncio.run(counts())[2] == 0


def test_dream_queues_one_per_pair_of_a_workspace_and_names_a_missing_one(tmp_path: Path) -> None:
    from storage import dreams

    with scratch_database("rapport_cli") as url:
        env = {"DB_CONNECTION_URI": url, "RAPPORT_HOME": str(tmp_path)}
        assert _rapport("db", "upgrade", env=env).returncode == 0

        async def seed() -> None:
            database = Database(url, DBSettings())
            t = await make_tree(database, app_name="shop")
            async with database.transaction() as db:
                locked = await collections.lock_pairs(db, t.app_id, [(t.user_id, t.user_id)])
                await documents.create_many(
                    db,
                    [
                        documents.NewDocument(
                            t.app_id, t.user_id, locked[(t.user_id, t.user_id)], "x likes tea", {}
                        )
                    ],
                )
            await database.dispose()

        async def counts() -> dict[str, int]:
            database = Database(url, DBSettings())
            async with database.transaction() as db:
                found = await dreams.counts(db)
            await database.dispose()
            return found

        asyncio.run(seed())
        queued = _rapport("dream", "shop", "--queue-only", env=env)
        assert queued.returncode == 0, queued.stderr
        assert "1 pairs in shop: 1 dreams queued" in queued.stdout
        again = _rapport("dream", "shop", "--queue-only", env=env)
        assert "1 pairs in shop: 0 dreams queued (1 already queued or running)" in again.stdout
        assert asyncio.run(counts())["pending"] == 1
        missing = _rapport("dream", "nowhere", env=env)
        assert missing.returncode == 1 and "workspace 'nowhere' not found" in missing.stderr
