"""Budgets that no burst of concurrent requests can break.

A tenant may have a hard limit per period (none, daily or monthly, starting on the UTC
boundary) and a soft limit that raises an alert once per period. Submitting a query reserves,
under the period row's lock, the worst-case cost of its small call and, while the budget allows,
of its escalation path (every later tier's call: the middle tiers' and the large one's); a submit
that cannot reserve the small call is refused and writes nothing. A tier whose call was not
reserved at submit is reserved when the query escalates to it, or the query does not escalate.
Each model call settles its tier's reservation to the actual cost in the transaction that writes
its ledger row; whatever a query did not use is released when it finishes.

The cost of a call is its tokens at the price in force when it finishes, but never more than
the hard limit leaves once the other calls in flight are paid for (``most_chargeable``): an
admin who raises a price, or lowers the limit, while calls run cannot push the spend past it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import structlog
from sqlalchemy.orm import Session

from services.accounting import current_price, money_text
from services.db import locked_row
from services.errors import BudgetExceeded
from services.models import BudgetPeriod, Query, Tenant, Tier, utcnow
from services.settings import Settings
from services.webhooks.events import EventType, record_event

log = structlog.get_logger(__name__)

PERIODS = ("none", "daily", "monthly")
NO_PERIOD = datetime(1970, 1, 1, tzinfo=UTC)


# The worst-case (small, large) cost of a query, computed only if a budget rule needs it.
WorstCase = Callable[[], tuple[Decimal, Decimal]]


@dataclass(frozen=True)
class Reservation:
    period_id: int | None
    small: Decimal
    large: Decimal
    middle: dict[str, Decimal] = field(default_factory=dict)


def period_start(period: str, now: datetime) -> datetime:
    """The UTC boundary the period containing ``now`` began on."""
    now = now.astimezone(UTC)
    if period == "daily":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "monthly":
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return NO_PERIOD


def worst_case_costs(
    session: Session,
    settings: Settings,
    *,
    prompt: str,
    max_new_tokens: int,
    choices: Sequence[str] | None = None,
) -> tuple[Decimal, Decimal]:
    """The most the small and the large call can cost: every prompt byte a token, plus the
    chat template's tokens, and every allowed new token generated; with choices, besides, the
    labels' scoring (services/llm/labels.py): per label the prompt, a space and the label,
    and one new token."""
    input_tokens, output_tokens = _worst_case_tokens(settings, prompt, max_new_tokens, choices)
    small, large = (current_price(session, tier) for tier in (settings.small, settings.large))
    return (
        small.cost(input_tokens=input_tokens, output_tokens=output_tokens),
        large.cost(input_tokens=input_tokens, output_tokens=output_tokens),
    )


def worst_case_middle(session: Session, settings: Settings, *, query: Query) -> dict[str, Decimal]:
    """The most each middle tier's call can cost, counted as ``worst_case_costs`` counts
    (empty for a two-tier cascade)."""
    input_tokens, output_tokens = _worst_case_tokens(
        settings, query.prompt, query.max_new_tokens, query.choices
    )
    return {
        tier.name: current_price(session, tier).cost(
            input_tokens=input_tokens, output_tokens=output_tokens
        )
        for tier in settings.middle_tiers
    }


def _worst_case_tokens(
    settings: Settings, prompt: str, max_new_tokens: int, choices: Sequence[str] | None
) -> tuple[int, int]:
    prompt_tokens = len(prompt.encode()) + settings.prompt_overhead_tokens
    input_tokens, output_tokens = prompt_tokens, max_new_tokens
    for label in choices or ():
        input_tokens += prompt_tokens + 1 + len(label.encode())
        output_tokens += 1
    return input_tokens, output_tokens


def has_budget(tenant: Tenant) -> bool:
    """Whether the tenant's spend is tracked per period (a hard or a soft limit)."""
    return tenant.budget_hard_limit is not None or tenant.budget_soft_limit is not None


def lazy_worst_case(session: Session, settings: Settings, *, query: Query) -> WorstCase:
    """The query's worst-case costs, computed on the first call only."""
    return functools.cache(
        lambda: worst_case_costs(
            session,
            settings,
            prompt=query.prompt,
            max_new_tokens=query.max_new_tokens,
            choices=query.choices,
        )
    )


def reserve(
    session: Session,
    *,
    tenant: Tenant,
    small: Decimal,
    large: Decimal,
    middle: Mapping[str, Decimal] | None = None,
    now: datetime | None = None,
) -> Reservation:
    """Reserve the small call (or raise BudgetExceeded) and the escalation path (the
    ``middle`` tiers' calls and the large one) if it also fits."""
    if not has_budget(tenant):
        return Reservation(None, Decimal(0), Decimal(0))
    start = period_start(tenant.budget_period, now or utcnow())
    period = locked_row(session, BudgetPeriod, tenant_id=tenant.id, period_start=start)
    limit = tenant.budget_hard_limit
    available = None if limit is None else limit - period.spent - period.reserved
    if available is not None and small > available:
        raise BudgetExceeded(
            f"the {tenant.budget_period} budget of {limit} has {max(available, Decimal(0))} "
            f"left; this query may cost up to {small} on the small model",
            details={"limit": str(limit), "available": str(max(available, Decimal(0))),
                     "required": str(small), "period": tenant.budget_period},
            period_start=start,
        )  # fmt: skip
    path = large + sum((middle or {}).values(), Decimal(0))
    fits = available is None or small + path <= available
    reserved_large = large if fits else Decimal(0)
    reserved_middle = dict(middle or {}) if fits else {}
    period.reserved += small + (path if fits else Decimal(0))
    return Reservation(period.id, small, reserved_large, reserved_middle)


def reserve_escalation(
    session: Session,
    *,
    query: Query,
    tenant: Tenant,
    worst_case: WorstCase,
    tier: str = Tier.LARGE,
    middle_worst_case: Callable[[], Mapping[str, Decimal]] | None = None,
) -> bool:
    """At escalation time: True if ``tier``'s call is (or can now be) paid for.
    ``middle_worst_case`` gives a middle tier's worst case (``worst_case_middle``)."""
    if query.budget_period_id is None or reserved_for(query, tier) > 0:
        return True
    if tier == Tier.LARGE:
        _, cost = worst_case()
    else:
        assert middle_worst_case is not None, "a middle tier's worst case is needed"
        cost = middle_worst_case()[tier]
    period = _locked(session, query.budget_period_id)
    limit = tenant.budget_hard_limit
    if limit is not None and cost > limit - period.spent - period.reserved:
        _alert_exhausted(session, tenant, period)
        return False
    period.reserved += cost
    _set_reserved(query, tier, cost)
    return True


def reserved_for(query: Query, tier: str) -> Decimal:
    """What the query holds reserved for ``tier``'s call."""
    if tier == Tier.SMALL:
        return query.reserved_small
    if tier == Tier.LARGE:
        return query.reserved_large
    return Decimal((query.reserved_middle or {}).get(tier, 0))


def _set_reserved(query: Query, tier: str, amount: Decimal) -> None:
    if tier == Tier.SMALL:
        query.reserved_small = amount
    elif tier == Tier.LARGE:
        query.reserved_large = amount
    else:
        middle = {
            name: held for name, held in (query.reserved_middle or {}).items() if name != tier
        }
        if amount:
            middle[tier] = str(amount)
        query.reserved_middle = middle or None  # a new value, so the ORM writes it


def reserved_tiers(query: Query) -> list[str]:
    """The tiers the query holds a reservation for."""
    held: list[str] = [Tier.SMALL] if query.reserved_small else []
    held += list(query.reserved_middle or {})
    return held + ([Tier.LARGE] if query.reserved_large else [])


def most_chargeable(session: Session, *, query: Query, tier: str, tenant: Tenant) -> Decimal | None:
    """The most the tier's call may be charged: what the hard limit leaves with this call's
    reservation given back and every other reservation kept; None when there is no limit.

    The reservations were made at the prices of their time. Under this cap the period's
    ``spent + reserved`` never passes the limit, whatever prices or limits are set meanwhile.
    """
    limit = tenant.budget_hard_limit
    if query.budget_period_id is None or limit is None:
        return None
    period = _locked(session, query.budget_period_id)
    own = reserved_for(query, tier)
    return max(limit - period.spent - (period.reserved - own), Decimal(0))


def settle(session: Session, *, query: Query, tier: str, cost: Decimal, tenant: Tenant) -> None:
    """Turn the tier's reservation into the call's actual cost."""
    if query.budget_period_id is None:
        return
    period = _locked(session, query.budget_period_id)
    period.reserved -= reserved_for(query, tier)
    period.spent += cost
    _set_reserved(query, tier, Decimal(0))
    soft = tenant.budget_soft_limit
    if soft is not None and period.spent >= soft and period.soft_limit_alerted_at is None:
        period.soft_limit_alerted_at = utcnow()
        _alert(session, EventType.BUDGET_SOFT_LIMIT_CROSSED, tenant, period)


def alert_exhausted(session: Session, *, tenant: Tenant, period_start: datetime) -> None:
    """After a refused submit (whose transaction rolled back): alert if this is the period's
    first refusal."""
    period = locked_row(session, BudgetPeriod, tenant_id=tenant.id, period_start=period_start)
    _alert_exhausted(session, tenant, period)


def _alert_exhausted(session: Session, tenant: Tenant, period: BudgetPeriod) -> None:
    """Once per period, when the hard limit first refuses a query or an escalation."""
    if period.exhausted_alerted_at is None:
        period.exhausted_alerted_at = utcnow()
        _alert(session, EventType.BUDGET_EXHAUSTED, tenant, period)


def _alert(session: Session, event_type: EventType, tenant: Tenant, period: BudgetPeriod) -> None:
    data = {
        "tenant_id": str(tenant.id),
        "period": tenant.budget_period,
        "period_start": period.period_start.isoformat(),
        "spent": money_text(period.spent),
        "reserved": money_text(period.reserved),
        "soft_limit": _money_or_none(tenant.budget_soft_limit),
        "hard_limit": _money_or_none(tenant.budget_hard_limit),
    }
    log.warning(event_type.value, **data)
    record_event(session, tenant_id=tenant.id, event_type=event_type, data=lambda: data)


def _money_or_none(value: Decimal | None) -> str | None:
    return None if value is None else money_text(value)


def release(
    session: Session, *, query: Query, tier: str | None = None, keep: str | None = None
) -> None:
    """Give back what the query reserved and no call used: ``tier``'s, or every tier's but
    ``keep``'s (a call that may still be running)."""
    if query.budget_period_id is None:
        return
    period = _locked(session, query.budget_period_id)
    held = [Tier.SMALL, *(query.reserved_middle or {}), Tier.LARGE]
    for name in held if tier is None else [tier]:
        if name != keep:
            period.reserved -= reserved_for(query, name)
            _set_reserved(query, name, Decimal(0))


def _locked(session: Session, period_id: int) -> BudgetPeriod:
    return session.get_one(BudgetPeriod, period_id, with_for_update=True, populate_existing=True)
