"""messages: an update is queued for the search index only when what is indexed changes

A metadata-only PUT re-embedded its message: the update trigger queued every updated row. What is
indexed of a message is its ids, who said it and when (``speaker``/``name``, ``date``/``timestamp``
metadata, else ``is_user`` and ``created_at``) and its content (pipelines/indexing.py ``message_row``);
only a change to one of those queues it now. Compared as text, so a doubtful change still re-indexes.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 14:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION rapport_enqueue_message_reindex() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO index_outbox (kind, action, target_id)
            SELECT 'message', 'upsert', n.id
            FROM changed_messages n JOIN previous_messages o ON o.id = n.id
            WHERE (n.app_id, n.user_id, n.session_id, n.is_user, n.content, n.created_at,
                   n.metadata ->> 'speaker', n.metadata ->> 'name', n.metadata ->> 'date',
                   n.metadata ->> 'timestamp')
                  IS DISTINCT FROM
                  (o.app_id, o.user_id, o.session_id, o.is_user, o.content, o.created_at,
                   o.metadata ->> 'speaker', o.metadata ->> 'name', o.metadata ->> 'date',
                   o.metadata ->> 'timestamp');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute("DROP TRIGGER messages_index_on_update ON messages")
    op.execute(
        """
        CREATE TRIGGER messages_index_on_update AFTER UPDATE ON messages
        REFERENCING OLD TABLE AS previous_messages NEW TABLE AS changed_messages
        FOR EACH STATEMENT EXECUTE FUNCTION rapport_enqueue_message_reindex()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER messages_index_on_update ON messages")
    op.execute(
        """
        CREATE TRIGGER messages_index_on_update AFTER UPDATE ON messages
        REFERENCING NEW TABLE AS changed_messages
        FOR EACH STATEMENT EXECUTE FUNCTION rapport_enqueue_message_index()
        """
    )
    op.execute("DROP FUNCTION rapport_enqueue_message_reindex()")
