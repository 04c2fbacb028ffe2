"""Honcho v3's conclusions on the documents: who observes (a collection's observer), the level of each
conclusion and the session it came from; peer cards

- collections: ``observer_id``, the peer whose view the collection holds of its user (the observed
  peer); NULL for the user's own collections, whose facts are Rapport's view of the user (v3's
  observer = observed). Deleted with the observer.
- documents: ``level`` (explicit, deductive, inductive, contradiction), backfilled from the deriver's
  ``kind`` (an inference is deductive), and ``session_id``, the session it was drawn from (the
  deriver's ``session_id`` metadata), without a foreign key: deleting a session deletes its conclusions
  explicitly, and a deriver's write never waits on a session's row.
- peer_cards: what one peer keeps about another (or itself), a list of short lines.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("collections", sa.Column("observer_id", sa.Text(), nullable=True))
    op.create_foreign_key(
        "fk_collections_observer_id_users",
        "collections",
        "users",
        ["observer_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_index("ix_collections_observer_id_user_id", "collections", ["observer_id", "user_id"])

    op.add_column(
        "documents", sa.Column("level", sa.Text(), nullable=False, server_default=sa.text("'explicit'"))
    )
    op.create_check_constraint(
        "level", "documents", "level IN ('explicit', 'deductive', 'inductive', 'contradiction')"
    )
    op.add_column("documents", sa.Column("session_id", sa.Text(), nullable=True))
    op.execute(
        """
        UPDATE documents d SET
            level = CASE WHEN d.metadata ->> 'kind' = 'inference' THEN 'deductive' ELSE 'explicit' END,
            session_id = (SELECT s.id FROM sessions s WHERE s.id = d.metadata ->> 'session_id')
        WHERE d.metadata ? 'kind' OR d.metadata ? 'session_id'
        """
    )
    op.create_index(
        "ix_documents_session_id",
        "documents",
        ["session_id"],
        postgresql_where=sa.text("session_id IS NOT NULL"),
    )

    op.create_table(
        "peer_cards",
        sa.Column("observer_id", sa.Text(), nullable=False),
        sa.Column("observed_id", sa.Text(), nullable=False),
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("card", JSONB(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("jsonb_typeof(card) = 'array'", name="ck_peer_cards_card_is_list"),
        sa.ForeignKeyConstraint(
            ["observer_id"], ["users.id"], name="fk_peer_cards_observer_id_users", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["observed_id"], ["users.id"], name="fk_peer_cards_observed_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("observer_id", "observed_id", name="pk_peer_cards"),
    )
    op.create_index("ix_peer_cards_observed_id", "peer_cards", ["observed_id"])


def downgrade() -> None:
    op.drop_table("peer_cards")
    op.drop_index("ix_documents_session_id", table_name="documents")
    op.drop_column("documents", "session_id")
    op.drop_constraint(op.f("ck_documents_level"), "documents", type_="check")
    op.drop_column("documents", "level")
    op.execute("DELETE FROM collections WHERE observer_id IS NOT NULL")
    op.drop_index("ix_collections_observer_id_user_id", table_name="collections")
    op.drop_constraint("fk_collections_observer_id_users", "collections", type_="foreignkey")
    op.drop_column("collections", "observer_id")
