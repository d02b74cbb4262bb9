"""The tenant's threshold scopes, as they stand and decision by decision (the audit trail)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from services.api.deps import TenantDep
from services.api.error_responses import ERROR_RESPONSES
from services.api.schemas import ErrorBody
from services.threshold_audit import ScopeDecision, ScopeState, scope_decisions, tenant_scopes

router = APIRouter(prefix="/v1/thresholds", tags=["thresholds"], responses=ERROR_RESPONSES)

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such threshold scope for this tenant."}
}


class ScopeView(BaseModel):
    scope: int = Field(description="The scope's id, as `threshold_scope` on a query.")
    model_pair: str
    task: str | None
    margins: int = Field(description="|H|: margins in the scope's history.")
    threshold: float | None = Field(description="The latest decision's threshold.")
    target_escalation_rate: float | None = Field(description="The latest decision's target.")
    realised_escalation_rate: float | None = Field(
        description="Share of the last TWOTIER_THRESHOLD_WINDOW decisions that escalated; null "
        "until that many follow the warm-up."
    )
    margin_psi: float | None = Field(
        description="Population stability index of the last N margins against the long run."
    )
    drift: str = Field(description="`ok` or `drift` (see docs/thresholds.md).")
    drift_changed_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def of(cls, state: ScopeState) -> ScopeView:
        return cls(
            scope=state.scope_id,
            model_pair=state.model_pair,
            task=state.task,
            margins=state.margins,
            threshold=state.threshold,
            target_escalation_rate=state.target_escalation_rate,
            realised_escalation_rate=state.realised_escalation_rate,
            margin_psi=state.margin_psi,
            drift=state.drift_state,
            drift_changed_at=state.drift_changed_at,
            updated_at=state.updated_at,
        )


class DecisionView(BaseModel):
    threshold_version: int = Field(description="The margin's position in the scope's history.")
    query: str
    margin: float
    threshold: float | None
    threshold_window: int | None
    target_escalation_rate: float | None
    decision: str | None
    escalated: bool
    decided_at: datetime

    @classmethod
    def of(cls, decision: ScopeDecision) -> DecisionView:
        return cls(
            threshold_version=decision.threshold_version,
            query=str(decision.query_id),
            margin=decision.margin,
            threshold=decision.threshold,
            threshold_window=decision.threshold_window,
            target_escalation_rate=decision.target_escalation_rate,
            decision=decision.decision,
            escalated=decision.escalated,
            decided_at=decision.decided_at,
        )


class ScopeList(BaseModel):
    data: list[ScopeView]


class ScopeHistory(BaseModel):
    scope: ScopeView
    data: list[DecisionView] = Field(description="Decisions, newest first.")
    next_before_version: int | None = Field(
        description="Pass as `before_version` for the next page; null at the end."
    )


@router.get("")
async def list_scopes(caller: TenantDep) -> ScopeList:
    """Each threshold scope of the tenant (model pair x task): its threshold, target and
    realised escalation rates, and drift state."""
    scopes = await caller.run(lambda session, tenant: tenant_scopes(session, tenant.id))
    return ScopeList(data=[ScopeView.of(scope) for scope in scopes])


@router.get("/{scope}/history", responses=NOT_FOUND)
async def scope_history(
    caller: TenantDep,
    scope: Annotated[int, Path(ge=1, le=2**31 - 1)],
    before_version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> ScopeHistory:
    """The scope's decisions, newest first: each margin, the threshold and window it was
    compared with, the target rate and the outcome. A decision's threshold is reproducible from
    the margins up to its version."""
    state, decisions = await caller.run(
        lambda session, tenant: scope_decisions(
            session,
            tenant_id=tenant.id,
            scope_id=scope,
            before_version=before_version,
            limit=limit,
        )
    )
    last = decisions[-1].threshold_version if len(decisions) == limit else None
    return ScopeHistory(
        scope=ScopeView.of(state),
        data=[DecisionView.of(decision) for decision in decisions],
        next_before_version=last if last is not None and last > 1 else None,
    )
