"""Routes for a tenant's queries: submit, poll, list, cancel."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Header, Query, Response, status

from services import budgets, metrics, queries
from services.accounting import costs_by_query
from services.api.deps import DispatcherDep, SessionDep, SettingsDep, TenantDep
from services.api.errors import ERROR_RESPONSES
from services.api.schemas import ErrorBody, QueryCreate, QueryList, QueryView
from services.errors import BudgetExceeded
from services.models import Query as QueryRow
from services.models import QueryStatus, Tier

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/v1/queries", tags=["queries"], responses=ERROR_RESPONSES)

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such query for this tenant."}
}


WaitParam = Annotated[
    float,
    Query(
        ge=0,
        le=60,
        description="Seconds to wait for the query to finish before answering (a long poll).",
    ),
]


def _view(session: SessionDep, query: QueryRow) -> QueryView:
    return QueryView.of(query, costs_by_query(session, [query.id])[query.id])


def _after_waiting(
    session: SessionDep, tenant: TenantDep, query: QueryRow, wait: float
) -> QueryRow:
    if wait <= 0:
        return query
    return queries.wait_until_finished(
        session, tenant_id=tenant.id, query_id=query.id, timeout_s=wait
    )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        409: {"model": ErrorBody, "description": "Idempotency-Key reused with another body."}
    },
)
def submit_query(
    body: QueryCreate,
    response: Response,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
    wait: WaitParam = 0,
) -> QueryView:
    """Accept a query; poll `Location` for its answer (or pass `wait` to get it here)."""
    try:
        submitted = queries.submit_query(
            session,
            tenant=tenant,
            request=queries.NewQuery(
                prompt=body.prompt,
                max_new_tokens=body.max_new_tokens,
                task=body.task,
                metadata=body.metadata,
                choices=body.choices,
                webhook_url=body.webhook_url,
            ),
            idempotency_key=idempotency_key,
            settings=settings,
        )
    except BudgetExceeded as refused:
        metrics.count_budget_rejection(str(tenant.id))
        session.rollback()  # nothing of the query is kept; the alert is
        budgets.alert_exhausted(session, tenant=tenant, period_start=refused.period_start)
        session.commit()
        raise
    session.commit()
    query = submitted.query
    if submitted.created:
        try:
            dispatcher.enqueue(Tier.SMALL, query.id)
        except Exception:
            log.exception("enqueue_failed", query_id=str(query.id))
    response.headers["Location"] = f"/v1/queries/{query.id}"
    if submitted.created and wait <= 0:
        # The query as it was stored: no model call was charged before it existed.
        return QueryView.of(query, {})
    return _view(session, _after_waiting(session, tenant, query, wait))


@router.get("/{query_id}", responses=NOT_FOUND)
def get_query(
    query_id: uuid.UUID, session: SessionDep, tenant: TenantDep, wait: WaitParam = 0
) -> QueryView:
    if wait > 0:  # the wait reads the row itself, after it starts listening
        return _view(
            session,
            queries.wait_until_finished(
                session, tenant_id=tenant.id, query_id=query_id, timeout_s=wait
            ),
        )
    return _view(session, queries.get_query(session, tenant_id=tenant.id, query_id=query_id))


@router.get("")
def list_queries(
    session: SessionDep,
    tenant: TenantDep,
    status: QueryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> QueryList:
    """The tenant's queries, newest first."""
    page = queries.list_queries(
        session, tenant_id=tenant.id, status=status, limit=limit, cursor=cursor
    )
    costs = costs_by_query(session, [query.id for query in page.queries])
    return QueryList(
        data=[QueryView.of(query, costs[query.id]) for query in page.queries],
        next_cursor=page.next_cursor,
    )


@router.delete(
    "/{query_id}",
    responses={**NOT_FOUND, 409: {"model": ErrorBody, "description": "Already finished."}},
)
def cancel_query(query_id: uuid.UUID, session: SessionDep, tenant: TenantDep) -> QueryView:
    """Cancel a query that has not finished; a model call already running is still paid."""
    query = queries.cancel_query(session, tenant_id=tenant.id, query_id=query_id)
    session.commit()
    return _view(session, query)
