"""The recovery sweep: Postgres is the source of truth, so a query whose worker died mid-call,
or whose queue message was lost (Redis flushed, a worker killed holding it), is found here and
queued again. Tasks are idempotent, so a message sent twice costs a no-op, but a backlog sent
twice would double the queue; the sweep therefore queues a waiting query again only when the
broker shows that its message should have been taken already.

Two signs, each definite:

- a lease that ran out: leases are renewed while their call runs (services.leases), so the
  worker that held it is gone;
- a waiting query (no lease) sent to its queue before the oldest message still waiting there,
  by more than ``stuck_after_s``: the queue is first in, first out, so its message was taken
  by a worker that never claimed the query, or lost.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session

from services import lifecycle
from services.models import Query, QueryStatus, Tier, utcnow

TIER_OF_STATUS = {
    QueryStatus.QUEUED: Tier.SMALL,
    QueryStatus.RUNNING: Tier.SMALL,
    QueryStatus.ESCALATED: Tier.LARGE,
}
STATUSES_OF_TIER = {
    tier: [status for status, of in TIER_OF_STATUS.items() if of is tier] for tier in Tier
}
# The tiers of a two-tier cascade; with middle tiers the caller passes the settings' names,
# and an escalated query goes back to its stage's queue (``lifecycle.waiting_tier``).
TWO_TIERS: tuple[str, ...] = (Tier.SMALL, Tier.LARGE)

# When the oldest message still waiting in each tier's queue was sent (now, for an empty
# queue); None where the broker cannot tell, and no mapping where messages cannot be lost.
WaitingSince = Mapping[str, datetime | None]


def claim_stuck_queries(
    session: Session,
    *,
    stuck_after_s: float,
    waiting_since: WaitingSince | None,
    limit: int = 1000,
    tier_names: Sequence[str] = TWO_TIERS,
) -> list[tuple[uuid.UUID, str]]:
    """Unfinished queries whose lease ran out, or whose message is missing from the queue.

    Each one found is stamped as sent now, without a lease: the next sweep finds it again only
    if its new message, too, has left the queue without a worker claiming the query.
    """
    now = utcnow()
    lost: list[ColumnElement[bool]] = [
        and_(Query.lease_expires_at.is_not(None), Query.lease_expires_at < now)
    ]
    for tier, oldest_waiting in (waiting_since or {}).items():
        if oldest_waiting is None:
            continue
        lost.append(
            and_(
                _waiting_for(tier, tier_names),
                Query.lease_expires_at.is_(None),
                Query.updated_at < min(oldest_waiting, now) - timedelta(seconds=stuck_after_s),
            )
        )
    stuck = session.scalars(
        select(Query)
        .where(Query.status.in_(list(TIER_OF_STATUS)), or_(*lost))
        .order_by(Query.updated_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for query in stuck:
        query.lease_expires_at = None
        query.updated_at = now
    return [(query.id, lifecycle.waiting_tier(query, tier_names)) for query in stuck]


def _waiting_for(tier: str, tier_names: Sequence[str]) -> ColumnElement[bool]:
    """The queries whose next step is ``tier``'s (as ``lifecycle.waiting_tier`` says)."""
    if tier == tier_names[0]:
        return Query.status.in_(STATUSES_OF_TIER[Tier.SMALL])
    stage = tier_names.index(tier)
    stages = [stage, 0] if stage == len(tier_names) - 1 else [stage]
    return and_(Query.status == QueryStatus.ESCALATED, Query.stage.in_(stages))


def sweep(
    session: Session,
    *,
    stuck_after_s: float,
    waiting_since: WaitingSince | None,
    tier_names: Sequence[str] = TWO_TIERS,
) -> list[tuple[uuid.UUID, str]]:
    """One pass of the recovery sweep: queries to queue again (each with the tier whose queue
    it goes to), and budget reservations that no call can settle any more given back."""
    release_abandoned_reservations(session)
    return claim_stuck_queries(
        session, stuck_after_s=stuck_after_s, waiting_since=waiting_since, tier_names=tier_names
    )


def release_abandoned_reservations(session: Session, *, limit: int = 500) -> int:
    """A query cancelled while its call ran keeps that call's reservation for the call to
    settle; once the call's lease has run out with nothing settled, give it back."""
    now = utcnow()
    abandoned = session.scalars(
        select(Query)
        .where(
            Query.status == QueryStatus.CANCELLED,
            or_(
                Query.reserved_small > 0,
                Query.reserved_large > 0,
                Query.reserved_middle.is_not(None),
            ),
            or_(Query.lease_expires_at.is_(None), Query.lease_expires_at < now),
        )
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for query in abandoned:
        lifecycle.release_after_cancel(session, query)
    return len(abandoned)


def reclaim_unfinished_queries(
    session: Session, *, tier_names: Sequence[str] = TWO_TIERS
) -> list[tuple[uuid.UUID, str]]:
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
    return [(query.id, lifecycle.waiting_tier(query, tier_names)) for query in unfinished]
