"""Newest-first pages of a tenant's rows (queries, files, batches), continued by keyset.

A page ends at its last row; the next page starts strictly before it in (created_at, id)
order, so rows written meanwhile neither repeat nor shift a page.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

Row = TypeVar("Row")


def newest_first(
    session: Session,
    statement: Select[Row],
    entity: Any,  # a mapped class with ``created_at`` and ``id``
    *,
    after: tuple[datetime, Any] | None,
    limit: int,
) -> tuple[list[Row], bool]:
    """Up to ``limit`` rows of ``statement`` older than ``after`` (created_at, id), newest
    first; and whether more follow."""
    if after is not None:
        created_at, last_id = after
        statement = statement.where(
            or_(
                entity.created_at < created_at,
                and_(entity.created_at == created_at, entity.id < last_id),
            )
        )
    rows = session.scalars(
        statement.order_by(entity.created_at.desc(), entity.id.desc()).limit(limit + 1)
    ).all()
    return list(rows[:limit]), len(rows) > limit
