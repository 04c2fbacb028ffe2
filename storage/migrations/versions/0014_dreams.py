"""Dreams: conclusions superseded rather than deleted, derived peer cards, and the dream queue

- documents: ``invalid_at`` (when a dream found the conclusion no longer holds, or merged it into a
  near-duplicate) and ``superseded_by`` (the conclusion that replaced it; NULL again if that one is
  deleted, while ``invalid_at`` stays: the history is kept).
- peer_cards: ``derived``, whether Rapport wrote the card (from the most reinforced conclusions); a
  card set through the API is never overwritten by one derived.
- dreams: one consolidation pass over what an observer holds about an observed peer; at most one
  pending or running per pair. Leased as derivation batches are; failed after its last attempt.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 23:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("documents", sa.Column("invalid_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("documents", sa.Column("superseded_by", sa.Text(), nullable=True))
    op.create_foreign_key(
        "fk_documents_superseded_by_documents",
        "documents",
        "documents",
        ["superseded_by"],
        ["id"],
        ondelete="SET NULL",
    )
    # Partial: nearly every document supersedes nothing. It serves the SET NULL on delete all the same
    # (``superseded_by = x`` implies the predicate).
    op.create_index(
        "ix_documents_superseded_by",
        "documents",
        ["superseded_by"],
        postgresql_where=sa.text("superseded_by IS NOT NULL"),
    )
    # The scheduler counts recent conclusions that still hold (storage/dreams.py _DUE).
    op.create_index(
        "ix_documents_created_at_valid",
        "documents",
        ["created_at"],
        postgresql_where=sa.text("invalid_at IS NULL"),
    )
    op.add_column(
        "peer_cards", sa.Column("derived", sa.Boolean(), nullable=False, server_default=sa.text("false"))
    )
    op.create_table(
        "dreams",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("observer_id", sa.Text(), nullable=False),
        sa.Column("observed_id", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default=sa.text("'pending'")),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", JSONB(), nullable=True),
        sa.Column("not_before", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("token", sa.Text(), nullable=True),
        sa.Column("leased_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'running', 'done', 'failed')", name="ck_dreams_status"),
        sa.CheckConstraint("reason IN ('scheduled', 'requested', 'batch')", name="ck_dreams_reason"),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], name="fk_dreams_app_id_apps", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["observer_id"], ["users.id"], name="fk_dreams_observer_id_users", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["observed_id"], ["users.id"], name="fk_dreams_observed_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_dreams"),
    )
    op.create_index(
        "ix_dreams_open_pair",
        "dreams",
        ["observer_id", "observed_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('pending', 'running')"),
    )
    op.create_index("ix_dreams_due", "dreams", ["not_before"], postgresql_where=sa.text("status = 'pending'"))
    op.create_index("ix_dreams_observed_id", "dreams", ["observed_id"])
    op.create_index("ix_dreams_observer_id", "dreams", ["observer_id"])
    op.create_index("ix_dreams_app_id", "dreams", ["app_id"])
    op.create_index(
        "ix_dreams_lease", "dreams", ["leased_until"], postgresql_where=sa.text("status = 'running'")
    )


def downgrade() -> None:
    op.drop_table("dreams")
    op.drop_column("peer_cards", "derived")
    op.drop_index("ix_documents_created_at_valid", table_name="documents")
    op.drop_index("ix_documents_superseded_by", table_name="documents")
    op.drop_constraint("fk_documents_superseded_by_documents", "documents", type_="foreignkey")
    op.drop_column("documents", "superseded_by")
    op.drop_column("documents", "invalid_at")
