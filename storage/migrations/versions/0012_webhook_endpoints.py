"""webhook_endpoints: where Honcho v3's webhook events of a workspace are sent

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("char_length(url) BETWEEN 1 AND 2048", name="ck_webhook_endpoints_url_length"),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name="fk_webhook_endpoints_app_id_apps", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_endpoints"),
        sa.UniqueConstraint("app_id", "url", name="uq_webhook_endpoints_app_id_url"),
    )


def downgrade() -> None:
    op.drop_table("webhook_endpoints")
