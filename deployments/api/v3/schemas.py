"""Honcho v3's request and response bodies, field for field as in its OpenAPI document (v3.0.12).

A test compares the served document with the vendored contract (tests/api/contracts). v3 ids on the
wire are names: a workspace is an app by name, a peer a user by name, a session by its name. Unknown
body keys are ignored, as upstream does; JSON types are taken as declared (``"5"`` is not ``5``), but
times are ISO-8601 text.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from deployments.api.schemas import RequestBody
from storage.query import Page as StoragePage

Metadata = dict[str, Any]
Name = Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[a-zA-Z0-9_-]+$")]
Filters = Metadata | None


def _iso_text(value: Any) -> Any:
    """A time in a JSON body is ISO-8601 text (a number is not read as seconds since the epoch)."""
    if not isinstance(value, str):
        raise ValueError("a time is ISO-8601 text, e.g. 2026-01-02T03:04:05Z")
    return value


Time = Annotated[datetime, BeforeValidator(_iso_text), Field(strict=False)]


# --- configuration ------------------------------------------------------------------------------------


class ReasoningConfiguration(RequestBody):
    enabled: bool | None = None
    custom_instructions: str | None = None


class PeerCardConfiguration(RequestBody):
    use: bool | None = None
    create: bool | None = None


class SummaryConfiguration(RequestBody):
    enabled: bool | None = None
    messages_per_short_summary: int | None = Field(default=None, ge=10)
    messages_per_long_summary: int | None = Field(default=None, ge=20)


class DreamConfiguration(RequestBody):
    enabled: bool | None = None


class WorkspaceConfiguration(RequestBody):
    model_config = ConfigDict(strict=True, extra="allow")
    reasoning: ReasoningConfiguration | None = None
    peer_card: PeerCardConfiguration | None = None
    summary: SummaryConfiguration | None = None
    dream: DreamConfiguration | None = None


class SessionConfiguration(WorkspaceConfiguration):
    pass


class MessageConfiguration(RequestBody):
    reasoning: ReasoningConfiguration | None = None


def configuration(value: BaseModel | None) -> dict[str, Any] | None:
    """A configuration as stored: what was said, without the unset keys."""
    return None if value is None else value.model_dump(exclude_none=True)


# --- workspaces ---------------------------------------------------------------------------------------


class Workspace(BaseModel):
    id: str
    metadata: Metadata = Field(default_factory=dict)
    configuration: Metadata = Field(default_factory=dict)
    created_at: datetime

    @classmethod
    def of(cls, row: Any) -> Workspace:
        return cls.model_construct(
            id=row.name, metadata=row.metadata_, configuration=row.configuration, created_at=row.created_at
        )


class WorkspaceCreate(RequestBody):
    id: Name
    metadata: Metadata = {}
    configuration: WorkspaceConfiguration = Field(default_factory=WorkspaceConfiguration)


class WorkspaceUpdate(RequestBody):
    metadata: Metadata | None = None
    configuration: WorkspaceConfiguration | None = None


class WorkspaceGet(RequestBody):
    filters: Filters = None


# --- peers --------------------------------------------------------------------------------------------


class Peer(BaseModel):
    id: str
    workspace_id: str
    created_at: datetime
    metadata: Metadata = Field(default_factory=dict)
    configuration: Metadata = Field(default_factory=dict)

    @classmethod
    def of(cls, row: Any, workspace: str) -> Peer:
        return cls.model_construct(
            id=row.name,
            workspace_id=workspace,
            created_at=row.created_at,
            metadata=row.metadata_,
            configuration=row.configuration,
        )


class PeerCreate(RequestBody):
    id: Name
    metadata: Metadata | None = None
    configuration: Metadata | None = None


class PeerUpdate(RequestBody):
    metadata: Metadata | None = None
    configuration: Metadata | None = None


class PeerGet(RequestBody):
    filters: Filters = None


# --- sessions -----------------------------------------------------------------------------------------


class SessionPeerConfig(RequestBody):
    observe_me: bool | None = None
    observe_others: bool | None = None

    def pair(self) -> tuple[bool | None, bool | None]:
        return self.observe_me, self.observe_others


class Session(BaseModel):
    id: str
    is_active: bool
    workspace_id: str
    metadata: Metadata = Field(default_factory=dict)
    configuration: Metadata = Field(default_factory=dict)
    created_at: datetime

    @classmethod
    def of(cls, row: Any, workspace: str) -> Session:
        return cls.model_construct(
            id=row.name,
            is_active=row.is_active,
            workspace_id=workspace,
            metadata=row.metadata_,
            configuration=row.configuration,
            created_at=row.created_at,
        )


class SessionCreate(RequestBody):
    id: Name
    metadata: Metadata | None = None
    peers: dict[str, SessionPeerConfig] | None = None
    configuration: SessionConfiguration | None = None


class SessionUpdate(RequestBody):
    metadata: Metadata | None = None
    configuration: SessionConfiguration | None = None


class SessionGet(RequestBody):
    filters: Filters = None


# --- messages -----------------------------------------------------------------------------------------


class Message(BaseModel):
    id: str
    content: str
    peer_id: str
    session_id: str
    metadata: Metadata = Field(default_factory=dict)
    created_at: datetime
    workspace_id: str
    token_count: int

    @classmethod
    def of(cls, row: Any, workspace: str, session: str, peer: str) -> Message:
        return cls.model_construct(
            id=row.id,
            content=row.content,
            peer_id=peer,
            session_id=session,
            metadata=row.metadata_,
            created_at=row.created_at,
            workspace_id=workspace,
            token_count=row.token_count,
        )


class MessageCreate(RequestBody):
    content: str = Field(min_length=0, max_length=25_000)
    peer_id: str
    metadata: Metadata | None = None
    configuration: MessageConfiguration | None = None
    created_at: Time | None = None


class MessageBatchCreate(RequestBody):
    messages: list[MessageCreate] = Field(min_length=1, max_length=100)


class MessageUpdate(RequestBody):
    metadata: Metadata | None = None


class MessageGet(RequestBody):
    filters: Filters = None


class MessageSearchOptions(RequestBody):
    query: str
    filters: Filters = None
    limit: int = Field(default=10, ge=1, le=100)


# --- pages --------------------------------------------------------------------------------------------

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(ge=0)
    page: int = Field(ge=1)
    size: int = Field(ge=1)
    pages: int = Field(ge=0)


def page(model: type[T], items: list[T], source: StoragePage[Any]) -> Page[T]:
    """A storage page as the wire's ``Page[model]`` (of that very class: FastAPI then sends it as it is,
    where a ``Page`` of another item type would be dumped and validated again, item by item)."""
    return Page[model].model_construct(  # type: ignore[valid-type]
        items=items, total=source.total, page=source.page, size=source.size, pages=source.pages
    )


# --- session context --------------------------------------------------------------------------------


class Summary(BaseModel):
    content: str
    message_id: str
    summary_type: str
    created_at: str
    token_count: int

    @classmethod
    def of(cls, summary: Any) -> Summary:
        return cls.model_construct(
            content=summary.content,
            message_id=summary.message_id,
            summary_type=summary.label,
            created_at=summary.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            token_count=summary.token_count,
        )


class SessionSummaries(BaseModel):
    id: str
    short_summary: Summary | None = None
    long_summary: Summary | None = None


class SessionContext(BaseModel):
    id: str
    messages: list[Message]
    summary: Summary | None = None
    peer_representation: str | None = None
    peer_card: list[str] | None = None


# --- conclusions, peer cards, representations ---------------------------------------------------------

ConclusionLevel = Literal["explicit", "deductive", "inductive", "contradiction"]


class Conclusion(BaseModel):
    id: str
    content: str
    observer_id: str
    observed_id: str
    session_id: str | None = None
    level: ConclusionLevel = "explicit"
    created_at: datetime

    @classmethod
    def of(cls, row: Any) -> Conclusion:
        return cls.model_construct(
            id=row.id,
            content=row.content,
            observer_id=row.observer_name,
            observed_id=row.observed_name,
            session_id=row.session_name,
            level=row.level,
            created_at=row.created_at,
        )


class ConclusionCreate(RequestBody):
    content: str = Field(min_length=1, max_length=65535)
    observer_id: str
    observed_id: str
    session_id: str | None = None


class ConclusionBatchCreate(RequestBody):
    conclusions: list[ConclusionCreate] = Field(min_length=1, max_length=100)


class ConclusionGet(RequestBody):
    filters: Filters = None


class ConclusionQuery(RequestBody):
    query: str
    top_k: int = Field(default=10, ge=1, le=100)
    distance: float | None = Field(default=None, ge=0.0, le=1.0)
    filters: Filters = None


class PeerCardResponse(BaseModel):
    peer_card: list[str] | None = None


class PeerCardSet(RequestBody):
    peer_card: list[str]


class PeerRepresentationGet(RequestBody):
    session_id: str | None = None
    target: str | None = None
    search_query: str | None = None
    search_top_k: int | None = Field(default=None, ge=1, le=100)
    search_max_distance: float | None = Field(default=None, ge=0.0, le=1.0)
    include_most_frequent: bool | None = None
    max_conclusions: int | None = Field(default=25, ge=1, le=100)


class RepresentationResponse(BaseModel):
    representation: str


class DialecticOptions(RequestBody):
    """Peer chat. ``filters`` and ``response_format`` are v3.0.12's, newer than its OpenAPI document."""

    session_id: str | None = None
    filters: Filters = None
    target: str | None = None
    query: str = Field(min_length=1, max_length=10_000)
    stream: bool = False
    reasoning_level: Literal["minimal", "low", "medium", "high", "max"] = "low"
    response_format: Metadata | None = None


class DialecticResponse(BaseModel):
    content: str | None


class SupersededConclusion(BaseModel):
    """A conclusion a dream found no longer holds (a Rapport extension), with what replaced it."""

    id: str
    content: str
    level: str
    created_at: datetime
    invalid_at: datetime
    superseded_by: str | None
    replacement: str | None

    @classmethod
    def of(cls, row: Any) -> SupersededConclusion:
        return cls.model_construct(
            id=row.id,
            content=row.content,
            level=row.level,
            created_at=row.created_at,
            invalid_at=row.invalid_at,
            superseded_by=row.superseded_by,
            replacement=row.replacement,
        )


class PeerContext(BaseModel):
    peer_id: str
    target_id: str
    representation: str | None = None
    peer_card: list[str] | None = None


# --- the queue ----------------------------------------------------------------------------------------


class SessionQueueStatus(BaseModel):
    session_id: str | None = None
    total_work_units: int
    completed_work_units: int
    in_progress_work_units: int
    pending_work_units: int


class QueueStatus(BaseModel):
    total_work_units: int
    completed_work_units: int
    in_progress_work_units: int
    pending_work_units: int
    sessions: dict[str, SessionQueueStatus] | None = None


class DreamType(StrEnum):
    omni = "omni"


class ScheduleDreamRequest(RequestBody):
    observer: str
    observed: str | None = None
    dream_type: DreamType = Field(strict=False)
    session_id: str | None = None


# --- webhooks -----------------------------------------------------------------------------------------


class WebhookEndpoint(BaseModel):
    id: str
    workspace_id: str | None
    url: str
    created_at: datetime

    @classmethod
    def of(cls, row: Any, workspace: str) -> WebhookEndpoint:
        return cls.model_construct(id=row.id, workspace_id=workspace, url=row.url, created_at=row.created_at)


class WebhookEndpointCreate(RequestBody):
    url: str
