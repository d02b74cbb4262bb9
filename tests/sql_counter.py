"""The SQL statements a block of code sends: their text, or a count per kind (SELECT, ...).

Used by the statement-count test and by bench/pipeline.py; it listens on the process's engine,
so it sees every statement of every session in this process.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from services.db import get_engine


@contextmanager
def sent_statements() -> Iterator[list[str]]:
    """A list filled while the block runs: the text of each statement sent."""
    sent: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", note)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", note)


@contextmanager
def counted_statements() -> Iterator[Counter[str]]:
    """A Counter filled while the block runs: one count per statement, keyed by its verb."""
    counts: Counter[str] = Counter()
    with sent_statements() as sent:
        try:
            yield counts
        finally:
            counts.update(statement.lstrip().split(None, 1)[0].upper() for statement in sent)
