"""The tenant's threshold scopes, as they stand and decision by decision (the audit trail)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from services.api.deps import TenantDep
from services.api.error_responses import ERROR_RESPONSES
from services.api.schemas import ErrorBody
from services.threshold_audit import scope_decisions, tenant_scopes

router = APIRouter(prefix="/v1/thresholds", tags=["thresholds"], responses=ERROR_RESPONSES)

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such threshold scope for this tenant."}
}


class ScopeView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

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


class DecisionView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    threshold_version: int = Field(description="The margin's position in the scope's history.")
    query: uuid.UUID
    margin: float
    threshold: float | None
    threshold_window: int | None
    target_escalation_rate: float | None
    decision: str | None
    escalated: bool
    decided_at: datetime


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
    return ScopeList(data=[ScopeView.model_validate(scope) for scope in scopes])


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
        scope=ScopeView.model_validate(state),
        data=[DecisionView.model_validate(decision) for decision in decisions],
        next_before_version=last if last is not None and last > 1 else None,
    )
