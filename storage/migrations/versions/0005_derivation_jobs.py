"""derivation jobs: the ledger of batch re-derivation (a job row, and one row per user it covers)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 07:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "derivation_jobs",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("selection", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("settings", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), server_default=sa.text("'running'"), nullable=False),
        sa.Column("users_total", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("driver", sa.Text(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("mode IN ('replace', 'append')", name=op.f("ck_derivation_jobs_mode")),
        sa.CheckConstraint(
            "state IN ('running', 'stopped', 'cancelling', 'cancelled', 'done')",
            name=op.f("ck_derivation_jobs_state"),
        ),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_derivation_jobs_app_id_apps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_derivation_jobs")),
    )
    op.create_table(
        "derivation_job_users",
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("owner", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("messages", sa.Integer(), nullable=True),
        sa.Column("facts", sa.Integer(), nullable=True),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'running', 'done', 'failed')", name=op.f("ck_derivation_job_users_state")
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["derivation_jobs.id"],
            name=op.f("fk_derivation_job_users_job_id_derivation_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "n", name=op.f("pk_derivation_job_users")),
        sa.UniqueConstraint("job_id", "user_id", name=op.f("uq_derivation_job_users_job_id_user_id")),
    )
    op.create_index(
        "ix_derivation_job_users_job_id_state_n",
        "derivation_job_users",
        ["job_id", "state", "n"],
        unique=False,
    )
    op.create_index(
        "ix_derivation_job_users_owner",
        "derivation_job_users",
        ["owner"],
        unique=False,
        postgresql_where=sa.text("state = 'running'"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_derivation_job_users_owner",
        table_name="derivation_job_users",
        postgresql_where=sa.text("state = 'running'"),
    )
    op.drop_index("ix_derivation_job_users_job_id_state_n", table_name="derivation_job_users")
    op.drop_table("derivation_job_users")
    op.drop_table("derivation_jobs")
