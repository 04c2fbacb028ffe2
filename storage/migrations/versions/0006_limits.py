"""limits: per-app request budgets (rate_buckets), apps' turns at derivation (derivation_apps) and an
index of held derivation leases per app

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "derivation_apps",
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("last_claim_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_derivation_apps_app_id_apps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("app_id", name=op.f("pk_derivation_apps")),
    )
    op.create_table(
        "rate_buckets",
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("tokens", sa.Double(), nullable=False),
        sa.Column("refilled_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_rate_buckets_app_id_apps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("app_id", name=op.f("pk_rate_buckets")),
    )
    op.create_index(
        "ix_derivation_sessions_app_id_held",
        "derivation_sessions",
        ["app_id"],
        unique=False,
        postgresql_where=sa.text("lease_owner IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_derivation_sessions_app_id_held",
        table_name="derivation_sessions",
        postgresql_where=sa.text("lease_owner IS NOT NULL"),
    )
    op.drop_table("rate_buckets")
    op.drop_table("derivation_apps")
