"""How a batch ends: stopped when its completion window runs out, ``finalizing`` once every
request it sent has ended (and it has none left to send, unless it was stopped), then finished
with its output and error files written (results.py)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from services.batches.results import collect_results, write_result_files
from services.batches.store import (
    UNFINISHED_QUERIES,
    cancel_unfinished_queries,
    oldest_unlocked,
)
from services.models import Batch, BatchRequest, BatchStatus, Query, utcnow


def expire_overdue_batches(session: Session, *, tier_names: Sequence[str]) -> int:
    """Batches past their completion window stop: their unfinished queries are cancelled and
    they finalize as ``expired``."""
    overdue = session.scalars(
        select(Batch)
        .where(
            Batch.status == BatchStatus.IN_PROGRESS,
            Batch.expired_at.is_(None),
            Batch.expires_at < utcnow(),
        )
        .with_for_update(skip_locked=True)
    ).all()
    for batch in overdue:
        batch.expired_at = utcnow()
        cancel_unfinished_queries(session, batch, tier_names=tier_names)
    return len(overdue)


def start_finalizing(session: Session) -> int:
    """Batches whose every request has an end (or that were stopped, once the queries they
    sent have ended) become ``finalizing``."""
    candidates = session.scalars(
        select(Batch)
        .where(Batch.status.in_([BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING]))
        .order_by(Batch.created_at)
        .with_for_update(skip_locked=True)
    ).all()
    started = 0
    for batch in candidates:
        stopped = batch.status == BatchStatus.CANCELLING or batch.expired_at is not None
        if not stopped and has_waiting(session, batch):
            continue
        if session.scalar(
            select(exists().where(Query.batch_id == batch.id, Query.status.in_(UNFINISHED_QUERIES)))
        ):
            continue
        batch.status, batch.finalizing_at = BatchStatus.FINALIZING, utcnow()
        started += 1
    return started


def finalize_next_batch(session: Session) -> bool:
    """Write the oldest finalizing batch's output and error files and finish it; False if
    none."""
    batch = oldest_unlocked(session, BatchStatus.FINALIZING, by=Batch.finalizing_at)
    if batch is None:
        return False
    stopped_as = "cancelled" if batch.cancelling_at else "expired" if batch.expired_at else None
    results = collect_results(session, batch, stopped_as=stopped_as)
    write_result_files(session, batch, results)
    batch.total_count = results.total
    batch.completed_count = len(results.output)
    batch.failed_count = len(results.errors)
    now = utcnow()
    if stopped_as == "cancelled":
        batch.status, batch.cancelled_at = BatchStatus.CANCELLED, now
    elif stopped_as == "expired":
        batch.status = BatchStatus.EXPIRED
    else:
        batch.status, batch.completed_at = BatchStatus.COMPLETED, now
    return True


def has_waiting(session: Session, batch: Batch) -> bool:
    return bool(
        session.scalar(
            select(
                exists().where(
                    BatchRequest.batch_id == batch.id,
                    BatchRequest.query_id.is_(None),
                    BatchRequest.error_code.is_(None),
                )
            )
        )
    )
