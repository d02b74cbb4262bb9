"""Create, read, list and cancel a tenant's batches, and count their requests.

A batch is created ``validating``; the feeder (feeder.py) reads its input file, moves it to
``in_progress``, sends its requests as queries while the queues have room, and finalizes it
once every request has an end. A cancel moves it to ``cancelling`` and cancels its unfinished
queries at once; the feeder then sends nothing more of it and finalizes it as ``cancelled``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from services import dispatch, lifecycle, paging
from services.batches.files import get_file
from services.batches.lines import ENDPOINTS
from services.errors import BatchAlreadyFinished, InvalidParameter, NotFound
from services.models import (
    Batch,
    BatchRequest,
    BatchStatus,
    FilePurpose,
    Query,
    QueryStatus,
    utcnow,
)
from services.openai_wire.batch_objects import RequestCounts

COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}
UNFINISHED_QUERIES = (QueryStatus.QUEUED, QueryStatus.RUNNING, QueryStatus.ESCALATED)
STOPPABLE = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS)


def create_batch(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    input_file_id: uuid.UUID,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, Any] | None,
) -> Batch:
    """A new batch (validating) of the tenant's input file; the feeder is told once it commits."""
    if endpoint not in ENDPOINTS:
        raise InvalidParameter(
            f"endpoint {endpoint!r} is not supported; batches run "
            + " and ".join(repr(name) for name in ENDPOINTS),
            param="endpoint",
            code="invalid_value",
        )
    window = COMPLETION_WINDOWS.get(completion_window)
    if window is None:
        raise InvalidParameter(
            'completion_window must be "24h"', param="completion_window", code="invalid_value"
        )
    stored = get_file(session, tenant_id=tenant_id, file_id=input_file_id)
    if stored.purpose != FilePurpose.BATCH:
        raise InvalidParameter(
            f"file-{input_file_id.hex} was not uploaded with purpose 'batch'",
            param="input_file_id",
            code="invalid_value",
        )
    now = utcnow()
    batch = Batch(
        tenant_id=tenant_id,
        endpoint=endpoint,
        completion_window=completion_window,
        request_metadata=metadata,
        status=BatchStatus.VALIDATING,
        input_file_id=input_file_id,
        created_at=now,
        expires_at=now + window,
    )
    session.add(batch)
    session.flush()
    dispatch.feed_batches_after_commit(session)
    return batch


def get_batch(session: Session, *, tenant_id: uuid.UUID, batch_id: uuid.UUID) -> Batch:
    batch = session.get(Batch, batch_id)
    if batch is None or batch.tenant_id != tenant_id:
        raise NotFound(f"no batch batch_{batch_id.hex}", details={"param": "batch_id"})
    return batch


def oldest_unlocked(
    session: Session, status: BatchStatus, *, by: InstrumentedAttribute[Any]
) -> Batch | None:
    """The oldest batch in ``status`` by the column ``by`` that no other transaction holds,
    locked; None if there is none."""
    return session.scalars(
        select(Batch)
        .where(Batch.status == status)
        .order_by(by)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()


def list_batches(
    session: Session, *, tenant_id: uuid.UUID, limit: int, after: uuid.UUID | None
) -> tuple[list[Batch], bool]:
    """The tenant's batches, newest first, after the batch ``after``; and whether more follow."""
    statement = select(Batch).where(Batch.tenant_id == tenant_id)
    last = get_batch(session, tenant_id=tenant_id, batch_id=after) if after is not None else None
    return paging.newest_first(
        session,
        statement,
        Batch,
        after=(last.created_at, last.id) if last is not None else None,
        limit=limit,
    )


def cancel_batch(
    session: Session, *, tenant_id: uuid.UUID, batch_id: uuid.UUID, tier_names: Sequence[str]
) -> Batch:
    """Stop the batch: nothing more of it is sent, its unfinished queries are cancelled, and
    the feeder finalizes it (``cancelled``) with what has finished."""
    batch = session.get(Batch, batch_id, with_for_update=True, populate_existing=True)
    if batch is None or batch.tenant_id != tenant_id:
        raise NotFound(f"no batch batch_{batch_id.hex}", details={"param": "batch_id"})
    if batch.status == BatchStatus.CANCELLING:
        return batch
    if batch.status not in STOPPABLE:
        raise BatchAlreadyFinished(f"batch batch_{batch_id.hex} is already {batch.status}")
    batch.status = BatchStatus.CANCELLING
    batch.cancelling_at = utcnow()
    cancel_unfinished_queries(session, batch, tier_names=tier_names)
    dispatch.feed_batches_after_commit(session)
    return batch


def cancel_unfinished_queries(session: Session, batch: Batch, *, tier_names: Sequence[str]) -> int:
    unfinished = session.scalars(
        select(Query)
        .where(Query.batch_id == batch.id, Query.status.in_(UNFINISHED_QUERIES))
        .order_by(Query.id)
        .with_for_update()
    ).all()
    for query in unfinished:
        lifecycle.cancel(session, query, tier_names=tier_names)
    return len(unfinished)


def request_counts(session: Session, batch: Batch) -> RequestCounts:
    """The batch's counts: as stored once it finished, counted while it runs."""
    if batch.total_count is not None and batch.completed_count is not None:
        return RequestCounts(batch.total_count, batch.completed_count, batch.failed_count or 0)
    total = session.scalar(
        select(func.count()).select_from(BatchRequest).where(BatchRequest.batch_id == batch.id)
    )
    refused = session.scalar(
        select(func.count())
        .select_from(BatchRequest)
        .where(BatchRequest.batch_id == batch.id, BatchRequest.error_code.is_not(None))
    )
    by_status = dict(
        session.execute(
            select(Query.status, func.count())
            .where(Query.batch_id == batch.id)
            .group_by(Query.status)
        ).all()
    )
    completed = by_status.get(QueryStatus.SUCCEEDED, 0)
    failed = (refused or 0) + by_status.get(QueryStatus.FAILED, 0)
    failed += by_status.get(QueryStatus.CANCELLED, 0)
    return RequestCounts(total=total or 0, completed=completed, failed=failed)
