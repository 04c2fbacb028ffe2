"""The batch-derivation ledger on real PostgreSQL: claims, the done mark's guard, what an actor's death,
a cancel and a resume do to users, and the sessions' leases shared with the continuous deriver."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from storage import apps, derivation, jobs, messages, sessions, users
from storage.db import Database
from storage.errors import ConflictError, NotFoundError
from storage.jobs import UserLost


async def a_job(database: Database, n_users: int = 3) -> tuple[str, str, list[str]]:
    async with database.transaction() as db:
        app = await apps.create_app(db, "ledger")
        ids = [(await users.create_user(db, app.id, f"u{i}")).id for i in range(n_users)]
        job_id = await jobs.create_job(
            db, app.id, mode="replace", selection={"all": True}, settings={}, model="m"
        )
        assert await jobs.add_all_users(db, job_id, app.id, since=None) == n_users
    return app.id, job_id, ids


async def test_users_are_claimed_in_order_once_and_done_only_by_their_owner(database: Database) -> None:
    _, job_id, ids = await a_job(database)
    async with database.transaction() as db:
        first = await jobs.claim_users(db, job_id, "a", 2)
        second = await jobs.claim_users(db, job_id, "b", 2)
        assert [c.user_id for c in first] == ids[:2] and [c.user_id for c in second] == ids[2:]
        assert await jobs.claim_users(db, job_id, "c", 2) == []

        # Actor a dies: its users go back, b takes one; a's late commit is refused.
        assert await jobs.give_up_owner(db, job_id, "a", max_attempts=3, reason="died") == 2
        retaken = await jobs.claim_users(db, job_id, "b", 1)
        assert retaken[0].user_id == ids[0] and retaken[0].attempts == 2
        with pytest.raises(UserLost) as lost:
            await jobs.finish_users(db, job_id, "a", [(first[0].n, 1, 1)])
        assert lost.value.ns == [first[0].n]
        await jobs.finish_users(db, job_id, "b", [(retaken[0].n, 4, 2)])
        p = await jobs.progress(db, job_id)
        assert (p.done, p.running, p.pending, p.facts) == (1, 1, 1, 2)


async def test_a_user_that_keeps_killing_its_actor_fails_with_the_reason(database: Database) -> None:
    _, job_id, ids = await a_job(database, 1)
    async with database.transaction() as db:
        for attempt in range(2):
            assert await jobs.claim_users(db, job_id, f"actor{attempt}", 1)
            await jobs.give_up_owner(db, job_id, f"actor{attempt}", max_attempts=2, reason="actor died")
        assert await jobs.failures(db, job_id) == [(ids[0], 2, "actor died")]
        p = await jobs.progress(db, job_id)
        assert (p.failed, p.pending) == (1, 0)


async def test_failures_are_retried_then_reported(database: Database) -> None:
    _, job_id, ids = await a_job(database, 1)
    async with database.transaction() as db:
        states = []
        for _ in range(3):
            (claimed,) = await jobs.claim_users(db, job_id, "x", 1)
            states.append(await jobs.fail_user(db, job_id, claimed.n, "x", "ValueError: bad", max_attempts=3))
        assert states == ["pending", "pending", "failed"]
        assert await jobs.failures(db, job_id) == [(ids[0], 3, "ValueError: bad")]
        # An outage gives a user back without spending an attempt.
        app_id = (await jobs.get_job(db, job_id)).app_id
        job2 = await jobs.create_job(db, app_id, mode="append", selection={}, settings={}, model="m")
        assert await jobs.add_users(db, job2, app_id, [*ids, "stranger"], start=0) == ["stranger"]
        (claimed,) = await jobs.claim_users(db, job2, "x", 1)
        await jobs.release_users(db, job2, "x", [claimed.n])
        (again,) = await jobs.claim_users(db, job2, "x", 1)
        assert again.attempts == 1


async def test_cancel_and_resume(database: Database) -> None:
    _, job_id, _ = await a_job(database)
    async with database.transaction() as db:
        await jobs.claim_users(db, job_id, "a", 1)
        # Its driver is alive: a resume is refused, a cancel asks the driver to stop.
        with pytest.raises(ConflictError, match="being run by"):
            await jobs.take_over(db, job_id)
        assert await jobs.cancel(db, job_id) == "cancelling"
        assert await jobs.claim_users(db, job_id, "a", 5) == [], "no user starts once cancelling"

        # The driver died (a stale heartbeat): resume takes over, the dead actors' users go back.
        await db.execute(
            text("UPDATE derivation_jobs SET state = 'running', heartbeat_at = now() - interval '1 minute'")
        )
        job = await jobs.take_over(db, job_id)
        assert job.state == "running" and job.driver == jobs.driver_name()
        assert (await jobs.progress(db, job_id)).pending == 3

        await db.execute(text("UPDATE derivation_jobs SET heartbeat_at = now() - interval '1 minute'"))
        assert await jobs.cancel(db, job_id) == "cancelled"
        with pytest.raises(ConflictError, match="ended"):
            await jobs.take_over(db, job_id)
        with pytest.raises(NotFoundError, match="rapport jobs list"):
            await jobs.get_job(db, "nope")


async def test_a_job_and_the_queue_deriver_never_hold_a_users_sessions_together(database: Database) -> None:
    async with database.transaction() as db:
        app = await apps.create_app(db, "leases")
        user = await users.create_user(db, app.id, "ana")
        s1 = await sessions.create_session(db, app.id, user.id)
        s2 = await sessions.create_session(db, app.id, user.id)
        rows = [
            *await messages.create_messages(db, app.id, user.id, s1.id, [{"content": "a", "is_user": True}]),
            *await messages.create_messages(db, app.id, user.id, s2.id, [{"content": "b", "is_user": True}]),
        ]
    async with database.transaction() as db:
        held = await derivation.claim(db, lease_s=60, wait_s=0, max_tokens=100)
        assert held is not None
    async with database.transaction() as db:
        assert not await derivation.lease_user(db, user.id, "job:1", lease_s=60), "a worker holds a session"
        leased = await db.execute(
            text("SELECT count(*) FROM derivation_sessions WHERE lease_owner = 'job:1'")
        )
        assert leased.scalar_one() == 0, "nothing is held after a refusal"
    async with database.transaction() as db:
        await derivation.release(db, held, delay_s=0)
        assert await derivation.lease_user(db, user.id, "job:1", lease_s=60)
        assert await derivation.claim(db, lease_s=60, wait_s=0, max_tokens=100) is None, "the job holds both"
        await derivation.complete_users(db, "job:1", {user.id: [s1.id, s2.id]}, [r.id for r in rows])
        counts = await derivation.counts(db)
        assert (counts.done, counts.pending) == (2, 0)
        assert (
            await db.execute(text("SELECT count(*) FROM derivation_sessions WHERE lease_owner IS NOT NULL"))
        ).scalar_one() == 0


async def test_a_lease_lost_meanwhile_refuses_the_users_completion(database: Database) -> None:
    async with database.transaction() as db:
        app = await apps.create_app(db, "lost")
        ana = await users.create_user(db, app.id, "ana")
        bob = await users.create_user(db, app.id, "bob")
        s_ana = await sessions.create_session(db, app.id, ana.id)
        s_bob = await sessions.create_session(db, app.id, bob.id)
        assert await derivation.lease_user(db, ana.id, "job:1", lease_s=60)
        assert await derivation.lease_user(db, bob.id, "job:1", lease_s=60)
        # Bob's lease expired and a worker took his session.
        await db.execute(
            text("UPDATE derivation_sessions SET lease_owner = 'worker' WHERE session_id = :s"),
            {"s": s_bob.id},
        )
    with pytest.raises(derivation.LeaseLost) as lost:
        async with database.transaction() as db:
            await derivation.complete_users(db, "job:1", {ana.id: [s_ana.id], bob.id: [s_bob.id]}, [])
    assert lost.value.users == [bob.id]
