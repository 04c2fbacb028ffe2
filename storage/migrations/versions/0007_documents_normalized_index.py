"""documents: an index of each collection's normalised contents (hashed), for the deriver's exact-duplicate
check, which otherwise reads every document of the user's collection for every batch

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 04:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# storage/tables.py NORMALIZED_CONTENT at the time of this migration (a migration never imports it).
NORMALIZED_CONTENT = "btrim(regexp_replace(lower(content), '[^0-9a-z]+', ' ', 'g'))"


def upgrade() -> None:
    op.execute(
        "CREATE INDEX ix_documents_collection_id_normalized ON documents "
        f"(collection_id, md5({NORMALIZED_CONTENT}))"
    )


def downgrade() -> None:
    op.execute("DROP INDEX ix_documents_collection_id_normalized")
