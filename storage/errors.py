"""Domain errors raised by the storage layer; the API maps each to one HTTP status in one place."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError, IntegrityError


class StorageError(Exception):
    """Base class: ``detail`` is a sentence that says what went wrong and what to do."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFoundError(StorageError):
    """The resource does not exist (or is not under the given parent)."""


class ConflictError(StorageError):
    """The write clashes with an existing row, e.g. a name that is already taken."""


Field = tuple[str | int, ...]


class InvalidError(StorageError):
    """The input can never be stored as given (too long, wrong type, reserved...).

    ``field`` names the offending input as the caller gave it (``("metadata",)``, ``("messages", 3,
    "content")``); empty when the input as a whole is at fault.
    """

    def __init__(self, detail: str, *, field: Field = ()) -> None:
        super().__init__(detail)
        self.field = field

    def within(self, *prefix: str | int) -> InvalidError:
        """The same error for an input nested under ``prefix`` (an item of a batch, say)."""
        return InvalidError(self.detail, field=(*prefix, *self.field))


class UnavailableError(StorageError):
    """A store (the database, the search index) or a model cannot be reached just now; retrying later
    may succeed. ``what`` names it for the operator."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(detail)
        self.what = what


# PostgreSQL SQLSTATE codes we translate. Anything else is a bug or an outage and stays a 500.
_UNIQUE_VIOLATION = "23505"
_FOREIGN_KEY_VIOLATION = "23503"
_CHECK_VIOLATION = "23514"
_NOT_NULL_VIOLATION = "23502"
_STRING_TOO_LONG = "22001"
_UNTRANSLATABLE = "22P05"  # e.g. \u0000 in JSONB
_INVALID_TEXT = "22021"  # e.g. NUL byte in TEXT
_INVALID_TEXT_REPRESENTATION = "22P02"  # e.g. JSON that PostgreSQL's parser refuses


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


@contextmanager
def translate_integrity_errors(
    *, conflict: str = "that name is already taken", missing: str = "a parent resource does not exist"
) -> Iterator[None]:
    """Turn constraint violations from the statements inside into domain errors.

    The caller's transaction is aborted by such a violation; the unit of work rolls it back, so a failed
    request leaves nothing behind.
    """
    try:
        yield
    except IntegrityError as exc:
        state = _sqlstate(exc)
        if state == _UNIQUE_VIOLATION:
            raise ConflictError(conflict) from exc
        if state == _FOREIGN_KEY_VIOLATION:
            raise NotFoundError(missing) from exc
        if state in (_CHECK_VIOLATION, _NOT_NULL_VIOLATION):
            constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
            raise InvalidError(f"the input breaks the rule {constraint or 'of the table'}") from exc
        raise
    except DBAPIError as exc:
        if _sqlstate(exc) in (_STRING_TOO_LONG, _UNTRANSLATABLE, _INVALID_TEXT, _INVALID_TEXT_REPRESENTATION):
            raise InvalidError(
                "the input holds text PostgreSQL cannot store (too long or a NUL byte)"
            ) from exc
        raise
