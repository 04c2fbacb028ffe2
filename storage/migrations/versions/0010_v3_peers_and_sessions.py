"""Honcho v3's data model on the v1 tables: workspaces are apps, peers are users, and a session has a name,
members and a configuration; a message has its sending peer and a token count

- apps, users: a ``configuration`` object; names up to 512 characters (v3 ids), matched by name. A
  user made as an app's assistant peer is marked ``assistant`` (v1's user lists leave it out).
- sessions: a ``name`` unique in the app (a v1 session's is its id), ``user_id`` may be NULL (a v3
  session belongs to its members, not to one user), a ``configuration``, and ``app_id`` now cascades
  from the app (an ownerless session has no user to cascade from).
- session_peers: a session's members, with their per-session configuration and when they joined and
  left. A v1 session's members are its user and the app's assistant peer (``app.assistant_peer``).
- messages: ``peer_id``, the sender (a user row; a v1 message with ``is_user`` false is the assistant
  peer's), deleted with its peer; ``token_count``, computed by PostgreSQL from the content with the
  same offline estimate as models.llm.client.estimate_tokens (no tokenizer file to download).
- derivation: only messages of sessions with a v1 owner are queued (a v3 session's are derived per peer
  by the memory issue's deriver).

The backfill creates the assistant peer of every app that has a message from it, and the members of
every existing session.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# models.llm.client.estimate_tokens at the time of this migration, in SQL (a test keeps them equal).
TOKEN_ESTIMATE = (
    "ceil(char_length(content) / 3.5 + (octet_length(content) - char_length(content)) / 1.5)::integer"
)
# storage.ids.new_id in SQL: 21 URL-safe characters of a random UUID's bytes (core PostgreSQL, no extension).
NEW_ID = "translate(left(encode(decode(replace(gen_random_uuid()::text, '-', ''), 'hex'), 'base64'), 21), '+/', '-_')"


def _assistant_peer() -> str:
    from rapport.settings import get_settings

    return get_settings().app.assistant_peer


def _configuration(table: str) -> None:
    op.add_column(
        table, sa.Column("configuration", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb"))
    )
    op.create_check_constraint("configuration_is_object", table, "jsonb_typeof(configuration) = 'object'")


def _name_length(table: str, most: int) -> None:
    op.drop_constraint(op.f(f"ck_{table}_name_length"), table, type_="check")
    op.create_check_constraint("name_length", table, f"char_length(name) BETWEEN 1 AND {most}")


def upgrade() -> None:
    for table in ("apps", "users"):
        _configuration(table)
        _name_length(table, 512)
    op.add_column(
        "users", sa.Column("assistant", sa.Boolean(), nullable=False, server_default=sa.text("false"))
    )

    # sessions: a name, no required owner, a configuration, and the app's cascade
    op.add_column("sessions", sa.Column("name", sa.Text(), nullable=True))
    op.execute("UPDATE sessions SET name = id")
    op.alter_column("sessions", "name", nullable=False)
    op.alter_column("sessions", "user_id", nullable=True)
    _configuration("sessions")
    op.create_check_constraint("name_length", "sessions", "char_length(name) BETWEEN 1 AND 512")
    op.create_unique_constraint("uq_sessions_app_id_name", "sessions", ["app_id", "name"])
    op.create_index("ix_sessions_app_id_seq", "sessions", ["app_id", "seq"])
    op.create_foreign_key(
        "fk_sessions_app_id_apps", "sessions", "apps", ["app_id"], ["id"], ondelete="CASCADE"
    )

    op.create_table(
        "session_peers",
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("peer_id", sa.Text(), nullable=False),
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("observe_me", sa.Boolean(), nullable=True),
        sa.Column("observe_others", sa.Boolean(), nullable=True),
        sa.Column("joined_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("left_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name="fk_session_peers_session_id_sessions", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["peer_id"], ["users.id"], name="fk_session_peers_peer_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("session_id", "peer_id", name="pk_session_peers"),
    )
    op.create_index("ix_session_peers_peer_id_session_id", "session_peers", ["peer_id", "session_id"])

    # messages: the sender and a token count
    op.add_column("messages", sa.Column("peer_id", sa.Text(), nullable=True))
    op.add_column(
        "messages",
        sa.Column("token_count", sa.Integer(), sa.Computed(TOKEN_ESTIMATE, persisted=True), nullable=False),
    )
    name = _assistant_peer()
    op.execute(
        sa.text(
            f"""
            INSERT INTO users (id, app_id, name, assistant)
            SELECT {NEW_ID}, a.app_id, :name, true
            FROM (SELECT DISTINCT app_id FROM messages WHERE NOT is_user) a
            ON CONFLICT (app_id, name) DO NOTHING
            """
        ).bindparams(name=name)
    )
    op.execute(
        sa.text(
            """
            UPDATE messages m SET peer_id = CASE WHEN m.is_user THEN m.user_id
                ELSE (SELECT u.id FROM users u WHERE u.app_id = m.app_id AND u.name = :name) END
            """
        ).bindparams(name=name)
    )
    op.alter_column("messages", "peer_id", nullable=False)
    op.create_foreign_key(
        "fk_messages_peer_id_users", "messages", "users", ["peer_id"], ["id"], ondelete="CASCADE"
    )
    op.create_index("ix_messages_peer_id_seq", "messages", ["peer_id", "seq"])

    # members of the existing sessions: the user, then the app's assistant peer if it has one
    op.execute(
        sa.text(
            """
            INSERT INTO session_peers (session_id, peer_id, app_id, joined_at)
            SELECT s.id, s.user_id, s.app_id, s.created_at FROM sessions s
            UNION ALL
            SELECT s.id, u.id, s.app_id, s.created_at
            FROM sessions s JOIN users u ON u.app_id = s.app_id AND u.name = :name AND u.id <> s.user_id
            """
        ).bindparams(name=name)
    )

    op.execute(
        """
        CREATE OR REPLACE FUNCTION rapport_enqueue_derivation() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO derivation_queue (message_id, session_id, app_id, user_id, seq, tokens)
            SELECT m.id, m.session_id, m.app_id, m.user_id, m.seq, char_length(m.content) / 4 + 8
            FROM stored_messages m JOIN sessions s ON s.id = m.session_id
            WHERE s.user_id IS NOT NULL
              AND coalesce(s.metadata -> 'deriver_disabled', 'null'::jsonb) IN ('null'::jsonb, 'false'::jsonb)
              AND coalesce(current_setting('rapport.copying_messages', true), '') <> 'on';
            RETURN NULL;
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute(
        """
        CREATE OR REPLACE FUNCTION rapport_enqueue_derivation() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO derivation_queue (message_id, session_id, app_id, user_id, seq, tokens)
            SELECT m.id, m.session_id, m.app_id, m.user_id, m.seq, char_length(m.content) / 4 + 8
            FROM stored_messages m JOIN sessions s ON s.id = m.session_id
            WHERE coalesce(s.metadata -> 'deriver_disabled', 'null'::jsonb) IN ('null'::jsonb, 'false'::jsonb)
              AND coalesce(current_setting('rapport.copying_messages', true), '') <> 'on';
            RETURN NULL;
        END
        $$
        """
    )
    # What v1 cannot hold goes: sessions without an owner, and messages of peers other than the owner
    # (the assistant peer's become the owner's again, with is_user false).
    op.execute("DELETE FROM sessions WHERE user_id IS NULL")
    op.drop_index("ix_messages_peer_id_seq", table_name="messages")
    op.drop_constraint("fk_messages_peer_id_users", "messages", type_="foreignkey")
    op.drop_column("messages", "token_count")
    op.drop_column("messages", "peer_id")
    op.drop_table("session_peers")
    op.drop_constraint("fk_sessions_app_id_apps", "sessions", type_="foreignkey")
    op.drop_index("ix_sessions_app_id_seq", table_name="sessions")
    op.drop_constraint("uq_sessions_app_id_name", "sessions", type_="unique")
    op.drop_constraint(op.f("ck_sessions_name_length"), "sessions", type_="check")
    op.drop_constraint(op.f("ck_sessions_configuration_is_object"), "sessions", type_="check")
    op.drop_column("sessions", "configuration")
    op.alter_column("sessions", "user_id", nullable=False)
    op.drop_column("sessions", "name")
    op.drop_column("users", "assistant")
    for table in ("apps", "users"):
        op.drop_constraint(op.f(f"ck_{table}_configuration_is_object"), table, type_="check")
        op.drop_column(table, "configuration")
        _name_length(table, 100)
