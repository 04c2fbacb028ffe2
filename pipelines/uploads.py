"""A file uploaded to a v3 session, as the text of its messages: a PDF's pages, a text file, a JSON
document; cut into messages of at most 25,000 characters at paragraph, line, sentence or word breaks."""

from __future__ import annotations

import io
import json

from storage.errors import InvalidError

FILE_MAX_BYTES = 5 * 1024 * 1024  # Honcho v3's MAX_FILE_SIZE
CHUNK_MAX = 25_000  # a v3 message's most characters
BREAKS = ("\n\n", "\n", ". ", " ")


class UnsupportedFile(Exception):
    """A file of a type Rapport cannot read text from (HTTP 415)."""


def text_of(data: bytes, content_type: str, filename: str) -> str:
    """The text of a file: PDF pages (each headed ``[Page n]``), text as UTF-8, JSON re-serialised."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/pdf" or (
        kind == "application/octet-stream" and filename.lower().endswith(".pdf")
    ):
        return _pdf_text(data)
    if kind == "application/json" or (
        kind == "application/octet-stream" and filename.lower().endswith(".json")
    ):
        try:
            return json.dumps(json.loads(data), ensure_ascii=False, indent=2)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidError(f"{filename} is not valid JSON: {exc}", field=("file",)) from exc
    if kind.startswith("text/") or (
        kind == "application/octet-stream" and filename.lower().endswith((".txt", ".md"))
    ):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidError(f"{filename} is not UTF-8 text: {exc}", field=("file",)) from exc
    raise UnsupportedFile(
        f"{filename}: files of type {kind or 'unknown'} are not read; send PDF, text (text/*) or JSON"
    )


def _pdf_text(data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError) as exc:
        raise InvalidError(f"the PDF could not be read: {exc}", field=("file",)) from exc
    return "\n\n".join(f"[Page {n}]\n{text}" for n, text in enumerate(pages, start=1))


def chunks(text: str, most: int = CHUNK_MAX) -> list[str]:
    """``text`` in pieces of at most ``most`` characters, each cut at the last paragraph break before
    the limit, else line break, sentence end or space (else at the limit). An empty text is one empty
    piece."""
    pieces: list[str] = []
    while len(text) > most:
        window = text[:most]
        cut = next((window.rfind(b) + len(b) for b in BREAKS if window.rfind(b) > 0), most)
        pieces.append(text[:cut])
        text = text[cut:]
    pieces.append(text)
    return pieces
