"""derivation queue: every stored message's derivation work, written by a trigger in the same statement

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "derivation_queue",
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("raw_output", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'done', 'parked')", name=op.f("ck_derivation_queue_status")
        ),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_derivation_queue")),
    )
    op.create_index(
        "ix_derivation_queue_pending",
        "derivation_queue",
        ["session_id", "seq"],
        unique=False,
        postgresql_include=["created_at", "tokens"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_derivation_queue_app_user_status",
        "derivation_queue",
        ["app_id", "user_id", "status"],
        unique=False,
    )
    op.create_index(
        "ix_derivation_queue_parked",
        "derivation_queue",
        ["session_id"],
        unique=False,
        postgresql_where=sa.text("status = 'parked'"),
    )
    op.create_table(
        "derivation_sessions",
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("leased_until", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_derivation_sessions_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_derivation_sessions")),
    )
    # One statement-level trigger: however many messages a statement stores, their work is queued in the
    # same transaction, by appending only (no shared row is updated, so concurrent writers never wait). A session whose metadata sets
    # deriver_disabled to anything but false (or null) is skipped, as in Honcho v1, and so are copies of
    # messages already derived (a cloned session sets rapport.copying_messages for its transaction). The
    # token estimate (4 characters a token) only bounds batches.
    op.execute(
        """
        CREATE FUNCTION rapport_enqueue_derivation() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO derivation_queue (message_id, session_id, app_id, user_id, seq, tokens)
            SELECT m.id, m.session_id, m.app_id, m.user_id, m.seq, char_length(m.content) / 4 + 8
            FROM stored_messages m JOIN sessions s ON s.id = m.session_id
            WHERE coalesce(s.metadata -> 'deriver_disabled', 'null'::jsonb) IN ('null'::jsonb, 'false'::jsonb)
              AND coalesce(current_setting('rapport.copying_messages', true), '') <> 'on';
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER messages_derive_on_insert AFTER INSERT ON messages
        REFERENCING NEW TABLE AS stored_messages
        FOR EACH STATEMENT EXECUTE FUNCTION rapport_enqueue_derivation()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER messages_derive_on_insert ON messages")
    op.execute("DROP FUNCTION rapport_enqueue_derivation()")
    op.drop_table("derivation_sessions")
    op.drop_index(
        "ix_derivation_queue_parked",
        table_name="derivation_queue",
        postgresql_where=sa.text("status = 'parked'"),
    )
    op.drop_index("ix_derivation_queue_app_user_status", table_name="derivation_queue")
    op.drop_index(
        "ix_derivation_queue_pending",
        table_name="derivation_queue",
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_table("derivation_queue")
