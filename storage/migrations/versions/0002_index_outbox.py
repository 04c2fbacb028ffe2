"""index outbox: index work committed with the rows it is about

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 02:41:27.056072
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "index_outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("target_id", sa.Text(), nullable=True),
        sa.Column("scope", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("attempts", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("parked", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column(
            "available_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("action IN ('upsert', 'delete')", name=op.f("ck_index_outbox_action")),
        sa.CheckConstraint("kind IN ('document', 'message')", name=op.f("ck_index_outbox_kind")),
        sa.CheckConstraint(
            "target_id IS NOT NULL OR scope IS NOT NULL", name=op.f("ck_index_outbox_has_target")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_index_outbox")),
    )
    op.create_index(
        "ix_index_outbox_due",
        "index_outbox",
        ["available_at", "id"],
        unique=False,
        postgresql_where=sa.text("NOT parked"),
    )


def downgrade() -> None:
    op.drop_index("ix_index_outbox_due", table_name="index_outbox", postgresql_where=sa.text("NOT parked"))
    op.drop_table("index_outbox")
