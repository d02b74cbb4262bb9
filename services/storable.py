"""Text PostgreSQL can store, whichever door a request came in by."""

from __future__ import annotations


def storable_text(text: str) -> str:
    """Refuse what PostgreSQL cannot store: its text type holds no NUL character, and UTF-8
    no unpaired surrogate (JSON allows both, as ``\\u0000`` and ``\\ud800``)."""
    if "\x00" in text:
        raise ValueError("must not contain the NUL character (\\u0000)")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            raise ValueError("must be valid Unicode: it holds an unpaired surrogate") from exc
    return text
