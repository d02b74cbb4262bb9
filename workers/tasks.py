"""Thin Celery tasks: parse the id, call one service function, enqueue what it asks for."""

from __future__ import annotations

import uuid

import structlog
from celery import Task

from services import cascade
from services.db import session_scope
from services.llm.base import TransientModelError
from services.models import Tier
from services.recovery import claim_stuck_queries
from services.settings import get_settings
from workers.app import app
from workers.dispatch import CeleryDispatcher

log = structlog.get_logger(__name__)
dispatcher = CeleryDispatcher()


def _answer(task: Task, query_id: str, tier: Tier) -> None:
    structlog.contextvars.bind_contextvars(query_id=query_id, tier=tier.value)
    try:
        result = cascade.answer_on_tier(uuid.UUID(query_id), tier)
    except TransientModelError as exc:
        settings = get_settings()
        if task.request.retries >= settings.task_retries:
            cascade.fail_query(uuid.UUID(query_id), code="model_unavailable", message=str(exc))
            return
        raise task.retry(
            exc=exc, countdown=min(2**task.request.retries, 300), max_retries=settings.task_retries
        ) from exc
    finally:
        structlog.contextvars.unbind_contextvars("query_id", "tier")
    if result.outcome is cascade.Outcome.ESCALATE:
        dispatcher.enqueue(Tier.LARGE, uuid.UUID(query_id))
    elif result.outcome is cascade.Outcome.BUSY:
        # Another delivery of this query is mid-call; look again when its lease runs out.
        dispatcher.enqueue(tier, uuid.UUID(query_id), delay_s=result.retry_in_s + 0.5)


@app.task(
    name="twotier.answer_on_small_tier", bind=True, acks_late=True, reject_on_worker_lost=True
)
def answer_on_small_tier(self: Task, query_id: str) -> None:
    _answer(self, query_id, Tier.SMALL)


@app.task(
    name="twotier.answer_on_large_tier", bind=True, acks_late=True, reject_on_worker_lost=True
)
def answer_on_large_tier(self: Task, query_id: str) -> None:
    _answer(self, query_id, Tier.LARGE)


@app.task(name="twotier.requeue_stuck_queries")
def requeue_stuck_queries() -> int:
    with session_scope() as session:
        stuck = claim_stuck_queries(session, stuck_after_s=get_settings().stuck_after_s)
    for query_id, tier in stuck:
        dispatcher.enqueue(tier, query_id)
    if stuck:
        log.warning("requeued_stuck_queries", count=len(stuck))
    return len(stuck)
