"""A query's lifecycle: the one place that changes a query's status, and with it, in the same
transaction, its budget (reserve, settle, release), its events and its counters.

    queued ──claim──▶ running ──escalate──▶ escalated ──succeed──▶ succeeded
      │  ╲              │  ╲                  │  ⟲ escalate (a middle tier's)
      │   escalate      │   succeed           ├──fail──▶ failed
      ├──fail──▶ failed ├──fail──▶ failed     └──cancel──▶ cancelled
      └──cancel──▶ …    └──cancel──▶ …

A query's ``stage`` is the tier it is at, by its place in the cascade (``Settings.tier_names``):
0 while queued or running on the small tier; an escalated query at stage i waits for (or is
answered by) tier i. With middle tiers a query escalates once per tier it leaves.

``TRANSITIONS`` is that table; a move it does not list raises ``IllegalTransition`` and
changes nothing. The budget rules that go with the moves:

- admitted: the small call's worst case is reserved (or the query is refused, BudgetExceeded),
  and the worst path's too (every later tier's call: the middle tiers' and the large one's)
  when the tenant may escalate and the budget covers it all;
- a call is charged at most what the hard limit leaves, and its reservation becomes its cost;
- escalated: the next tier's call must be reserved first; if the budget cannot pay, nothing
  moves;
- succeeded or failed: whatever is still reserved is given back;
- cancelled: a call that may be running keeps its reservation (and the query its lease) to
  settle when it ends; the recovery sweep gives it back once the lease has run out.

Every function takes the query as its caller locked it (its row lock held in the caller's
transaction) and leaves the commit to the caller.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal

import structlog
from sqlalchemy.orm import Session

from services import budgets, cancellation, completion, dispatch, metrics, policy
from services.accounting import Price, record_model_call
from services.budgets import WorstCase
from services.db import after_commit
from services.errors import BudgetExceeded
from services.llm.base import Generation
from services.models import Query, QueryStatus, Tenant, Tier, utcnow
from services.settings import Settings, TierSettings
from services.webhooks.events import EventType, record_query_event

log = structlog.get_logger(__name__)

QUEUED, RUNNING, ESCALATED = QueryStatus.QUEUED, QueryStatus.RUNNING, QueryStatus.ESCALATED
SUCCEEDED, FAILED, CANCELLED = QueryStatus.SUCCEEDED, QueryStatus.FAILED, QueryStatus.CANCELLED

TRANSITIONS: dict[QueryStatus, frozenset[QueryStatus]] = {
    # The small tier unavailable, a query may escalate before its small call ran.
    QUEUED: frozenset({RUNNING, ESCALATED, FAILED, CANCELLED}),
    # running -> running: a delivery taking over a call whose lease ran out.
    RUNNING: frozenset({RUNNING, ESCALATED, SUCCEEDED, FAILED, CANCELLED}),
    # escalated -> escalated: a middle tier hands the query on to the next one.
    ESCALATED: frozenset({ESCALATED, SUCCEEDED, FAILED, CANCELLED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}

EVENTS = {
    ESCALATED: EventType.QUERY_ESCALATED,
    SUCCEEDED: EventType.QUERY_SUCCEEDED,
    FAILED: EventType.QUERY_FAILED,
    CANCELLED: EventType.QUERY_CANCELLED,
}


class IllegalTransition(RuntimeError):
    """A move that the lifecycle's table does not allow."""


def can_move(source: QueryStatus, target: QueryStatus) -> bool:
    return target in TRANSITIONS[source]


def waiting_tier(query: Query, tier_names: Sequence[str]) -> str:
    """The tier an unfinished query is at: small while queued or running; an escalated
    query's stage's tier, the last one for stage 0 (escalated before stages were recorded)."""
    if query.status != ESCALATED:
        return tier_names[0]
    last = len(tier_names) - 1
    return tier_names[min(query.stage or last, last)]


def admit(session: Session, query: Query, *, tenant: Tenant, settings: Settings) -> None:
    """A new query: queued, its worst case reserved if the tenant has a budget (else
    BudgetExceeded and nothing added), added to the session."""
    query.status = QUEUED
    if budgets.has_budget(tenant):
        small, large = budgets.worst_case_costs(
            session,
            settings,
            prompt=query.prompt,
            max_new_tokens=query.max_new_tokens,
            choices=query.choices,
        )
        never = policy.never_escalates(tenant)
        middle = {} if never else budgets.worst_case_middle(session, settings, query=query)
        reservation = budgets.reserve(
            session,
            tenant=tenant,
            small=small,
            large=Decimal(0) if never else large,
            middle=middle,
        )
        query.budget_period_id = reservation.period_id
        query.reserved_small = reservation.small
        query.reserved_large = reservation.large
        held = {name: str(amount) for name, amount in reservation.middle.items()}
        query.reserved_middle = held or None
    session.add(query)


def refused(session: Session, *, tenant: Tenant, refusal: BudgetExceeded) -> None:
    """A query refused for its budget: the tenant's exhausted-budget alert (once a period)."""
    budgets.alert_exhausted(session, tenant=tenant, period_start=refusal.period_start)


def claim(session: Session, query: Query, tier: str, *, lease_s: float) -> None:
    """A delivery takes the query for ``tier``'s call, under a lease of ``lease_s``."""
    now = utcnow()
    if tier == Tier.SMALL:
        _move(query, RUNNING, now)
        query.small_started_at = query.small_started_at or now
    else:
        if query.status != ESCALATED:
            raise IllegalTransition(f"a {query.status} query has no {tier} call to make")
        if tier == Tier.LARGE:
            query.large_started_at = query.large_started_at or now
    query.lease_expires_at = now + timedelta(seconds=lease_s)
    query.updated_at = now


def charge(
    session: Session,
    query: Query,
    *,
    tenant: Tenant,
    tier: str,
    tier_settings: TierSettings,
    generation: Generation,
    latency_ms: int,
    price: Price,
) -> Decimal | None:
    """Charge ``tier``'s finished call (once per query and tier), never more than the hard
    limit leaves; its reservation becomes its cost. The cost, or None if already charged."""
    most = budgets.most_chargeable(session, query=query, tier=tier, tenant=tenant)
    cost = record_model_call(
        session,
        query_id=query.id,
        tenant_id=query.tenant_id,
        tier=tier,
        tier_settings=tier_settings,
        generation=generation,
        latency_ms=latency_ms,
        price=price,
        most=most,
    )
    if cost is not None:
        budgets.settle(session, query=query, tier=tier, cost=cost, tenant=tenant)
    return cost


def escalate(
    session: Session,
    query: Query,
    *,
    tenant: Tenant,
    settings: Settings,
    worst_case: WorstCase | None = None,
    small_called: bool = True,
    to_tier: str | None = None,
) -> bool:
    """Hand the query to ``to_tier`` (None: the tier after the one it is at) if its budget can
    pay that tier's call; False (and nothing changed) if it cannot. ``small_called=False``
    gives back the reservation of the tier it is at (that tier was skipped, or its server
    kept failing); the reservations of the tiers it jumps over go back too. The caller
    enqueues ``to_tier`` after the commit."""
    _check(query, ESCALATED)
    names = settings.tier_names
    stage = names.index(waiting_tier(query, names))
    target = stage + 1 if to_tier is None else names.index(to_tier)
    if target <= stage or target >= len(names):
        raise IllegalTransition(f"a query at the {names[stage]} tier cannot escalate further")
    costs = worst_case or budgets.lazy_worst_case(session, settings, query=query)
    if not budgets.reserve_escalation(
        session,
        query=query,
        tenant=tenant,
        worst_case=costs,
        tier=names[target],
        middle_worst_case=lambda: budgets.worst_case_middle(session, settings, query=query),
    ):
        return False
    given_back = list(names[stage + 1 : target]) + ([] if small_called else [names[stage]])
    for tier in given_back:
        if budgets.reserved_for(query, tier):
            budgets.release(session, query=query, tier=tier)
    metrics.count_query(session, ESCALATED, names[target])
    now = utcnow()
    _move(query, ESCALATED, now)
    query.stage = target
    query.escalated_at = query.escalated_at or now
    query.lease_expires_at = None
    record_query_event(session, query, EventType.QUERY_ESCALATED)
    return True


def succeed(session: Session, query: Query, *, answer: str, tier: str) -> None:
    """Answered by ``tier``: what is still reserved is given back."""
    _check(query, SUCCEEDED)
    metrics.count_query(session, SUCCEEDED, tier)
    budgets.release(session, query=query)
    query.answer = answer
    query.answered_by = tier
    _finish(session, query, SUCCEEDED)


def fail(
    session: Session, query: Query, *, code: str, message: str, tier_names: Sequence[str]
) -> None:
    """Failed at the tier it is at (of the cascade ``tier_names``): what is still reserved is
    given back."""
    _check(query, FAILED)
    metrics.count_query(session, FAILED, waiting_tier(query, tier_names))
    budgets.release(session, query=query)
    _finish(session, query, FAILED, error=(code, message))
    log.warning("query_failed", error_code=code, error=message)


def cancel(session: Session, query: Query, *, tier_names: Sequence[str]) -> None:
    """Cancelled by its tenant, at the tier it is at (of the cascade ``tier_names``). A call
    that may be running keeps its reservation, and the query its lease, so that the call
    settles when it ends; a call running in this process is told to stop once the cancel
    commits."""
    _check(query, CANCELLED)
    lease = query.lease_expires_at
    if query.status == RUNNING:
        budgets.release(session, query=query, keep=Tier.SMALL)
    elif query.status == ESCALATED and query.large_started_at is not None:
        if query.reserved_middle:  # left by a middle tier that was not called
            budgets.release(session, query=query, keep=Tier.LARGE)
    elif query.status == ESCALATED and query.reserved_middle and lease is not None:
        # A middle tier's call may be running: its reservation stays until it settles or
        # the lease runs out; the large call will not come.
        budgets.release(session, query=query, tier=Tier.LARGE)
    else:
        budgets.release(session, query=query)
    metrics.count_query(session, CANCELLED, waiting_tier(query, tier_names))
    _finish(session, query, CANCELLED)
    query.lease_expires_at = lease
    after_commit(session, functools.partial(cancellation.signals.cancel, query.id))


def release_after_cancel(session: Session, query: Query) -> None:
    """A cancelled query's call is over (its lease ran out or it ended unsettled): give back
    what it kept reserved."""
    if query.status != CANCELLED:
        raise IllegalTransition(f"a {query.status} query keeps no reservation for a call")
    budgets.release(session, query=query)


def _finish(
    session: Session, query: Query, status: QueryStatus, *, error: tuple[str, str] | None = None
) -> None:
    now = utcnow()
    _move(query, status, now)
    query.finished_at = now
    query.lease_expires_at = None
    if error is not None:
        query.error_code, query.error_message = error
    record_query_event(session, query, EVENTS[status])
    # This process's long polls of the query (other processes hear PostgreSQL's NOTIFY).
    after_commit(session, functools.partial(completion.waiters.wake, query.id))
    if query.batch_id is not None:  # its batch may send another request, or be done
        dispatch.feed_batches_after_commit(session)


def _check(query: Query, target: QueryStatus) -> None:
    """Raise before anything changes if the table has no such move."""
    source = QueryStatus(query.status)
    if not can_move(source, target):
        raise IllegalTransition(f"a {source} query cannot become {target}")


def _move(query: Query, target: QueryStatus, now: datetime) -> None:
    _check(query, target)
    query.status = target
    query.updated_at = now
