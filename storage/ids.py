"""Opaque public ids: 21 URL-safe random characters ([A-Za-z0-9_-]), like Honcho's nanoids."""

from __future__ import annotations

import base64
import secrets

ID_LENGTH = 21


def new_id() -> str:
    """A new random id with about 126 bits of entropy that starts with a letter or digit (an id that
    starts with '-' reads as an option on a command line: `rapport jobs status -J3l...`)."""
    while True:
        candidate = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode("ascii")[:ID_LENGTH]
        if candidate[0].isalnum():
            return candidate
