"""Count the SQL statements a block of code sends, per kind (SELECT, INSERT, ...).

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
def counted_statements() -> Iterator[Counter[str]]:
    """A Counter filled while the block runs: one count per statement, keyed by its verb."""
    counts: Counter[str] = Counter()

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        counts[statement.lstrip().split(None, 1)[0].upper()] += 1

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield counts
    finally:
        event.remove(engine, "before_cursor_execute", count)
