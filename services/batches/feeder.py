"""The batch feeder: reads new batches' input files, sends their requests as queries while the
queues have room, and finalizes batches whose every request has an end (finishing.py).

Batches share the queues and workers of interactive queries, at a lower priority: a request
becomes a query (its budget reserved, like any query's) only when the feeder sends it, and the
feeder sends more only while fewer than ``batch_max_in_flight`` batch queries are unfinished
and the entry point finds the queues nearly empty. Interactive queries therefore never wait
behind a batch's backlog, which stays in the database.

Every step is its own transaction and its state is in the database: a feeder killed at any
point leaves a batch to the next run (a query it created and did not send is a queued query
like any other, which the recovery sweep sends). Runs may overlap (several workers): each
step locks the batches it works on and skips those another run holds.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from services import lifecycle, queries
from services.batches import lines
from services.batches.files import request_lines
from services.batches.finishing import (
    expire_overdue_batches,
    finalize_next_batch,
    start_finalizing,
)
from services.batches.store import UNFINISHED_QUERIES, oldest_unlocked
from services.db import session_scope
from services.errors import BudgetExceeded, RateLimited, TwotierError
from services.models import (
    Batch,
    BatchRequest,
    BatchStatus,
    Query,
    StoredFile,
    Tenant,
    utcnow,
)
from services.openai_wire import conversion
from services.settings import Settings


@dataclass(frozen=True)
class FeedRoom:
    """What the entry point allows this run: the most batch queries unfinished at once, and
    whether its queues are short enough to send any."""

    max_in_flight: int
    queues_have_room: bool


@dataclass(frozen=True)
class FeedResult:
    sent: list[uuid.UUID]  # queries created and committed, for the caller to send
    run_again: bool  # this run stopped at its limit of lines: the caller asks for another


def feed(*, settings: Settings, room: FeedRoom, batches_at_once: int = 10) -> FeedResult:
    """One run of the feeder."""
    models = conversion.model_names(settings.openai_model_aliases)
    for _ in range(batches_at_once):
        with session_scope() as session:
            if not validate_next_batch(session, models=models):
                break
    with session_scope() as session:
        expire_overdue_batches(session, tier_names=settings.tier_names)
    result = FeedResult(sent=[], run_again=False)
    if room.queues_have_room:
        with session_scope() as session:
            result = send_waiting_requests(
                session, settings=settings, max_in_flight=room.max_in_flight, models=models
            )
    with session_scope() as session:
        start_finalizing(session)
    for _ in range(batches_at_once):
        with session_scope() as session:
            if not finalize_next_batch(session):
                break
    return result


def validate_next_batch(session: Session, *, models: list[str]) -> bool:
    """Read the oldest validating batch's input file into its requests; False if none."""
    batch = oldest_unlocked(session, BatchStatus.VALIDATING, by=Batch.created_at)
    if batch is None:
        return False
    now = utcnow()
    stored = session.get(StoredFile, batch.input_file_id)
    if stored is None:
        batch.status, batch.failed_at = BatchStatus.FAILED, now
        batch.total_count = batch.completed_count = batch.failed_count = 0
        batch.errors = [
            {
                "code": "file_not_found",
                "message": "the input file was deleted before the batch read it",
                "param": "input_file_id",
                "line": None,
            }
        ]
        return True
    checked = lines.read_lines(
        request_lines(stored.content), endpoint=batch.endpoint, models=models
    )
    rows = [
        {
            "id": uuid.uuid4(),
            "batch_id": batch.id,
            "line": line.line,
            "custom_id": line.custom_id,
            "body": line.body,
            "error_code": line.error_code,
            "error_message": line.error_message,
        }
        for line in checked
    ]
    if rows:
        session.execute(insert(BatchRequest), rows)
    batch.status, batch.in_progress_at = BatchStatus.IN_PROGRESS, now
    return True


def send_waiting_requests(
    session: Session,
    *,
    settings: Settings,
    max_in_flight: int,
    models: list[str],
    most_lines: int = 500,
) -> FeedResult:
    """Turn waiting requests into queries, oldest batch first, until ``max_in_flight`` batch
    queries are unfinished (or ``most_lines`` lines were looked at). A request the budget
    cannot pay, or that the service's limits refuse, goes to the error file; one over the
    tenant's rate limits waits."""
    active = session.scalars(
        select(Batch)
        .where(Batch.status == BatchStatus.IN_PROGRESS, Batch.expired_at.is_(None))
        .order_by(Batch.created_at, Batch.id)
        .with_for_update(skip_locked=True)
    ).all()
    if not active:
        return FeedResult(sent=[], run_again=False)
    in_flight = session.scalar(
        select(func.count())
        .select_from(Query)
        .where(Query.batch_id.is_not(None), Query.status.in_(UNFINISHED_QUERIES))
    )
    room = max_in_flight - (in_flight or 0)
    sent: list[uuid.UUID] = []
    looked_at = 0
    for batch in active:
        tenant = session.get_one(Tenant, batch.tenant_id)
        waiting = _waiting(session, batch, limit=room)
        while room > 0 and waiting and looked_at < most_lines:
            request = waiting.pop(0)
            looked_at += 1
            try:
                query_id = _send(session, batch, tenant, request, settings, models)
            except RateLimited:
                break  # the tenant's limits: the batch waits for a later run
            if query_id is not None:
                sent.append(query_id)
                room -= 1
            elif not waiting:  # refused: look further down the file
                waiting = _waiting(session, batch, limit=room)
    return FeedResult(sent=sent, run_again=looked_at >= most_lines)


def _waiting(session: Session, batch: Batch, *, limit: int) -> list[BatchRequest]:
    return list(
        session.scalars(
            select(BatchRequest)
            .where(
                BatchRequest.batch_id == batch.id,
                BatchRequest.query_id.is_(None),
                BatchRequest.error_code.is_(None),
            )
            .order_by(BatchRequest.line)
            .limit(limit)
        )
    )


def _send(
    session: Session,
    batch: Batch,
    tenant: Tenant,
    request: BatchRequest,
    settings: Settings,
    models: list[str],
) -> uuid.UUID | None:
    """The request's query, created like any submitted query; None if it was refused (and
    its error recorded). RateLimited goes up: the request waits."""
    try:
        with session.begin_nested():
            new_query = lines.new_query(batch.endpoint, request.body or {}, models=models)
            submitted = queries.submit_query(
                session,
                tenant=tenant,
                request=replace(new_query, batch_id=batch.id),
                idempotency_key=None,
                settings=settings,
            )
    except RateLimited:
        raise
    except BudgetExceeded as refused:
        lifecycle.refused(session, tenant=tenant, refusal=refused)
        request.error_code, request.error_message = lines.error_code(refused), refused.message
        return None
    except TwotierError as refused:
        request.error_code, request.error_message = lines.error_code(refused), refused.message
        return None
    request.query_id = submitted.query.id
    return submitted.query.id
