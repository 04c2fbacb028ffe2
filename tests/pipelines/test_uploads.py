"""Cutting an uploaded file's text into messages."""

from __future__ import annotations

import pytest

from pipelines.uploads import UnsupportedFile, chunks, text_of
from storage.errors import InvalidError


def test_pieces_are_cut_at_the_best_break_before_the_limit() -> None:
    assert chunks("") == [""]
    assert chunks("short") == ["short"]
    assert chunks("one two. three four", most=12) == ["one two. ", "three four"]
    assert chunks("line one\nline two", most=12) == ["line one\n", "line two"]
    assert chunks("para\n\nnext line\nmore", most=16) == ["para\n\n", "next line\nmore"]
    assert chunks("abcdefghij", most=4) == ["abcd", "efgh", "ij"]  # no break: cut at the limit
    text = "word " * 10_000
    assert "".join(chunks(text, most=999)) == text and all(len(c) <= 999 for c in chunks(text, most=999))


def test_only_readable_files_are_read() -> None:
    assert text_of("héllo".encode(), "text/plain; charset=utf-8", "a.txt") == "héllo"
    assert text_of(b"notes", "application/octet-stream", "a.md") == "notes"
    with pytest.raises(UnsupportedFile):
        text_of(b"\x00", "image/png", "a.png")
    with pytest.raises(InvalidError):
        text_of(b"\xff\xfe", "text/plain", "a.txt")
    with pytest.raises(InvalidError):
        text_of(b"{nope", "application/json", "a.json")
    with pytest.raises(InvalidError):
        text_of(b"%PDF-1.4 broken", "application/pdf", "a.pdf")
