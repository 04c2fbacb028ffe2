"""index every message: triggers write the outbox entry in the statement that writes the message

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 03:35:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Statement-level triggers with transition tables: one INSERT into the outbox per statement, however
    # many messages it wrote, in the same transaction; no code path can store a message and forget it.
    op.execute(
        """
        CREATE FUNCTION rapport_enqueue_message_index() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO index_outbox (kind, action, target_id)
            SELECT 'message', 'upsert', id FROM changed_messages;
            RETURN NULL;
        END
        $$
        """
    )
    for event in ("INSERT", "UPDATE"):
        op.execute(
            f"""
            CREATE TRIGGER messages_index_on_{event.lower()} AFTER {event} ON messages
            REFERENCING NEW TABLE AS changed_messages
            FOR EACH STATEMENT EXECUTE FUNCTION rapport_enqueue_message_index()
            """
        )


def downgrade() -> None:
    for event in ("insert", "update"):
        op.execute(f"DROP TRIGGER messages_index_on_{event} ON messages")
    op.execute("DROP FUNCTION rapport_enqueue_message_index()")
