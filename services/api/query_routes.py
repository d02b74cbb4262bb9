"""Routes for a tenant's queries: submit, poll, list, cancel."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from sqlalchemy.orm import Session

from services import queries
from services.accounting import costs_by_query
from services.api.access_log import arrived_at
from services.api.deps import SettingsDep, TenantDep
from services.api.error_responses import ERROR_RESPONSES
from services.api.long_poll import read_until_finished
from services.api.schemas import ErrorBody, QueryCreate, QueryList, QueryView
from services.api.submission import submit
from services.models import TERMINAL_STATUSES, QueryStatus, Tenant
from services.models import Query as QueryRow

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


def _view(session: Session, query: QueryRow) -> QueryView:
    return QueryView.of(query, costs_by_query(session, [query.id])[query.id])


async def _poll(caller: TenantDep, query_id: uuid.UUID, *, deadline: float) -> QueryView:
    """The query once it has finished, or as it stands at ``deadline`` (time.monotonic)."""

    async def read() -> QueryView:
        return await caller.run(
            lambda session, tenant: _view(
                session, queries.get_query(session, tenant_id=tenant.id, query_id=query_id)
            )
        )

    if deadline <= time.monotonic():
        return await read()
    return await read_until_finished(
        read,
        query_id=query_id,
        is_finished=lambda view: view.status in TERMINAL_STATUSES,
        deadline=deadline,
    )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        409: {"model": ErrorBody, "description": "Idempotency-Key reused with another body."}
    },
)
async def submit_query(
    body: QueryCreate,
    request: Request,
    response: Response,
    caller: TenantDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
    wait: WaitParam = 0,
) -> QueryView:
    """Accept a query; poll `Location` for its answer (or pass `wait` to get it here)."""
    deadline = arrived_at(request) + wait
    new_query = queries.NewQuery(
        prompt=body.prompt,
        max_new_tokens=body.max_new_tokens,
        task=body.task,
        metadata=body.metadata,
        choices=body.choices,
        webhook_url=body.webhook_url,
    )
    view, finished = await submit(
        caller, new_query=new_query, idempotency_key=idempotency_key, settings=settings
    )
    response.headers["Location"] = f"/v1/queries/{view.id}"
    if wait <= 0 or finished:
        return view
    return await _poll(caller, view.id, deadline=deadline)


@router.get("/{query_id}", responses=NOT_FOUND)
async def get_query(
    query_id: uuid.UUID, request: Request, caller: TenantDep, wait: WaitParam = 0
) -> QueryView:
    return await _poll(caller, query_id, deadline=arrived_at(request) + wait)


@router.get("")
async def list_queries(
    caller: TenantDep,
    status: QueryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None,
        Query(
            pattern=f"^{queries.CURSOR_SHAPE.pattern}$",
            description="`next_cursor` of the previous page.",
        ),
    ] = None,
) -> QueryList:
    """The tenant's queries, newest first."""

    def page_of_queries(session: Session, tenant: Tenant) -> QueryList:
        page = queries.list_queries(
            session, tenant_id=tenant.id, status=status, limit=limit, cursor=cursor
        )
        costs = costs_by_query(session, [query.id for query in page.queries])
        return QueryList(
            data=[QueryView.of(query, costs[query.id]) for query in page.queries],
            next_cursor=page.next_cursor,
        )

    return await caller.run(page_of_queries)


@router.delete(
    "/{query_id}",
    responses={**NOT_FOUND, 409: {"model": ErrorBody, "description": "Already finished."}},
)
async def cancel_query(query_id: uuid.UUID, caller: TenantDep, settings: SettingsDep) -> QueryView:
    """Cancel a query that has not finished; a model call already running is still paid."""

    def cancel(session: Session, tenant: Tenant) -> QueryView:
        query = queries.cancel_query(
            session, tenant_id=tenant.id, query_id=query_id, tier_names=settings.tier_names
        )
        session.commit()
        return _view(session, query)

    return await caller.run(cancel)
