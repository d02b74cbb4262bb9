"""Submitting a query, the same way through every route that takes one: `POST /v1/queries`
and the OpenAI-compatible routes."""

from __future__ import annotations

import structlog
from sqlalchemy.orm import Session

from services import lifecycle, metrics, queries
from services.accounting import costs_by_query
from services.api.deps import TenantCalls
from services.api.schemas import QueryView
from services.errors import BudgetExceeded
from services.models import TERMINAL_STATUSES, Tenant, Tier
from services.settings import Settings

log = structlog.get_logger(__name__)


async def submit(
    caller: TenantCalls,
    *,
    new_query: queries.NewQuery,
    idempotency_key: str | None,
    settings: Settings,
) -> tuple[QueryView, bool]:
    """Store the query (or find the one its Idempotency-Key made) and, once committed, send a
    new one to the small tier; the query as stored, and whether it has finished."""

    def submit_in(session: Session, tenant: Tenant) -> tuple[QueryView, bool]:
        try:
            submitted = queries.submit_query(
                session,
                tenant=tenant,
                request=new_query,
                idempotency_key=idempotency_key,
                settings=settings,
            )
        except BudgetExceeded as refused:
            metrics.count_budget_rejection(str(tenant.id))
            session.rollback()  # nothing of the query is kept; the alert is
            lifecycle.refused(session, tenant=tenant, refusal=refused)
            session.commit()
            raise
        session.commit()
        query = submitted.query
        if submitted.created:
            try:
                caller.database.dispatcher.enqueue(Tier.SMALL, query.id)
            except Exception:
                log.exception("enqueue_failed", query_id=str(query.id))
            # The query as it was stored: no model call was charged before it existed.
            return QueryView.of(query, {}), query.status in TERMINAL_STATUSES
        view = QueryView.of(query, costs_by_query(session, [query.id])[query.id])
        return view, query.status in TERMINAL_STATUSES

    return await caller.run(submit_in)
