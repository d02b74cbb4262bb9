"""What an operator reads to answer "why did this query escalate?": a tenant's threshold scopes
as they stand, and each scope's decisions in order, each with the threshold version it used.

A decision's threshold is reproducible from its scope's margins with ``seq <=
threshold_version`` (the last ``threshold_window`` of them when the threshold was read from a
window): ``services.threshold.replay_threshold``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.errors import NotFound
from services.models import MarginRecord, Query, ThresholdScope


@dataclass(frozen=True)
class ScopeState:
    scope: int  # the scope's id
    model_pair: str
    task: str | None
    margins: int  # |H|
    threshold: float | None  # as the latest decision read it (None in the warm-up)
    target_escalation_rate: float | None  # the latest decision's target
    realised_escalation_rate: float | None  # over the last N decisions
    margin_psi: float | None
    drift: str  # "ok" or "drift"
    drift_changed_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class ScopeDecision:
    threshold_version: int  # the margin's position in the scope (seq)
    query: uuid.UUID
    margin: float
    threshold: float | None
    threshold_window: int | None
    target_escalation_rate: float | None
    decision: str | None
    escalated: bool
    decided_at: datetime


def tenant_scopes(session: Session, tenant_id: uuid.UUID) -> list[ScopeState]:
    """The tenant's scopes, the most recently used first."""
    scopes = session.scalars(
        select(ThresholdScope)
        .where(ThresholdScope.tenant_id == tenant_id)
        .order_by(ThresholdScope.updated_at.desc().nulls_last(), ThresholdScope.id)
    )
    return [_state(scope) for scope in scopes]


def scope_decisions(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    scope_id: int,
    before_version: int | None,
    limit: int,
) -> tuple[ScopeState, list[ScopeDecision]]:
    """The scope and its decisions, newest first, older than ``before_version`` if given."""
    scope = session.get(ThresholdScope, scope_id)
    if scope is None or scope.tenant_id != tenant_id:
        raise NotFound(f"no threshold scope {scope_id}")
    statement = (
        select(MarginRecord, Query)
        .join(Query, Query.id == MarginRecord.query_id)
        .where(MarginRecord.scope_id == scope_id)
        .order_by(MarginRecord.seq.desc())
        .limit(limit)
    )
    if before_version is not None:
        statement = statement.where(MarginRecord.seq < before_version)
    decisions = [_decision(record, query, scope_id) for record, query in session.execute(statement)]
    return _state(scope), decisions


def _decision(record: MarginRecord, query: Query, scope_id: int) -> ScopeDecision:
    """The decision the margin took: the query's own (its first tier's), or, in a later tier's
    scope, that tier's entry of the query's path."""
    if query.scope_id == scope_id:
        threshold, window = query.threshold, query.threshold_window
        target, decision = query.target_escalation_rate, query.decision
        escalated = query.escalated_at is not None
    else:
        step = next((step for step in query.path or () if step["threshold_scope"] == scope_id), {})
        threshold, window = step.get("threshold"), step.get("threshold_window")
        target, decision = step.get("target_escalation_rate"), step.get("decision")
        escalated = decision == "below_threshold"
    return ScopeDecision(
        threshold_version=record.seq,
        query=query.id,
        margin=record.margin,
        threshold=threshold,
        threshold_window=window,
        target_escalation_rate=target,
        decision=decision,
        escalated=escalated,
        decided_at=record.created_at,
    )


def _state(scope: ThresholdScope) -> ScopeState:
    return ScopeState(
        scope=scope.id,
        model_pair=scope.model_pair,
        task=scope.task_label or None,
        margins=scope.margin_count,
        threshold=scope.threshold,
        target_escalation_rate=scope.target_escalation_rate,
        realised_escalation_rate=scope.realised_escalation_rate,
        margin_psi=scope.margin_psi,
        drift=scope.drift_state,
        drift_changed_at=scope.drift_changed_at,
        updated_at=scope.updated_at,
    )
