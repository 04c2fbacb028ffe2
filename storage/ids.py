"""Opaque public ids: 21 URL-safe random characters ([A-Za-z0-9_-]), like Honcho's nanoids."""

from __future__ import annotations

import base64
import secrets

ID_LENGTH = 21


def new_id() -> str:
    """A new random id with 126 bits of entropy."""
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).decode("ascii")[:ID_LENGTH]
