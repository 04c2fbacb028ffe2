"""derivation queue keeps only work (done items counted per session), indexes for erasure, worker status

A done item used to stay in derivation_queue forever, for the counts: the table grew with every message
ever stored, and deleting one user's items read it all. Done items are now deleted in the statement that
completes them and counted on their session's derivation_sessions row (``done``, ``last_done_at``).
Items whose session is gone (an erasure that raced a message insert) are dropped. derivation_jobs gets an
index on its app (an app's erasure cascades to its jobs). worker_status holds what each derivation
process says of itself (running, or paused and why), for /health.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "derivation_sessions", sa.Column("done", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
    )
    op.add_column("derivation_sessions", sa.Column("last_done_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "DELETE FROM derivation_queue q WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = q.session_id)"
    )
    op.execute(
        """
        INSERT INTO derivation_sessions AS d (session_id, app_id, user_id, done, last_done_at)
        SELECT session_id, min(app_id), min(user_id), count(*), max(done_at)
        FROM derivation_queue WHERE status = 'done' GROUP BY session_id
        ON CONFLICT (session_id) DO UPDATE SET done = excluded.done, last_done_at = excluded.last_done_at
        """
    )
    op.execute("DELETE FROM derivation_queue WHERE status = 'done'")
    op.drop_constraint(op.f("ck_derivation_queue_status"), "derivation_queue", type_="check")
    op.create_check_constraint(
        op.f("ck_derivation_queue_status"), "derivation_queue", "status IN ('pending', 'parked')"
    )
    op.drop_column("derivation_queue", "done_at")
    op.create_index("ix_derivation_jobs_app_id", "derivation_jobs", ["app_id"], unique=False)
    op.create_table(
        "worker_status",
        sa.Column("worker", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("progress_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("seen_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("state IN ('running', 'paused')", name=op.f("ck_worker_status_state")),
        sa.PrimaryKeyConstraint("worker", name=op.f("pk_worker_status")),
    )


def downgrade() -> None:
    op.drop_table("worker_status")
    op.drop_index("ix_derivation_jobs_app_id", table_name="derivation_jobs")
    op.add_column("derivation_queue", sa.Column("done_at", sa.DateTime(timezone=True), nullable=True))
    op.drop_constraint(op.f("ck_derivation_queue_status"), "derivation_queue", type_="check")
    op.create_check_constraint(
        op.f("ck_derivation_queue_status"), "derivation_queue", "status IN ('pending', 'done', 'parked')"
    )
    # The done items themselves are gone; their counts go with the columns.
    op.drop_column("derivation_sessions", "last_done_at")
    op.drop_column("derivation_sessions", "done")
