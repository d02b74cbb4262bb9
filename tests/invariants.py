"""The invariants of DESIGN.md, counted over a run: nothing lost, nothing answered or charged
twice, no budget overspent, every webhook delivered or a dead letter."""

from __future__ import annotations

import uuid
from collections import Counter
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from services.db import session_scope
from services.models import (
    TERMINAL_STATUSES,
    BudgetPeriod,
    DeliveryStatus,
    ModelCall,
    Query,
    WebhookDelivery,
)


def all_finished(ids: list[str]) -> bool:
    with session_scope() as session:
        unfinished = session.scalar(
            select(func.count())
            .select_from(Query)
            .where(Query.id.in_(ids), Query.status.not_in(list(TERMINAL_STATUSES)))
        )
    return unfinished == 0


def no_pending_webhooks() -> bool:
    with session_scope() as session:
        pending = session.scalar(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.status == DeliveryStatus.PENDING)
        )
    return pending == 0


def check_invariants(
    ids: list[str],
    tenant_ids: list[uuid.UUID],
    *,
    hard_limit: Decimal | None = None,
    received_webhook_ids: set[str] | None = None,
) -> dict[str, Any]:
    """What ran, and a count of every way it could have broken an invariant (each must be 0)."""
    with session_scope() as session:
        queries = session.scalars(select(Query).where(Query.id.in_(ids))).all()
        statuses = Counter(str(query.status) for query in queries)
        per_tier = session.execute(
            select(ModelCall.query_id, ModelCall.tier, func.count())
            .where(ModelCall.query_id.in_(ids))
            .group_by(ModelCall.query_id, ModelCall.tier)
        ).all()
        charged = {(query_id, tier) for query_id, tier, _ in per_tier}
        figures: dict[str, Any] = {
            "queries_accepted": len(ids),
            "statuses": dict(statuses),
            "decisions": dict(Counter(str(query.decision) for query in queries)),
            "lost": len(ids) - sum(statuses[status] for status in TERMINAL_STATUSES),
            "double_charges": sum(1 for _, _, count in per_tier if count > 1),
            "answered_without_a_charge": sum(
                1
                for query in queries
                if query.status == "succeeded" and (query.id, query.answered_by) not in charged
            ),
            "tenants_overspent": 0,
            "budget_ledger_mismatches": 0,
        }
        for period in session.scalars(
            select(BudgetPeriod).where(BudgetPeriod.tenant_id.in_(tenant_ids))
        ):
            spent_by_ledger = session.scalar(
                select(func.coalesce(func.sum(ModelCall.cost), 0)).where(
                    ModelCall.tenant_id == period.tenant_id
                )
            )
            if hard_limit is not None and period.spent > hard_limit:
                figures["tenants_overspent"] += 1
            if period.spent != spent_by_ledger or period.reserved != 0:
                figures["budget_ledger_mismatches"] += 1
        deliveries = session.execute(
            select(WebhookDelivery.status, WebhookDelivery.message_id).where(
                WebhookDelivery.tenant_id.in_(tenant_ids)
            )
        ).all()
    figures["webhook_deliveries"] = dict(Counter(status for status, _ in deliveries))
    if received_webhook_ids is not None:
        delivered = {
            message for status, message in deliveries if status == DeliveryStatus.SUCCEEDED
        }
        figures["delivered_but_never_received"] = len(delivered - received_webhook_ids)
    return figures
