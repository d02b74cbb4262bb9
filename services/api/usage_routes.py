"""The tenant's usage: spend, calls and escalation rate."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query

from services.accounting import money_text
from services.api.deps import TenantDep
from services.api.error_responses import ERROR_RESPONSES
from services.api.fields import UtcInstant
from services.usage import Granularity, tenant_usage

router = APIRouter(prefix="/v1/usage", tags=["usage"], responses=ERROR_RESPONSES)


@router.get("")
async def get_usage(
    caller: TenantDep,
    granularity: Granularity = "day",
    since: Annotated[
        UtcInstant | None, Query(description="Inclusive, ISO 8601 (UTC without an offset).")
    ] = None,
    until: Annotated[
        UtcInstant | None, Query(description="Exclusive, ISO 8601 (UTC without an offset).")
    ] = None,
) -> dict[str, Any]:
    """Spend and calls per day or month, per tier, model and task label; the realised
    escalation rate against the target; the current budget period (amounts as strings)."""
    usage = await caller.run(
        lambda session, tenant: tenant_usage(
            session, tenant=tenant, granularity=granularity, since=since, until=until
        )
    )
    as_json: dict[str, Any] = _as_json(usage)
    return as_json


def _as_json(value: Any) -> Any:
    """Money (Decimal) as fixed-point strings, like everywhere in the API."""
    if isinstance(value, Decimal):
        return money_text(value)
    if isinstance(value, dict):
        return {key: _as_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_json(item) for item in value]
    return value
