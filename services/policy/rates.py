"""The target escalation rate: the tenant's fixed rate (or a middle tier's own), or p(B) from its
budget per query.

Under a budget per query B a cascade of n tiers escalates at the same rate q at every stage, the
q with c_1 + q c_2 + q^2 c_3 + ... + q^(n-1) c_n = B (``equal_rates``): a query reaches tier k
with probability q^(k-1), so that is the expected cost per query. For two tiers it is p(B) =
(B - c_1) / c_2 (``budget_rate``). The offline evaluation (services/evaluation/cascades.py) spends
its budgets by the same rule. One rate for all stages is the simplest split that spends B; the
evaluation found that the best split in hindsight does little better (docs/cascades.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
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


def equal_rates(costs: Sequence[float], budget: float) -> list[float]:
    """The same escalation rate q at every stage such that the expected cost per query is
    ``budget`` (q = 0 below the first tier's cost, 1 above the whole chain's)."""

    def expected(q: float) -> float:
        return sum(cost * q**stage for stage, cost in enumerate(costs))

    low, high = 0.0, 1.0
    if budget <= expected(low):
        return [0.0] * (len(costs) - 1)
    if budget >= expected(high):
        return [1.0] * (len(costs) - 1)
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if expected(middle) < budget else (low, middle)
    return [low] * (len(costs) - 1)


def target_escalation_rate(
    session: Session,
    *,
    tenant: Tenant,
    settings: Settings,
    worst_case: WorstCase,
    stage: int = 0,
    middle_worst_case: Callable[[], Mapping[str, Decimal]] | None = None,
    query_id: uuid.UUID | None = None,
) -> float:
    """The rate the tier at ``stage`` escalates at: the tenant's target (or a middle tier's
    own), or, under a budget per query B, p(B) for two tiers and ``equal_rates`` for more,
    from the expected cost of a call on each tier (``expected_costs``). For two tiers under
    ``budget_pacing_queries``, p(B) is paced by what the tenant's answered queries
    (``query_id`` left out) left unspent (``pacing.paced_rate``)."""
    if tenant.budget_per_query is None:
        own = settings.stage_target_rate(stage)
        return tenant.target_escalation_rate if own is None else own
    small_cost, large_cost = expected_costs(
        session, tenant=tenant, settings=settings, worst_case=worst_case
    )
    if settings.middle_tiers:
        middle = expected_middle_costs(
            session,
            tenant=tenant,
            settings=settings,
            worst_case=middle_worst_case or (lambda: {}),
        )
        costs = [small_cost, *middle, large_cost]
        return equal_rates([float(cost) for cost in costs], float(tenant.budget_per_query))[stage]
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


def expected_middle_costs(
    session: Session,
    *,
    tenant: Tenant,
    settings: Settings,
    worst_case: Callable[[], Mapping[str, Decimal]],
) -> list[Decimal]:
    """The middle tiers' expected call costs, found as ``expected_costs`` finds c_l."""
    small = recent_averages(session, tenant.id, Tier.SMALL)
    costs = []
    for tier in settings.middle_tiers:
        recent = recent_averages(session, tenant.id, tier.name)
        if recent:
            costs.append(recent[0])
        elif small:
            price = current_price(session, tier)
            costs.append(price.cost(input_tokens=round(small[1]), output_tokens=round(small[2])))
        else:
            costs.append(worst_case().get(tier.name, Decimal(0)))
    return costs


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
    session: Session, tenant_id: uuid.UUID, tier: str
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
