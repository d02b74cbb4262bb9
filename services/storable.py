"""Text PostgreSQL can store, whichever door a request came in by; and the request fields every
door (the REST API, the OpenAI-compatible routes) takes on the same terms."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, StringConstraints


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


# A task label names a threshold scope (with the tenant and the model pair).
TaskLabel = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
]
# Where a query's own events are sent.
WebhookUrl = Annotated[
    str,
    StringConstraints(min_length=1, max_length=2000, pattern=r"^https?://[^\s\x00]+$"),
    AfterValidator(storable_text),
]
