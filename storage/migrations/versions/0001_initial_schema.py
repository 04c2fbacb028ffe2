"""initial schema: apps, users, sessions, messages, metamessages, collections, documents

Revision ID: 0001
Revises:
Create Date: 2026-11-22 01:29:29.313614
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "apps",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("jsonb_typeof(metadata) = 'object'", name=op.f("ck_apps_metadata_is_object")),
        sa.CheckConstraint("char_length(name) BETWEEN 1 AND 100", name=op.f("ck_apps_name_length")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_apps")),
        sa.UniqueConstraint("name", name=op.f("uq_apps_name")),
        sa.UniqueConstraint("seq", name=op.f("uq_apps_seq")),
    )
    op.create_index(
        "ix_apps_metadata",
        "apps",
        ["metadata"],
        unique=False,
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("jsonb_typeof(metadata) = 'object'", name=op.f("ck_users_metadata_is_object")),
        sa.CheckConstraint("char_length(name) BETWEEN 1 AND 100", name=op.f("ck_users_name_length")),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_users_app_id_apps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("app_id", "name", name=op.f("uq_users_app_id_name")),
    )
    op.create_index("ix_users_app_id_seq", "users", ["app_id", "seq"], unique=False)
    op.create_index(
        "ix_users_metadata",
        "users",
        ["metadata"],
        unique=False,
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
    )
    op.create_table(
        "collections",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "jsonb_typeof(metadata) = 'object'", name=op.f("ck_collections_metadata_is_object")
        ),
        sa.CheckConstraint("char_length(name) BETWEEN 1 AND 100", name=op.f("ck_collections_name_length")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_collections_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_collections")),
        sa.UniqueConstraint("user_id", "name", name=op.f("uq_collections_user_id_name")),
    )
    op.create_index(
        "ix_collections_metadata",
        "collections",
        ["metadata"],
        unique=False,
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
    )
    op.create_index("ix_collections_user_id_seq", "collections", ["user_id", "seq"], unique=False)
    op.create_table(
        "sessions",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("jsonb_typeof(metadata) = 'object'", name=op.f("ck_sessions_metadata_is_object")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_sessions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    )
    op.create_index(
        "ix_sessions_active_user_id_seq",
        "sessions",
        ["user_id", "seq"],
        unique=False,
        postgresql_where=sa.text("is_active"),
    )
    op.create_index(
        "ix_sessions_metadata",
        "sessions",
        ["metadata"],
        unique=False,
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
    )
    op.create_index("ix_sessions_user_id_seq", "sessions", ["user_id", "seq"], unique=False)
    op.create_table(
        "documents",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("collection_id", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("jsonb_typeof(metadata) = 'object'", name=op.f("ck_documents_metadata_is_object")),
        sa.CheckConstraint(
            "char_length(content) BETWEEN 1 AND 100000", name=op.f("ck_documents_content_length")
        ),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["collections.id"],
            name=op.f("fk_documents_collection_id_collections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_documents")),
    )
    op.create_index("ix_documents_collection_id_seq", "documents", ["collection_id", "seq"], unique=False)
    op.create_index(
        "ix_documents_metadata",
        "documents",
        ["metadata"],
        unique=False,
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("is_user", sa.Boolean(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("jsonb_typeof(metadata) = 'object'", name=op.f("ck_messages_metadata_is_object")),
        sa.CheckConstraint("char_length(content) <= 50000", name=op.f("ck_messages_content_length")),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_messages_session_id_sessions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
    )
    op.create_index(
        "ix_messages_metadata",
        "messages",
        ["metadata"],
        unique=False,
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
    )
    op.create_index("ix_messages_session_id_seq", "messages", ["session_id", "seq"], unique=False)
    op.create_index("ix_messages_user_id_seq", "messages", ["user_id", "seq"], unique=False)
    op.create_table(
        "metamessages",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=True),
        sa.Column("message_id", sa.Text(), nullable=True),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "jsonb_typeof(metadata) = 'object'", name=op.f("ck_metamessages_metadata_is_object")
        ),
        sa.CheckConstraint("char_length(content) <= 50000", name=op.f("ck_metamessages_content_length")),
        sa.CheckConstraint("char_length(label) BETWEEN 1 AND 50", name=op.f("ck_metamessages_label_length")),
        sa.CheckConstraint(
            "message_id IS NULL OR session_id IS NOT NULL",
            name=op.f("ck_metamessages_message_requires_session"),
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_metamessages_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_metamessages_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_metamessages_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_metamessages")),
    )
    op.create_index("ix_metamessages_message_id_seq", "metamessages", ["message_id", "seq"], unique=False)
    op.create_index(
        "ix_metamessages_metadata",
        "metamessages",
        ["metadata"],
        unique=False,
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
    )
    op.create_index("ix_metamessages_session_id_seq", "metamessages", ["session_id", "seq"], unique=False)
    op.create_index(
        "ix_metamessages_user_id_label_seq", "metamessages", ["user_id", "label", "seq"], unique=False
    )
    op.create_index("ix_metamessages_user_id_seq", "metamessages", ["user_id", "seq"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_metamessages_user_id_seq", table_name="metamessages")
    op.drop_index("ix_metamessages_user_id_label_seq", table_name="metamessages")
    op.drop_index("ix_metamessages_session_id_seq", table_name="metamessages")
    op.drop_index("ix_metamessages_metadata", table_name="metamessages", postgresql_using="gin")
    op.drop_index("ix_metamessages_message_id_seq", table_name="metamessages")
    op.drop_table("metamessages")
    op.drop_index("ix_messages_user_id_seq", table_name="messages")
    op.drop_index("ix_messages_session_id_seq", table_name="messages")
    op.drop_index("ix_messages_metadata", table_name="messages", postgresql_using="gin")
    op.drop_table("messages")
    op.drop_index("ix_documents_metadata", table_name="documents", postgresql_using="gin")
    op.drop_index("ix_documents_collection_id_seq", table_name="documents")
    op.drop_table("documents")
    op.drop_index("ix_sessions_user_id_seq", table_name="sessions")
    op.drop_index("ix_sessions_metadata", table_name="sessions", postgresql_using="gin")
    op.drop_index(
        "ix_sessions_active_user_id_seq", table_name="sessions", postgresql_where=sa.text("is_active")
    )
    op.drop_table("sessions")
    op.drop_index("ix_collections_user_id_seq", table_name="collections")
    op.drop_index("ix_collections_metadata", table_name="collections", postgresql_using="gin")
    op.drop_table("collections")
    op.drop_index("ix_users_metadata", table_name="users", postgresql_using="gin")
    op.drop_index("ix_users_app_id_seq", table_name="users")
    op.drop_table("users")
    op.drop_index("ix_apps_metadata", table_name="apps", postgresql_using="gin")
    op.drop_table("apps")
