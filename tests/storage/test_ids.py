"""Ids: URL-safe, of a fixed length, and never read as a command-line option."""

from __future__ import annotations

import re

from storage.ids import ID_LENGTH, new_id


def test_ids_start_with_a_letter_or_digit() -> None:
    # One id in 32 started with '-' or '_' before: `rapport jobs status -J3l...` read it as an option.
    ids = [new_id() for _ in range(20_000)]
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]+", i) and len(i) == ID_LENGTH for i in ids)
    assert len(set(ids)) == len(ids)
