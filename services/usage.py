"""Where a tenant's money went: spend and calls per day or month, tier, model and task label,
and the realised escalation rate against the target."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from services.budgets import period_start
from services.models import BudgetPeriod, ModelCall, Query, Tenant, utcnow

Granularity = Literal["day", "month"]


def tenant_usage(
    session: Session,
    *,
    tenant: Tenant,
    granularity: Granularity,
    since: datetime | None,
    until: datetime | None,
) -> dict[str, Any]:
    return {
        "granularity": granularity,
        "buckets": _spend(session, tenant.id, granularity, since, until),
        "queries": _queries(session, tenant, since, until),
        "budget": _budget(session, tenant),
    }


def _bucket(session: Session, column: Any, granularity: Granularity) -> ColumnElement[Any]:
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(
            func.date_trunc(granularity, func.timezone("UTC", column)), "YYYY-MM-DD"
        )
    return func.strftime("%Y-%m-%d" if granularity == "day" else "%Y-%m-01", column)


def _spend(
    session: Session,
    tenant_id: uuid.UUID,
    granularity: Granularity,
    since: datetime | None,
    until: datetime | None,
) -> list[dict[str, Any]]:
    bucket = _bucket(session, ModelCall.created_at, granularity)
    statement = (
        select(
            bucket,
            ModelCall.tier,
            ModelCall.model,
            Query.task_label,
            func.count(),
            func.sum(ModelCall.cost),
            func.sum(ModelCall.input_tokens),
            func.sum(ModelCall.output_tokens),
        )
        .join(Query, Query.id == ModelCall.query_id)
        .where(ModelCall.tenant_id == tenant_id)
        .group_by(bucket, ModelCall.tier, ModelCall.model, Query.task_label)
    )
    if since is not None:
        statement = statement.where(ModelCall.created_at >= since)
    if until is not None:
        statement = statement.where(ModelCall.created_at < until)
    buckets: dict[str, dict[str, Any]] = {}
    for start, tier, model, task, calls, cost, tokens_in, tokens_out in session.execute(statement):
        entry = buckets.setdefault(start, _empty_bucket(start))
        amount = Decimal(cost)
        for group, key in (("by_tier", tier), ("by_model", model), ("by_task", task or "")):
            line = entry[group][key]
            line["calls"] += calls
            line["cost"] += amount
            line["input_tokens"] += int(tokens_in)
            line["output_tokens"] += int(tokens_out)
        entry["calls"] += calls
        entry["cost"] += amount
    return [buckets[start] for start in sorted(buckets)]


def _empty_bucket(start: str) -> dict[str, Any]:
    def line() -> dict[str, Any]:
        return {"calls": 0, "cost": Decimal(0), "input_tokens": 0, "output_tokens": 0}

    return {
        "start": start,
        "calls": 0,
        "cost": Decimal(0),
        "by_tier": defaultdict(line),
        "by_model": defaultdict(line),
        "by_task": defaultdict(line),
    }


def _queries(
    session: Session, tenant: Tenant, since: datetime | None, until: datetime | None
) -> dict[str, Any]:
    statement = (
        select(
            Query.status,
            func.count(),
            func.count(Query.escalated_at),
            func.count(Query.decision).filter(Query.decision != "warmup"),
        )
        .where(Query.tenant_id == tenant.id)
        .group_by(Query.status)
    )
    if since is not None:
        statement = statement.where(Query.created_at >= since)
    if until is not None:
        statement = statement.where(Query.created_at < until)
    by_status: dict[str, int] = {}
    escalated = decided = 0
    for status, count, escalations, decisions in session.execute(statement):
        by_status[status] = count
        escalated += escalations
        decided += decisions
    return {
        "total": sum(by_status.values()),
        "by_status": by_status,
        "escalated": escalated,
        "decided_after_warmup": decided,
        "escalation_rate": escalated / decided if decided else None,
        "target_escalation_rate": tenant.target_escalation_rate,
    }


def _budget(session: Session, tenant: Tenant) -> dict[str, Any] | None:
    if tenant.budget_hard_limit is None and tenant.budget_soft_limit is None:
        return None
    start = period_start(tenant.budget_period, utcnow())
    period = session.scalar(
        select(BudgetPeriod).where(
            BudgetPeriod.tenant_id == tenant.id, BudgetPeriod.period_start == start
        )
    )
    spent = period.spent if period else Decimal(0)
    reserved = period.reserved if period else Decimal(0)
    hard = tenant.budget_hard_limit
    return {
        "period": tenant.budget_period,
        "period_start": start.isoformat(),
        "hard_limit": hard,
        "soft_limit": tenant.budget_soft_limit,
        "spent": spent,
        "reserved": reserved,
        "available": None if hard is None else max(hard - spent - reserved, Decimal(0)),
    }
