"""Derive v3 sessions too: the derivation trigger queues the messages of sessions without an owner, and
the messages such sessions already hold are queued once (nothing of them was derived before).

The deriver decides at each batch who observes whom (pipelines/deriver/observers.py); the queue holds
every message of a session whose deriver is not switched off in its v1 metadata, as it did for v1.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 21:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOT_DISABLED = "coalesce(s.metadata -> 'deriver_disabled', 'null'::jsonb) IN ('null'::jsonb, 'false'::jsonb)"


def _trigger(owned_only: bool) -> str:
    owned = "s.user_id IS NOT NULL AND " if owned_only else ""
    return f"""
        CREATE OR REPLACE FUNCTION rapport_enqueue_derivation() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO derivation_queue (message_id, session_id, app_id, user_id, seq, tokens)
            SELECT m.id, m.session_id, m.app_id, m.user_id, m.seq, char_length(m.content) / 4 + 8
            FROM stored_messages m JOIN sessions s ON s.id = m.session_id
            WHERE {owned}{_NOT_DISABLED}
              AND coalesce(current_setting('rapport.copying_messages', true), '') <> 'on';
            RETURN NULL;
        END
        $$
        """


def upgrade() -> None:
    op.execute(_trigger(owned_only=False))
    op.execute(
        f"""
        INSERT INTO derivation_queue (message_id, session_id, app_id, user_id, seq, tokens)
        SELECT m.id, m.session_id, m.app_id, m.user_id, m.seq, char_length(m.content) / 4 + 8
        FROM messages m JOIN sessions s ON s.id = m.session_id
        WHERE s.user_id IS NULL AND {_NOT_DISABLED}
        ON CONFLICT DO NOTHING
        """
    )


def downgrade() -> None:
    op.execute(_trigger(owned_only=True))
    op.execute(
        "DELETE FROM derivation_queue q USING sessions s WHERE s.id = q.session_id AND s.user_id IS NULL"
    )
