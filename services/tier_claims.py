"""A tier's hold on a query: the statuses it may take a query from, the claim (a delivery
attempt and a lease, in one transaction around the row lock), and giving the lease back; and
what one delivery of a tier's task came to. The first small-tier delivery of a query is also
where it may skip the small model (``policy.goes_large_alone``)."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from services import budgets, lifecycle, policy
from services.db import session_scope
from services.models import TERMINAL_STATUSES, Query, QueryStatus, Tenant, Tier, utcnow
from services.settings import Settings


class Outcome(enum.StrEnum):
    ANSWERED = "answered"  # the query succeeded on this tier
    ESCALATE = "escalate"  # the caller must enqueue the tier the result names
    FAILED = "failed"
    SKIPPED = "skipped"  # nothing to do: finished, cancelled, or not at this tier
    BUSY = "busy"  # another delivery holds the lease; try again after ``retry_in_s``
    OVERLOADED = "overloaded"  # the model server is full; queue the query again after that


@dataclass(frozen=True)
class TierResult:
    outcome: Outcome
    retry_in_s: float = 0.0
    to_tier: str = Tier.LARGE  # where an escalated query goes


@dataclass(frozen=True)
class Claim:
    tenant_id: uuid.UUID
    prompt: str
    max_new_tokens: int
    choices: list[str] | None


CLAIMABLE = {
    Tier.SMALL: frozenset({QueryStatus.QUEUED, QueryStatus.RUNNING}),
    Tier.LARGE: frozenset({QueryStatus.ESCALATED}),
}


def claimable(query: Query, tier: str, settings: Settings) -> bool:
    """Whether ``tier`` may take the query: the small tier a queued or running one, any later
    tier an escalated one at its stage."""
    if tier == Tier.SMALL:
        return query.status in CLAIMABLE[Tier.SMALL]
    return query.status == QueryStatus.ESCALATED and (
        lifecycle.waiting_tier(query, settings.tier_names) == tier
    )


def claim_for_tier(query_id: uuid.UUID, tier: str, settings: Settings) -> Claim | TierResult:
    """Take the query for ``tier``'s call; or say why not (skipped, busy, failed). A query's
    first small-tier delivery may instead send it to the large tier alone, when the policy
    says so and the budget pays (``Outcome.ESCALATE``, decision ``large_alone``)."""
    with session_scope() as session:
        found = session.execute(
            select(Query, Tenant)
            .join(Tenant, Tenant.id == Query.tenant_id)
            .where(Query.id == query_id)
            .with_for_update(of=Query)
            .execution_options(populate_existing=True)
        ).one_or_none()
        query, tenant = found if found is not None else (None, None)
        now = utcnow()
        if query is None or tenant is None or not claimable(query, tier, settings):
            lease_over = query is not None and (
                query.lease_expires_at is None or query.lease_expires_at <= now
            )
            if query is not None and query.status == QueryStatus.CANCELLED and lease_over:
                lifecycle.release_after_cancel(session, query)  # its call is over
            return TierResult(Outcome.SKIPPED)
        if query.lease_expires_at is not None and query.lease_expires_at > now:
            return TierResult(Outcome.BUSY, (query.lease_expires_at - now).total_seconds())
        if tier == Tier.SMALL and _goes_large_alone(session, query, tenant, settings):
            return TierResult(Outcome.ESCALATE)
        query.delivery_attempts += 1
        if query.delivery_attempts > settings.max_delivery_attempts:
            return mark_failed(
                session,
                query,
                "delivery_attempts_exhausted",
                f"delivered {settings.max_delivery_attempts} times without finishing",
                tier_names=settings.tier_names,
            )
        lifecycle.claim(session, query, tier, lease_s=settings.task_lease_s)
        return Claim(
            tenant_id=query.tenant_id,
            prompt=query.prompt,
            max_new_tokens=query.max_new_tokens,
            choices=query.choices,
        )


def _goes_large_alone(session: Session, query: Query, tenant: Tenant, settings: Settings) -> bool:
    """A query not yet on the small tier skips it if the policy says so and the budget can pay
    the large call (which reserves it and gives back the small call's reservation)."""
    if query.status != QueryStatus.QUEUED or not policy.may_go_large_alone(tenant):
        return False
    worst_case = budgets.lazy_worst_case(session, settings, query=query)
    if not policy.goes_large_alone(
        session, query=query, tenant=tenant, settings=settings, worst_case=worst_case
    ):
        return False
    if not lifecycle.escalate(
        session,
        query,
        tenant=tenant,
        settings=settings,
        worst_case=worst_case,
        small_called=False,
        to_tier=Tier.LARGE,
    ):
        return False
    query.decision = "large_alone"
    return True


def mark_failed(
    session: Session, query: Query, code: str, message: str, *, tier_names: Sequence[str]
) -> TierResult:
    lifecycle.fail(session, query, code=code, message=message, tier_names=tier_names)
    return TierResult(Outcome.FAILED)


def release_lease(query_id: uuid.UUID, *, delivered: bool = True) -> None:
    with session_scope() as session:
        query = locked_query(session, query_id)
        if not delivered:
            # So that a long overload never fails the query as delivery_attempts_exhausted.
            query.delivery_attempts = max(query.delivery_attempts - 1, 0)
        query.lease_expires_at = None
        query.updated_at = utcnow()


def hold_lease_until(query_id: uuid.UUID, retry_in_s: float) -> None:
    """Keep the query leased until its retry is due: the recovery sweep then leaves it to
    the retry, and queues it again only if the retry's message was lost with its worker."""
    with session_scope() as session:
        query = locked_query(session, query_id)
        if query.status not in TERMINAL_STATUSES:
            query.lease_expires_at = utcnow() + timedelta(seconds=retry_in_s)


def locked_query(session: Session, query_id: uuid.UUID) -> Query:
    return session.get_one(Query, query_id, with_for_update=True, populate_existing=True)
