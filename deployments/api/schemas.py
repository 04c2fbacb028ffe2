"""Request and response bodies, field for field as in Honcho v1.1.0's OpenAPI document.

Names matter: FastAPI names the OpenAPI components after these classes, and a test compares them with
the contract. Rows from ``storage`` become responses through ``from_row``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, computed_field

from storage.query import Page as StoragePage

Metadata = dict[str, Any]


class RequestBody(BaseModel):
    """A request body: JSON types are taken as the contract declares them (``0`` is not ``false``,
    ``"5"`` is not ``5``). Query parameters are text on the wire and keep FastAPI's usual parsing."""

    model_config = ConfigDict(strict=True)


class _Row(BaseModel):
    """A response built from a storage row: ``metadata_`` on the row is ``metadata`` on the wire."""

    @classmethod
    def from_row(cls, row: Any) -> Any:
        values = {name: getattr(row, name) for name in cls.model_fields if name != "metadata"}
        return cls.model_construct(**values, metadata=row.metadata_)  # rows are already validated


# --- apps -------------------------------------------------------------------------------------------


class App(_Row):
    id: str
    name: str
    metadata: Metadata = {}
    created_at: datetime


class AppCreate(RequestBody):
    name: str = Field(min_length=1, max_length=100)
    metadata: Metadata = {}


class AppUpdate(RequestBody):
    name: str | None = None
    metadata: Metadata | None = None


class AppGet(RequestBody):
    filter: Metadata | None = None


# --- users ------------------------------------------------------------------------------------------


class User(_Row):
    id: str
    name: str
    app_id: str
    created_at: datetime
    metadata: Metadata = {}


class UserCreate(RequestBody):
    name: str = Field(min_length=1, max_length=100)
    metadata: Metadata = {}


class UserUpdate(RequestBody):
    name: str | None = None
    metadata: Metadata | None = None


class UserGet(RequestBody):
    filter: Metadata | None = None


# --- sessions ---------------------------------------------------------------------------------------


class Session(_Row):
    id: str
    is_active: bool
    user_id: str
    app_id: str
    metadata: Metadata = {}
    created_at: datetime


class SessionCreate(RequestBody):
    metadata: Metadata = {}


class SessionUpdate(RequestBody):
    metadata: Metadata


class SessionGet(RequestBody):
    filter: Metadata | None = None
    is_active: bool = False


# --- messages ---------------------------------------------------------------------------------------


class Message(_Row):
    id: str
    content: str
    is_user: bool
    session_id: str
    metadata: Metadata = {}
    created_at: datetime
    app_id: str
    user_id: str


class MessageCreate(RequestBody):
    content: str = Field(min_length=0, max_length=50_000)
    is_user: bool
    metadata: Metadata = {}


class MessageBatchCreate(RequestBody):
    """Schema for batch message creation with a max of 100 messages"""

    messages: list[MessageCreate] = Field(max_length=100)


class MessageUpdate(RequestBody):
    metadata: Metadata


class MessageGet(RequestBody):
    filter: Metadata | None = None


# --- metamessages -----------------------------------------------------------------------------------


class Metamessage(_Row):
    id: str
    label: str
    content: str
    user_id: str
    app_id: str
    session_id: str | None
    message_id: str | None
    metadata: Metadata = {}
    created_at: datetime

    @computed_field  # type: ignore[prop-decorator]
    @property
    def metamessage_type(self) -> str:
        """The label, under the name older Honcho clients send and read."""
        return self.label


class MetamessageCreate(RequestBody):
    # Honcho v1.1.0 clients send `metamessage_type`; `label` is accepted as well.
    metamessage_type: str = Field(
        min_length=1, max_length=50, validation_alias=AliasChoices("metamessage_type", "label")
    )
    content: str = Field(min_length=0, max_length=50_000)
    session_id: str | None = None
    message_id: str | None = None
    metadata: Metadata = {}


class MetamessageUpdate(RequestBody):
    session_id: str | None = None
    message_id: str | None = None
    metamessage_type: str | None = Field(
        default=None, validation_alias=AliasChoices("metamessage_type", "label")
    )
    metadata: Metadata | None = None


class MetamessageGet(RequestBody):
    metamessage_type: str | None = Field(
        default=None, validation_alias=AliasChoices("metamessage_type", "label")
    )
    session_id: str | None = None
    message_id: str | None = None
    filter: Metadata | None = None


# --- collections and documents ----------------------------------------------------------------------


class Collection(_Row):
    id: str
    name: str
    user_id: str
    app_id: str
    metadata: Metadata = {}
    created_at: datetime


class CollectionCreate(RequestBody):
    name: str = Field(min_length=1, max_length=100)
    metadata: Metadata = {}


class CollectionUpdate(RequestBody):
    name: str | None = None
    metadata: Metadata | None = None


class CollectionGet(RequestBody):
    filter: Metadata | None = None


class Document(_Row):
    id: str
    content: str
    metadata: Metadata = {}
    created_at: datetime
    collection_id: str
    app_id: str
    user_id: str


class DocumentCreate(RequestBody):
    content: str = Field(min_length=1, max_length=100_000)
    metadata: Metadata = {}


class DocumentUpdate(RequestBody):
    metadata: Annotated[Metadata, Field(max_length=10_000)] | None = None
    content: str | None = Field(default=None, min_length=1, max_length=100_000)


class DocumentGet(RequestBody):
    filter: Metadata | None = None


class DocumentQuery(RequestBody):
    query: str = Field(min_length=1, max_length=1000)
    filter: Metadata | None = None
    top_k: int = Field(default=5, ge=1, le=50)


# --- dialectic --------------------------------------------------------------------------------------


class DialecticOptions(RequestBody):
    queries: str | list[str]
    stream: bool = False


class DialecticResponse(BaseModel):
    content: str


# --- pages ------------------------------------------------------------------------------------------

T = TypeVar("T", bound=_Row)


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(ge=0)
    page: int = Field(ge=1)
    size: int = Field(ge=1)
    # Optional on the wire, as in Honcho's Page; always filled in by page_of.
    pages: int = Field(default=0, ge=0, json_schema_extra=_no_default)


def page_of(model: type[T], page: StoragePage[Any]) -> Page[T]:
    """A storage page as the wire's ``Page[...]``."""
    return Page[model].model_construct(  # type: ignore[valid-type]
        items=[model.from_row(row) for row in page.items],
        total=page.total,
        page=page.page,
        size=page.size,
        pages=page.pages,
    )


class Erasure(BaseModel):
    """What an erasure removed (a Rapport extension): counts of the rows that held their content."""

    messages: int
    documents: int
