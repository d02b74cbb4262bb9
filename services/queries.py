"""Submit, read, list and cancel a tenant's queries."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services import lifecycle, limits, metrics, paging
from services.errors import IdempotencyConflict, InvalidRequest, NotFound, QueryAlreadyFinished
from services.models import TERMINAL_STATUSES, Query, QueryStatus, Tenant, Tier
from services.settings import Settings
from services.webhooks.urls import check_webhook_url


@dataclass(frozen=True)
class NewQuery:
    prompt: str
    max_new_tokens: int | None
    task: str | None
    metadata: dict[str, Any] | None
    choices: list[str] | None = None
    webhook_url: str | None = None
    batch_id: uuid.UUID | None = None  # the batch whose request the query answers


@dataclass(frozen=True)
class Submitted:
    query: Query
    created: bool


@dataclass(frozen=True)
class QueryPage:
    queries: list[Query]
    next_cursor: str | None


def submit_query(
    session: Session,
    *,
    tenant: Tenant,
    request: NewQuery,
    idempotency_key: str | None,
    settings: Settings,
) -> Submitted:
    """Reserve its budget and store a new query (status queued), or raise BudgetExceeded and
    write nothing. The caller commits, then enqueues if ``created``."""
    tenant_id = tenant.id
    max_new_tokens = _validated_max_new_tokens(request, settings)
    if request.webhook_url is not None:
        check_webhook_url(request.webhook_url, allowed_networks=settings.webhook_allowed_networks)
    request_hash = _request_hash(request, max_new_tokens)
    if idempotency_key is not None:
        earlier = _by_idempotency_key(session, tenant_id, idempotency_key)
        if earlier is not None:
            return _replay(earlier, request_hash)
    query = Query(
        tenant_id=tenant_id,
        prompt=request.prompt,
        max_new_tokens=max_new_tokens,
        task_label=request.task,
        request_metadata=request.metadata,
        choices=request.choices,
        webhook_url=request.webhook_url,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        batch_id=request.batch_id,
        delivery_attempts=0,
    )
    limits.check_limits(session, tenant=tenant)
    if idempotency_key is None:  # no unique key to race on: nothing to undo
        lifecycle.admit(session, query, tenant=tenant, settings=settings)
    else:
        try:
            with session.begin_nested():  # a lost idempotency race undoes the reservation too
                lifecycle.admit(session, query, tenant=tenant, settings=settings)
        except IntegrityError:
            # A concurrent request with the same Idempotency-Key committed first.
            earlier = _by_idempotency_key(session, tenant_id, idempotency_key)
            if earlier is None:
                raise
            return _replay(earlier, request_hash)
    metrics.count_query(session, QueryStatus.QUEUED, Tier.SMALL)
    return Submitted(query=query, created=True)


def get_query(session: Session, *, tenant_id: uuid.UUID, query_id: uuid.UUID) -> Query:
    query = session.get(Query, query_id)
    if query is None or query.tenant_id != tenant_id:
        raise NotFound(f"no query {query_id}")
    return query


def list_queries(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    status: QueryStatus | None,
    limit: int,
    cursor: str | None,
) -> QueryPage:
    """The tenant's queries, newest first; ``cursor`` continues after the previous page."""
    statement = select(Query).where(Query.tenant_id == tenant_id)
    if status is not None:
        statement = statement.where(Query.status == status)
    after = decode_cursor(cursor) if cursor is not None else None
    page, more = paging.newest_first(session, statement, Query, after=after, limit=limit)
    next_cursor = encode_cursor(page[-1]) if more else None
    return QueryPage(queries=page, next_cursor=next_cursor)


def cancel_query(
    session: Session, *, tenant_id: uuid.UUID, query_id: uuid.UUID, tier_names: Sequence[str]
) -> Query:
    query = session.get(Query, query_id, with_for_update=True, populate_existing=True)
    if query is None or query.tenant_id != tenant_id:
        raise NotFound(f"no query {query_id}")
    if query.status in TERMINAL_STATUSES:
        raise QueryAlreadyFinished(f"query {query_id} is already {query.status}")
    lifecycle.cancel(session, query, tier_names=tier_names)
    return query


# A cursor is `<created_at in microseconds since 1970>_<query id>`: every string of this shape
# (the API's schema states it) names a point in the list, so none is refused once it matches.
CURSOR_SHAPE = re.compile(
    r"(\d{1,17})_([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def encode_cursor(query: Query) -> str:
    created_at = query.created_at
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    return f"{(created_at - EPOCH) // MICROSECOND}_{query.id}"


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    shape = CURSOR_SHAPE.fullmatch(cursor)
    if shape is None:
        raise InvalidRequest("the cursor is not one this API returned")
    micros, query_id = shape.groups()
    return EPOCH + int(micros) * MICROSECOND, uuid.UUID(query_id)


def _validated_max_new_tokens(request: NewQuery, settings: Settings) -> int:
    if len(request.prompt) > settings.max_prompt_chars:
        raise InvalidRequest(
            f"prompt is {len(request.prompt)} characters; the limit is {settings.max_prompt_chars}"
        )
    max_new_tokens = request.max_new_tokens or settings.default_max_new_tokens
    if max_new_tokens > settings.max_new_tokens_limit:
        raise InvalidRequest(
            f"max_new_tokens is {max_new_tokens}; the limit is {settings.max_new_tokens_limit}"
        )
    return max_new_tokens


def _request_hash(request: NewQuery, max_new_tokens: int) -> str:
    canonical = json.dumps(
        {
            "prompt": request.prompt,
            "max_new_tokens": max_new_tokens,
            "task": request.task,
            "metadata": request.metadata,
            "choices": request.choices,
            "webhook_url": request.webhook_url,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _by_idempotency_key(session: Session, tenant_id: uuid.UUID, key: str) -> Query | None:
    return session.scalars(
        select(Query).where(Query.tenant_id == tenant_id, Query.idempotency_key == key)
    ).one_or_none()


def _replay(earlier: Query, request_hash: str) -> Submitted:
    if earlier.request_hash != request_hash:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different request body",
            details={"query_id": str(earlier.id)},
        )
    return Submitted(query=earlier, created=False)
