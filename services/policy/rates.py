"""The target escalation rate: the tenant's fixed rate, or p(B) from its budget per query."""

from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.accounting import current_price
from services.budgets import WorstCase
from services.models import ModelCall, Tenant, Tier
from services.policy.pacing import answered_and_spent, paced_rate
from services.settings import Settings

RECENT_CALLS = 1000  # the window of calls whose average cost p(B) uses


def budget_rate(budget_per_query: Decimal, *, small_cost: Decimal, large_cost: Decimal) -> float:
    """p(B) = min((B - c_s) / c_l, 1), and never below 0; 1 when the large call costs nothing."""
    if large_cost <= 0:
        return 1.0
    rate = (budget_per_query - small_cost) / large_cost
    return float(min(max(rate, Decimal(0)), Decimal(1)))


def target_escalation_rate(
    session: Session,
    *,
    tenant: Tenant,
    settings: Settings,
    worst_case: WorstCase,
    query_id: uuid.UUID | None = None,
) -> float:
    """The rate to escalate at: the tenant's target, or p(B) from its average budget per query B
    and the expected costs of a call on each tier (``expected_costs``); under
    ``budget_pacing_queries``, p(B) paced by what the tenant's answered queries (``query_id``
    left out) left unspent (``pacing.paced_rate``)."""
    if tenant.budget_per_query is None:
        return tenant.target_escalation_rate
    small_cost, large_cost = expected_costs(
        session, tenant=tenant, settings=settings, worst_case=worst_case
    )
    rate = budget_rate(tenant.budget_per_query, small_cost=small_cost, large_cost=large_cost)
    window = settings.budget_pacing_queries
    if window is None or large_cost <= 0 or query_id is None:
        return rate
    answered, spent = answered_and_spent(
        session, tenant_id=tenant.id, large_cost=large_cost, exclude=query_id
    )
    return paced_rate(
        rate, budget_per_query=float(tenant.budget_per_query), answered=answered,
        spent=float(spent), large_cost=float(large_cost), window=window,
    )  # fmt: skip


def expected_costs(
    session: Session, *, tenant: Tenant, settings: Settings, worst_case: WorstCase
) -> tuple[Decimal, Decimal]:
    """(c_s, c_l): the average costs of the tenant's recent calls on each tier.

    Before any large call, c_l is the small calls' average tokens at the large tier's prices;
    before any call at all, the query's worst case stands in.
    """
    small = recent_averages(session, tenant.id, Tier.SMALL)
    large = recent_averages(session, tenant.id, Tier.LARGE)
    small_cost = small[0] if small else worst_case()[0]
    if large:
        large_cost = large[0]
    elif small:
        large_cost = current_price(session, settings.large).cost(
            input_tokens=round(small[1]), output_tokens=round(small[2])
        )
    else:
        large_cost = worst_case()[1]
    return small_cost, large_cost


def recent_averages(
    session: Session, tenant_id: uuid.UUID, tier: Tier
) -> tuple[Decimal, float, float] | None:
    """Average cost, input and output tokens of the tenant's recent calls on ``tier``."""
    recent = (
        select(ModelCall.cost, ModelCall.input_tokens, ModelCall.output_tokens)
        .where(ModelCall.tenant_id == tenant_id, ModelCall.tier == tier)
        .order_by(ModelCall.created_at.desc())
        .limit(RECENT_CALLS)
        .subquery()
    )
    cost, tokens_in, tokens_out = session.execute(
        select(
            func.avg(recent.c.cost),
            func.avg(recent.c.input_tokens),
            func.avg(recent.c.output_tokens),
        )
    ).one()
    if cost is None:
        return None
    return Decimal(cost), float(tokens_in), float(tokens_out)
