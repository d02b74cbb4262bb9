"""Thin Celery tasks: parse the id, call one service function, retry when it says so."""

from __future__ import annotations

import uuid

import structlog
from celery import Task

from services import cascade, dispatch
from services.batches import feeder
from services.db import session_scope
from services.lazy import built_once
from services.models import Tier
from services.recovery import sweep
from services.runtime import Runtime
from services.settings import get_settings
from services.webhooks.delivery import attempt_delivery
from services.webhooks.relay import claim_due_deliveries
from workers.app import app
from workers.celery_dispatcher import CeleryDispatcher

log = structlog.get_logger(__name__)
dispatcher = CeleryDispatcher()
dispatch.install(dispatcher)


@built_once
def process_runtime() -> Runtime:
    """This worker process's runtime, built by its first task (in a forked pool child, by
    the child's)."""
    return Runtime(get_settings())


def _deliver(task: Task, query_id: str, tier: str) -> None:
    retry_in_s = cascade.deliver(
        uuid.UUID(query_id),
        tier,
        runtime=process_runtime(),
        dispatcher=dispatcher,
        retries_so_far=task.request.retries,
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


@app.task(
    name="twotier.answer_on_middle_tier", bind=True, acks_late=True, reject_on_worker_lost=True
)
def answer_on_middle_tier(self: Task, query_id: str, tier: str) -> None:
    """A middle tier's task (TWOTIER_MIDDLE_TIERS), on the queue named after the tier."""
    _deliver(self, query_id, tier)


@app.task(name="twotier.requeue_stuck_queries")
def requeue_stuck_queries() -> int:
    settings = get_settings()
    # Read the queues before the database: a message sent meanwhile is newer than both.
    waiting_since = {tier: dispatcher.oldest_waiting_since(tier) for tier in settings.tier_names}
    with session_scope() as session:
        stuck = sweep(
            session,
            stuck_after_s=settings.stuck_after_s,
            waiting_since=waiting_since,
            tier_names=settings.tier_names,
        )
    for query_id, tier in stuck:
        dispatcher.enqueue(tier, query_id)
    if stuck:
        log.warning("requeued_stuck_queries", count=len(stuck))
    return len(stuck)


@app.task(name="twotier.feed_batches")
def feed_batches() -> int:
    settings = get_settings()
    short = all(
        dispatcher.waiting_count(tier) < settings.batch_feed_below for tier in settings.tier_names
    )
    room = feeder.FeedRoom(max_in_flight=settings.batch_max_in_flight, queues_have_room=short)
    result = feeder.feed(settings=settings, room=room)
    for query_id in result.sent:
        dispatcher.enqueue(Tier.SMALL, query_id)
    if result.run_again:
        dispatcher.feed_batches()
    return len(result.sent)


@app.task(name="twotier.deliver_webhook", acks_late=True, reject_on_worker_lost=True)
def deliver_webhook(delivery_id: str) -> None:
    settings = get_settings()
    look_again_in_s = attempt_delivery(uuid.UUID(delivery_id), settings=settings)
    # A message held back longer than the visibility timeout would be redelivered meanwhile;
    # the relay sends later attempts once they are due.
    if look_again_in_s is not None and look_again_in_s < settings.broker_visibility_timeout_s / 2:
        dispatcher.enqueue_webhook(uuid.UUID(delivery_id), delay_s=look_again_in_s)


@app.task(name="twotier.relay_due_webhooks")
def relay_due_webhooks() -> int:
    settings = get_settings()
    with session_scope() as session:
        due = claim_due_deliveries(session, grace_s=settings.webhook_relay_interval_s)
    for delivery_id in due:
        dispatcher.enqueue_webhook(delivery_id)
    return len(due)
