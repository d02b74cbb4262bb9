"""The cost ledger: what each model call cost, recorded once per query and tier."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services import metrics
from services.llm.base import Generation
from services.models import ModelCall, ModelPrice
from services.settings import TierSettings

PER_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Price:
    input_per_mtok: Decimal
    output_per_mtok: Decimal

    def cost(self, *, input_tokens: int, output_tokens: int) -> Decimal:
        return (
            input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok
        ) / PER_MILLION


def settings_price(tier_settings: TierSettings) -> Price:
    return Price(
        Decimal(str(tier_settings.price_input_per_mtok)),
        Decimal(str(tier_settings.price_output_per_mtok)),
    )


def current_price(session: Session, tier_settings: TierSettings) -> Price:
    """The admin API's price for the tier's model, else the tier's price settings."""
    return price_of(session.get(ModelPrice, tier_settings.model), tier_settings)


def price_of(override: ModelPrice | None, tier_settings: TierSettings) -> Price:
    """The price in force given the model's ``model_prices`` row (None: there is none)."""
    if override is None:
        return settings_price(tier_settings)
    return Price(override.price_input_per_mtok, override.price_output_per_mtok)


def record_model_call(
    session: Session,
    *,
    query_id: uuid.UUID,
    tenant_id: uuid.UUID,
    tier: str,
    tier_settings: TierSettings,
    generation: Generation,
    latency_ms: int,
    price: Price | None = None,
    most: Decimal | None = None,
) -> Decimal | None:
    """Charge a call unless this query was already charged on this tier; the cost if charged.

    The unique constraint (query_id, tier) decides in the one INSERT: a redelivered task's
    second charge inserts nothing. The caller holds the query's row lock besides. ``price``
    is the price in force if the caller read it already; ``most`` caps the charge at what the
    tenant's hard limit leaves (None: no cap).
    """
    cost = (price or current_price(session, tier_settings)).cost(
        input_tokens=generation.input_tokens, output_tokens=generation.output_tokens
    )
    if most is not None:
        cost = min(cost, most)
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    charged = session.scalar(
        dialect.insert(ModelCall)
        .values(
            query_id=query_id,
            tenant_id=tenant_id,
            tier=tier,
            model=tier_settings.model,
            input_tokens=generation.input_tokens,
            input_tokens_estimated=generation.input_tokens_estimated,
            output_tokens=generation.output_tokens,
            cost=cost,
            latency_ms=latency_ms,
        )
        .on_conflict_do_nothing(index_elements=[ModelCall.query_id, ModelCall.tier])
        .returning(ModelCall.id)
    )
    if charged is None:
        return None
    metrics.count_cost(
        session,
        tenant_id=str(tenant_id),
        tier=tier,
        model=tier_settings.model,
        cost=cost,
        input_tokens=generation.input_tokens,
        output_tokens=generation.output_tokens,
    )
    return cost


# Money is a decimal string in fixed notation with 10 places: "0.0000005000", never "5E-7".
def money_text(value: Decimal) -> str:
    return f"{value:.10f}"


def costs_by_query(
    session: Session, query_ids: list[uuid.UUID]
) -> dict[uuid.UUID, dict[str, Decimal]]:
    """Cost so far of each query, per tier."""
    rows = session.execute(
        select(ModelCall.query_id, ModelCall.tier, func.sum(ModelCall.cost))
        .where(ModelCall.query_id.in_(query_ids))
        .group_by(ModelCall.query_id, ModelCall.tier)
    ).all()
    costs: dict[uuid.UUID, dict[str, Decimal]] = {query_id: {} for query_id in query_ids}
    for query_id, tier, cost in rows:
        costs[query_id][tier] = Decimal(cost)
    return costs
