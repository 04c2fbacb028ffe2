"""Input checks shared by the per-entity modules. Each raises InvalidError with a sentence to act on."""

from __future__ import annotations

import json
from typing import Any

from storage.errors import InvalidError, NotFoundError

NAME_MAX = 100
LABEL_MAX = 50
MESSAGE_CONTENT_MAX = 50_000
DOCUMENT_CONTENT_MAX = 100_000
METADATA_MAX_BYTES = 256 * 1024
PAGE_SIZE_MAX = 100
ID_MAX = 64


def _storable(text: str) -> bool:
    """PostgreSQL text holds neither NUL characters nor lone UTF-16 surrogates (which JSON allows)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def storable(text: str) -> bool:
    """Whether PostgreSQL can hold (and so compare) this text."""
    return _storable(text)


UNSTORABLE = "must not contain NUL characters or unpaired surrogates"


def check_name(name: Any, *, what: str = "name", max_length: int = NAME_MAX) -> str:
    """A resource name: a non-empty string of at most ``max_length`` characters, no NUL bytes."""
    return check_text(name, what=what, min_length=1, max_length=max_length)


def check_text(text: Any, *, what: str = "content", max_length: int, min_length: int = 0) -> str:
    if not isinstance(text, str):
        raise InvalidError(f"{what} must be a string, got {type(text).__name__}", field=(what,))
    if not min_length <= len(text) <= max_length:
        raise InvalidError(
            f"{what} must be {min_length} to {max_length} characters long, got {len(text)}", field=(what,)
        )
    if not _storable(text):
        raise InvalidError(f"{what} {UNSTORABLE}", field=(what,))
    return text


def check_metadata(metadata: Any, *, what: str = "metadata") -> dict[str, Any]:
    """Metadata is a JSON object of bounded size that PostgreSQL's JSONB can hold."""
    if metadata is None:
        return {}
    field = (what,)
    if not isinstance(metadata, dict):
        raise InvalidError(f"{what} must be a JSON object, got {type(metadata).__name__}", field=field)
    try:
        encoded = json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidError(
            f"{what} must be plain JSON (strings, numbers, booleans, lists, objects): {exc}", field=field
        ) from exc
    if len(encoded) > METADATA_MAX_BYTES:
        raise InvalidError(
            f"{what} is {len(encoded)} bytes as JSON; the limit is {METADATA_MAX_BYTES}", field=field
        )
    # JSONB cannot hold \u0000 anywhere, keys included, nor text that is not valid UTF-8.
    if "\\u0000" in encoded or not _storable(json.dumps(metadata, ensure_ascii=False)):
        raise InvalidError(f"{what} {UNSTORABLE}", field=field)
    return metadata


def check_filter(filter: Any) -> dict[str, Any] | None:
    """A metadata filter: None or a JSON object matched by containment (``@>``)."""
    if filter is None or filter == {}:
        return None
    return check_metadata(filter, what="filter")


def check_page(page: Any, size: Any) -> tuple[int, int]:
    if not isinstance(page, int) or isinstance(page, bool) or page < 1:
        raise InvalidError(f"page must be an integer of at least 1, got {page!r}", field=("page",))
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= PAGE_SIZE_MAX:
        raise InvalidError(
            f"size must be an integer from 1 to {PAGE_SIZE_MAX}, got {size!r}", field=("size",)
        )
    return page, size


def check_id(value: Any, *, what: str) -> str:
    """Ids are opaque strings; one that could never have been issued matches no row: not found."""
    if not isinstance(value, str) or not value or len(value) > ID_MAX or not _storable(value):
        raise NotFoundError(f"{what} {str(value)[:40]!r} not found")
    return value


def check_name_findable(value: Any, *, what: str, most: int = 512) -> str:
    """A name to look up: one that could never have been stored matches no row (not found)."""
    if not isinstance(value, str) or not value or len(value) > most or not _storable(value):
        raise NotFoundError(f"{what} {str(value)[:40]!r} not found")
    return value


def check_ids(**ids: Any) -> None:
    """check_id for each keyword: ``check_ids(app=app_id, user=user_id)``."""
    for what, value in ids.items():
        check_id(value, what=what)


def check_changes(*, name: Any = None, metadata: Any = None) -> dict[str, Any]:
    """The columns an update of a named resource sets: only the fields given, each checked."""
    values: dict[str, Any] = {}
    if name is not None:
        values["name"] = check_name(name)
    if metadata is not None:
        values["metadata_"] = check_metadata(metadata)
    return values
