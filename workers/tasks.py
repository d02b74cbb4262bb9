"""Thin Celery tasks: parse the id, call one service function, retry when it says so."""

from __future__ import annotations

import uuid

import structlog
from celery import Task

from services import cascade
from services.db import session_scope
from services.models import Tier
from services.recovery import sweep
from services.settings import get_settings
from workers.app import app
from workers.dispatch import CeleryDispatcher

log = structlog.get_logger(__name__)
dispatcher = CeleryDispatcher()


def _deliver(task: Task, query_id: str, tier: Tier) -> None:
    retry_in_s = cascade.deliver(
        uuid.UUID(query_id), tier, dispatcher=dispatcher, retries_so_far=task.request.retries
    )
    if retry_in_s is not None:
        raise task.retry(countdown=retry_in_s, max_retries=get_settings().task_retries)


@app.task(
    name="twotier.answer_on_small_tier", bind=True, acks_late=True, reject_on_worker_lost=True
)
def answer_on_small_tier(self: Task, query_id: str) -> None:
    _deliver(self, query_id, Tier.SMALL)


@app.task(
    name="twotier.answer_on_large_tier", bind=True, acks_late=True, reject_on_worker_lost=True
)
def answer_on_large_tier(self: Task, query_id: str) -> None:
    _deliver(self, query_id, Tier.LARGE)


@app.task(name="twotier.requeue_stuck_queries")
def requeue_stuck_queries() -> int:
    with session_scope() as session:
        stuck = sweep(session, stuck_after_s=get_settings().stuck_after_s)
    for query_id, tier in stuck:
        dispatcher.enqueue(tier, query_id)
    if stuck:
        log.warning("requeued_stuck_queries", count=len(stuck))
    return len(stuck)
