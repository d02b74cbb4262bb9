"""The recovery sweep: Postgres is the source of truth, so a query whose queue message was
lost (Redis flushed, a worker killed before its message was restored) is found here and queued
again. Tasks are idempotent, so queuing a query that is merely slow costs nothing but a no-op.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from services import budgets
from services.models import Query, QueryStatus, Tier, utcnow

TIER_OF_STATUS = {
    QueryStatus.QUEUED: Tier.SMALL,
    QueryStatus.RUNNING: Tier.SMALL,
    QueryStatus.ESCALATED: Tier.LARGE,
}


def claim_stuck_queries(
    session: Session, *, stuck_after_s: float, limit: int = 500
) -> list[tuple[uuid.UUID, Tier]]:
    """Non-terminal queries untouched for ``stuck_after_s`` and not under a live lease.

    Each one found is stamped as touched now, so the next sweep leaves it alone for another
    ``stuck_after_s`` while its new message is on its way.
    """
    now = utcnow()
    stuck = session.scalars(
        select(Query)
        .where(
            Query.status.in_(list(TIER_OF_STATUS)),
            Query.updated_at < now - timedelta(seconds=stuck_after_s),
            or_(Query.lease_expires_at.is_(None), Query.lease_expires_at < now),
        )
        .order_by(Query.updated_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for query in stuck:
        query.updated_at = now
    return [(query.id, TIER_OF_STATUS[QueryStatus(query.status)]) for query in stuck]


def sweep(session: Session, *, stuck_after_s: float) -> list[tuple[uuid.UUID, Tier]]:
    """One pass of the recovery sweep: queries to queue again, and budget reservations that no
    call can settle any more given back."""
    release_abandoned_reservations(session)
    return claim_stuck_queries(session, stuck_after_s=stuck_after_s)


def release_abandoned_reservations(session: Session, *, limit: int = 500) -> int:
    """A query cancelled while its call ran keeps that call's reservation for the call to
    settle; once the call's lease has run out with nothing settled, give it back."""
    now = utcnow()
    abandoned = session.scalars(
        select(Query)
        .where(
            Query.status == QueryStatus.CANCELLED,
            or_(Query.reserved_small > 0, Query.reserved_large > 0),
            or_(Query.lease_expires_at.is_(None), Query.lease_expires_at < now),
        )
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for query in abandoned:
        budgets.release(session, query=query)
    return len(abandoned)


def reclaim_unfinished_queries(session: Session) -> list[tuple[uuid.UUID, Tier]]:
    """Every unfinished query, with its lease released.

    Only for the embedded default at start-up: it is the one process, so no delivery from
    before the restart can still be running.
    """
    unfinished = session.scalars(
        select(Query).where(Query.status.in_(list(TIER_OF_STATUS))).order_by(Query.created_at)
    ).all()
    now = utcnow()
    for query in unfinished:
        query.lease_expires_at = None
        query.updated_at = now
    return [(query.id, TIER_OF_STATUS[QueryStatus(query.status)]) for query in unfinished]
