"""The relational hierarchy as SQLAlchemy 2 tables: apps -> users -> sessions -> messages, metamessages,
collections -> documents.

Every table has an opaque string ``id`` (what the API shows), a ``seq`` identity column that fixes list
order (batch inserts share one ``created_at``, so time alone can't order them), a JSONB ``metadata``
object and ``created_at``. Children carry their ``app_id``/``user_id`` so scope checks and per-user
queries need no joins. The schema itself is created and changed only by the Alembic migrations in
``storage/migrations``; this module must describe the same schema (a test compares them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from storage.ids import new_id

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _id() -> Mapped[str]:
    return mapped_column(Text, primary_key=True, default=new_id)


def _seq(*, unique: bool = False) -> Mapped[int]:
    return mapped_column(BigInteger, Identity(always=True), nullable=False, unique=unique)


def _metadata() -> Mapped[dict[str, Any]]:
    return mapped_column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb"), default=dict)


def _configuration() -> Mapped[dict[str, Any]]:
    return mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"), default=dict)


_CONFIGURATION_CHECK = "jsonb_typeof(configuration) = 'object'"

NAME_MAX = 512  # v3 ids are names of up to 512 characters; the v1 API takes up to 100


def _created_at() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


def _metadata_checks(table: str) -> tuple[Any, ...]:
    """JSONB metadata is always an object, and is indexed for containment filters."""
    return (
        CheckConstraint("jsonb_typeof(metadata) = 'object'", name="metadata_is_object"),
        Index(
            f"ix_{table}_metadata",
            "metadata",
            postgresql_using="gin",
            postgresql_ops={"metadata": "jsonb_path_ops"},
        ),
    )


class App(Base):
    __tablename__ = "apps"
    id: Mapped[str] = _id()
    seq: Mapped[int] = _seq(unique=True)  # the apps list is ordered by it
    name: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    metadata_: Mapped[dict[str, Any]] = _metadata()
    configuration: Mapped[dict[str, Any]] = _configuration()
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (
        CheckConstraint(f"char_length(name) BETWEEN 1 AND {NAME_MAX}", name="name_length"),
        CheckConstraint(_CONFIGURATION_CHECK, name="configuration_is_object"),
        *_metadata_checks("apps"),
    )


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = _id()
    seq: Mapped[int] = _seq()
    app_id: Mapped[str] = mapped_column(Text, ForeignKey("apps.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    metadata_: Mapped[dict[str, Any]] = _metadata()
    configuration: Mapped[dict[str, Any]] = _configuration()
    # The app's assistant peer, made by Rapport for its v1 sessions: v1 user lists leave it out.
    assistant: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default=text("false"), default=False
    )
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (
        UniqueConstraint("app_id", "name"),
        CheckConstraint(f"char_length(name) BETWEEN 1 AND {NAME_MAX}", name="name_length"),
        CheckConstraint(_CONFIGURATION_CHECK, name="configuration_is_object"),
        Index("ix_users_app_id_seq", "app_id", "seq"),
        *_metadata_checks("users"),
    )


class Session(Base):
    """A conversation. A v1 session has an owner (``user_id``) and its id for a name; a v3 session has a
    client-chosen name and no owner: it belongs to its members (``SessionPeer``)."""

    __tablename__ = "sessions"
    id: Mapped[str] = _id()
    seq: Mapped[int] = _seq()
    app_id: Mapped[str] = mapped_column(Text, ForeignKey("apps.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    user_id: Mapped[str | None] = mapped_column(Text, ForeignKey("users.id", ondelete="CASCADE"))
    is_active: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default=text("true"), default=True
    )
    metadata_: Mapped[dict[str, Any]] = _metadata()
    configuration: Mapped[dict[str, Any]] = _configuration()
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (
        UniqueConstraint("app_id", "name"),
        CheckConstraint(f"char_length(name) BETWEEN 1 AND {NAME_MAX}", name="name_length"),
        CheckConstraint(_CONFIGURATION_CHECK, name="configuration_is_object"),
        Index("ix_sessions_app_id_seq", "app_id", "seq"),
        Index("ix_sessions_user_id_seq", "user_id", "seq"),
        Index("ix_sessions_active_user_id_seq", "user_id", "seq", postgresql_where=text("is_active")),
        *_metadata_checks("sessions"),
    )


class SessionPeer(Base):
    """A peer's membership of a session, with its configuration there. Leaving sets ``left_at``;
    joining again clears it."""

    __tablename__ = "session_peers"
    session_id: Mapped[str] = mapped_column(
        Text, ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    peer_id: Mapped[str] = mapped_column(Text, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    app_id: Mapped[str] = mapped_column(Text, nullable=False)
    seq: Mapped[int] = _seq()
    observe_me: Mapped[bool | None] = mapped_column(Boolean)
    observe_others: Mapped[bool | None] = mapped_column(Boolean)
    joined_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    left_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_session_peers_peer_id_session_id", "peer_id", "session_id"),)


# models.llm.client.estimate_tokens in SQL (a test keeps them equal): a message's token_count.
TOKEN_ESTIMATE = (
    "ceil(char_length(content) / 3.5 + (octet_length(content) - char_length(content)) / 1.5)::integer"
)


class Message(Base):
    __tablename__ = "messages"
    id: Mapped[str] = _id()
    seq: Mapped[int] = _seq()
    app_id: Mapped[str] = mapped_column(Text, nullable=False)
    # Whose memory it is: a v1 session's owner; in a session without one (v3), the sender.
    user_id: Mapped[str] = mapped_column(Text, nullable=False)
    session_id: Mapped[str] = mapped_column(
        Text, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False
    )
    # The sender: the user for a v1 message with is_user, else the app's assistant peer; the peer for v3.
    peer_id: Mapped[str] = mapped_column(Text, ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    is_user: Mapped[bool] = mapped_column(Boolean, nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    token_count: Mapped[int] = mapped_column(
        Integer, Computed(TOKEN_ESTIMATE, persisted=True), nullable=False
    )
    metadata_: Mapped[dict[str, Any]] = _metadata()
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (
        CheckConstraint("char_length(content) <= 50000", name="content_length"),
        Index("ix_messages_session_id_seq", "session_id", "seq"),
        Index("ix_messages_peer_id_seq", "peer_id", "seq"),
        Index("ix_messages_user_id_seq", "user_id", "seq"),
        *_metadata_checks("messages"),
    )


class Metamessage(Base):
    __tablename__ = "metamessages"
    id: Mapped[str] = _id()
    seq: Mapped[int] = _seq()
    app_id: Mapped[str] = mapped_column(Text, nullable=False)
    user_id: Mapped[str] = mapped_column(Text, ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    session_id: Mapped[str | None] = mapped_column(Text, ForeignKey("sessions.id", ondelete="CASCADE"))
    message_id: Mapped[str | None] = mapped_column(Text, ForeignKey("messages.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(Text, nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    metadata_: Mapped[dict[str, Any]] = _metadata()
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (
        CheckConstraint("char_length(label) BETWEEN 1 AND 50", name="label_length"),
        CheckConstraint("char_length(content) <= 50000", name="content_length"),
        CheckConstraint("message_id IS NULL OR session_id IS NOT NULL", name="message_requires_session"),
        Index("ix_metamessages_user_id_seq", "user_id", "seq"),
        Index("ix_metamessages_user_id_label_seq", "user_id", "label", "seq"),
        Index("ix_metamessages_session_id_seq", "session_id", "seq"),
        Index("ix_metamessages_message_id_seq", "message_id", "seq"),
        *_metadata_checks("metamessages"),
    )


class Collection(Base):
    __tablename__ = "collections"
    id: Mapped[str] = _id()
    seq: Mapped[int] = _seq()
    app_id: Mapped[str] = mapped_column(Text, nullable=False)
    user_id: Mapped[str] = mapped_column(Text, ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    # v3: the peer whose view of the user this holds; None for the user's own (Rapport's view of them)
    observer_id: Mapped[str | None] = mapped_column(Text, ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Text, nullable=False)
    metadata_: Mapped[dict[str, Any]] = _metadata()
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (
        UniqueConstraint("user_id", "name"),
        Index("ix_collections_observer_id_user_id", "observer_id", "user_id"),
        CheckConstraint("char_length(name) BETWEEN 1 AND 100", name="name_length"),
        Index("ix_collections_user_id_seq", "user_id", "seq"),
        *_metadata_checks("collections"),
    )


# A document's content as the deriver compares facts for exact repeats (storage.documents.normalized does
# the same in Python), indexed hashed per collection (migration 0007): contents can outgrow a btree entry.
NORMALIZED_CONTENT = "btrim(regexp_replace(lower(content), '[^0-9a-z]+', ' ', 'g'))"


class Document(Base):
    __tablename__ = "documents"
    id: Mapped[str] = _id()
    seq: Mapped[int] = _seq()
    app_id: Mapped[str] = mapped_column(Text, nullable=False)
    user_id: Mapped[str] = mapped_column(Text, nullable=False)
    collection_id: Mapped[str] = mapped_column(
        Text, ForeignKey("collections.id", ondelete="CASCADE"), nullable=False
    )
    content: Mapped[str] = mapped_column(Text, nullable=False)
    # v3: a conclusion's level, and the session it was drawn from (no foreign key: see migration 0011)
    level: Mapped[str] = mapped_column(
        Text, nullable=False, server_default=text("'explicit'"), default="explicit"
    )
    session_id: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = _metadata()
    created_at: Mapped[datetime] = _created_at()
    # A dream's verdict (migration 0014): when it stopped holding, and what replaced it
    invalid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    superseded_by: Mapped[str | None] = mapped_column(Text, ForeignKey("documents.id", ondelete="SET NULL"))

    __table_args__ = (
        CheckConstraint("char_length(content) BETWEEN 1 AND 100000", name="content_length"),
        Index(
            "ix_documents_superseded_by", "superseded_by", postgresql_where=text("superseded_by IS NOT NULL")
        ),
        Index("ix_documents_created_at_valid", "created_at", postgresql_where=text("invalid_at IS NULL")),
        CheckConstraint("level IN ('explicit', 'deductive', 'inductive', 'contradiction')", name="level"),
        Index("ix_documents_session_id", "session_id", postgresql_where=text("session_id IS NOT NULL")),
        Index("ix_documents_collection_id_seq", "collection_id", "seq"),
        Index("ix_documents_collection_id_normalized", "collection_id", text(f"md5({NORMALIZED_CONTENT})")),
        *_metadata_checks("documents"),
    )


class PeerCard(Base):
    """What one peer keeps about another, or about itself (observer = observed): short lines."""

    __tablename__ = "peer_cards"
    observer_id: Mapped[str] = mapped_column(
        Text, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    observed_id: Mapped[str] = mapped_column(
        Text, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    app_id: Mapped[str] = mapped_column(Text, nullable=False)
    card: Mapped[list[str]] = mapped_column(JSONB, nullable=False)
    derived: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default=text("false"), default=False
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )

    __table_args__ = (
        CheckConstraint("jsonb_typeof(card) = 'array'", name="card_is_list"),
        Index("ix_peer_cards_observed_id", "observed_id"),
    )


class Dream(Base):
    """A consolidation pass over what an observer holds about an observed peer (pipelines/dreams.py)."""

    __tablename__ = "dreams"
    id: Mapped[str] = _id()
    seq: Mapped[int] = _seq()
    app_id: Mapped[str] = mapped_column(Text, ForeignKey("apps.id", ondelete="CASCADE"), nullable=False)
    observer_id: Mapped[str] = mapped_column(Text, ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    observed_id: Mapped[str] = mapped_column(Text, ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(
        Text, nullable=False, server_default=text("'pending'"), default="pending"
    )
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"), default=0)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    not_before: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    token: Mapped[str | None] = mapped_column(Text)  # the lease of the worker that holds it
    leased_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created_at()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("status IN ('pending', 'running', 'done', 'failed')", name="status"),
        CheckConstraint("reason IN ('scheduled', 'requested', 'batch')", name="reason"),
        Index(
            "ix_dreams_open_pair",
            "observer_id",
            "observed_id",
            unique=True,
            postgresql_where=text("status IN ('pending', 'running')"),
        ),
        Index("ix_dreams_due", "not_before", postgresql_where=text("status = 'pending'")),
        Index("ix_dreams_observed_id", "observed_id"),
        Index("ix_dreams_observer_id", "observer_id"),
        Index("ix_dreams_app_id", "app_id"),
        Index("ix_dreams_lease", "leased_until", postgresql_where=text("status = 'running'")),
    )


class WebhookEndpoint(Base):
    """Where a workspace's webhook events go (pipelines/webhooks.py)."""

    __tablename__ = "webhook_endpoints"
    id: Mapped[str] = _id()
    seq: Mapped[int] = _seq()
    app_id: Mapped[str] = mapped_column(Text, ForeignKey("apps.id", ondelete="CASCADE"), nullable=False)
    url: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (
        UniqueConstraint("app_id", "url"),
        CheckConstraint("char_length(url) BETWEEN 1 AND 2048", name="url_length"),
    )


class WebhookDelivery(Base):
    """An event on its way to one endpoint (pipelines/webhooks.py delivers it; migration 0015)."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[str] = _id()
    seq: Mapped[int] = _seq()
    app_id: Mapped[str] = mapped_column(Text, ForeignKey("apps.id", ondelete="CASCADE"), nullable=False)
    endpoint_id: Mapped[str] = mapped_column(
        Text, ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=False
    )
    url: Mapped[str] = mapped_column(Text, nullable=False)
    event_type: Mapped[str] = mapped_column(Text, nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)  # the JSON as signed and sent
    status: Mapped[str] = mapped_column(
        Text, nullable=False, server_default=text("'pending'"), default="pending"
    )
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"), default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    not_before: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    created_at: Mapped[datetime] = _created_at()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status"),
        Index("ix_webhook_deliveries_due", "not_before", postgresql_where=text("status = 'pending'")),
        Index("ix_webhook_deliveries_endpoint_id", "endpoint_id"),
        Index("ix_webhook_deliveries_app_id", "app_id"),
    )


class IndexOutbox(Base):
    """Index work written in the same transaction as the rows it is about, so a crash between the
    commit and the LanceDB write loses nothing: whatever is here is applied (again) until it sticks."""

    __tablename__ = "index_outbox"
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    kind: Mapped[str] = mapped_column(Text, nullable=False)  # document | message
    action: Mapped[str] = mapped_column(Text, nullable=False)  # upsert | delete
    target_id: Mapped[str | None] = mapped_column(Text)  # the row, for upserts and single deletes
    scope: Mapped[dict[str, Any] | None] = mapped_column(
        JSONB
    )  # e.g. {"collection_id": ...} for bulk deletes
    attempts: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    parked: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    available_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (
        CheckConstraint("kind IN ('document', 'message')", name="kind"),
        CheckConstraint("action IN ('upsert', 'delete')", name="action"),
        CheckConstraint("target_id IS NOT NULL OR scope IS NOT NULL", name="has_target"),
        Index("ix_index_outbox_due", "available_at", "id", postgresql_where=text("NOT parked")),
    )


class DerivationItem(Base):
    """One message's derivation work, written by a trigger in the statement that stores the message
    (migration 0004), so no message is stored without it. Deleted by the statement that completes it
    (its session's ``done`` counts it); parked items stay, with why."""

    __tablename__ = "derivation_queue"
    # No foreign keys: checking them would lock the message's and the session's rows on every insert,
    # which cost concurrent writers of one session a tenth of their throughput (docs/benchmarks.md).
    # The trigger only ever queues messages it has just stored; whatever deletes messages deletes their
    # items too, and the deriver completes items whose messages have gone.
    message_id: Mapped[str] = mapped_column(Text, primary_key=True)
    session_id: Mapped[str] = mapped_column(Text, nullable=False)
    app_id: Mapped[str] = mapped_column(Text, nullable=False)
    user_id: Mapped[str] = mapped_column(Text, nullable=False)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)  # the message's: work goes in message order
    tokens: Mapped[int] = mapped_column(Integer, nullable=False)  # an estimate, to bound a batch
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    raw_output: Mapped[str | None] = mapped_column(Text)  # what the model said, when that was the problem
    created_at: Mapped[datetime] = _created_at()

    __table_args__ = (
        CheckConstraint("status IN ('pending', 'parked')", name="status"),
        Index(
            "ix_derivation_queue_pending", "session_id", "seq", postgresql_where=text("status = 'pending'")
        ),
        Index("ix_derivation_queue_app_user_status", "app_id", "user_id", "status"),
        Index("ix_derivation_queue_parked", "session_id", postgresql_where=text("status = 'parked'")),
    )


class DerivationSession(Base):
    """Per session that a worker has claimed: who holds it (a lease, so a worker that dies only delays
    the session) and, after a failure, when it may be tried again. Created by the first claim; message
    inserts never touch it, so storing messages does not queue up behind a session's row lock."""

    __tablename__ = "derivation_sessions"
    session_id: Mapped[str] = mapped_column(
        Text, ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    app_id: Mapped[str] = mapped_column(Text, nullable=False)
    user_id: Mapped[str] = mapped_column(Text, nullable=False)
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # backoff after a failure
    lease_owner: Mapped[str | None] = mapped_column(Text)
    leased_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    done: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))  # items derived
    last_done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    # The leases held now, per app: what a claim counts against limits.app_derivations (a small index:
    # a released lease has no owner).
    __table_args__ = (
        Index(
            "ix_derivation_sessions_app_id_held", "app_id", postgresql_where=text("lease_owner IS NOT NULL")
        ),
    )


class DerivationJob(Base):
    """A batch re-derivation (`rapport derive`): what it covers, how it was run, and where it stands."""

    __tablename__ = "derivation_jobs"
    id: Mapped[str] = _id()
    app_id: Mapped[str] = mapped_column(Text, ForeignKey("apps.id", ondelete="CASCADE"), nullable=False)
    mode: Mapped[str] = mapped_column(Text, nullable=False)  # replace | append
    selection: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)  # --all, --users, --since
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)  # actors, concurrency...
    model: Mapped[str] = mapped_column(Text, nullable=False)  # the deriver's LLM
    state: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'running'"))
    users_total: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    driver: Mapped[str | None] = mapped_column(Text)  # host:pid of the driver running it
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created_at()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("mode IN ('replace', 'append')", name="mode"),
        CheckConstraint("state IN ('running', 'stopped', 'cancelling', 'cancelled', 'done')", name="state"),
        Index("ix_derivation_jobs_app_id", "app_id"),  # an app's erasure cascades to its jobs
    )


class DerivationJobUser(Base):
    """One user of a job. ``n`` numbers the job's users (1, 2, ...): pages are read by it, in order."""

    __tablename__ = "derivation_job_users"
    job_id: Mapped[str] = mapped_column(
        Text, ForeignKey("derivation_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    n: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[str] = mapped_column(Text, nullable=False)
    state: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    owner: Mapped[str | None] = mapped_column(Text)  # the actor deriving it (state running)
    error: Mapped[str | None] = mapped_column(Text)
    messages: Mapped[int | None] = mapped_column(Integer)
    facts: Mapped[int | None] = mapped_column(Integer)
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("state IN ('pending', 'running', 'done', 'failed')", name="state"),
        UniqueConstraint("job_id", "user_id"),
        Index("ix_derivation_job_users_job_id_state_n", "job_id", "state", "n"),
        Index("ix_derivation_job_users_owner", "owner", postgresql_where=text("state = 'running'")),
    )


class DerivationApp(Base):
    """When each app's derivation work was last claimed: apps with work due take turns by it."""

    __tablename__ = "derivation_apps"
    app_id: Mapped[str] = mapped_column(Text, ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    last_claim_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class RateBucket(Base):
    """An app's request budget (limits.app_requests_per_s): a token bucket every API replica draws on.
    ``tokens`` is what was left at ``refilled_at``; what has accrued since is added when it is next read."""

    __tablename__ = "rate_buckets"
    app_id: Mapped[str] = mapped_column(Text, ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    tokens: Mapped[float] = mapped_column(Double, nullable=False)
    refilled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class WorkerStatus(Base):
    """What a derivation process says of itself, for /health: running, or paused and why (an LLM that
    refuses its key), when it last finished a batch, and when it last said so (a row not refreshed for a
    few minutes is a process that is gone)."""

    __tablename__ = "worker_status"
    worker: Mapped[str] = mapped_column(Text, primary_key=True)  # host/pid of the process
    kind: Mapped[str] = mapped_column(Text, nullable=False)  # deriver
    state: Mapped[str] = mapped_column(Text, nullable=False)
    detail: Mapped[str | None] = mapped_column(Text)
    progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    seen_at: Mapped[datetime] = _created_at()

    __table_args__ = (CheckConstraint("state IN ('running', 'paused')", name="state"),)
