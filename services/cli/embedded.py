"""The in-process queue of the embedded default (``twotier serve``).

It stands where Celery and Redis stand in the distributed mode and runs the same delivery code:
worker threads for every tier of the settings' cascade (as many as a local model decodes at
once, so that concurrent queries share its steps; one for a tier served over HTTP) and one for
webhooks, delayed redelivery for retries, the recovery sweep and the batch feeder. The queue
itself is memory only; the database is the durable record, so at start-up every unfinished
query and pending webhook delivery is queued again and nothing accepted before a shutdown is
lost (a batch's requests not yet sent wait in the database for the feeder).
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Callable
from typing import TypeVar

import structlog

from services import cascade, dispatch
from services.batches import feeder
from services.db import session_scope
from services.models import Tier
from services.recovery import reclaim_unfinished_queries, sweep
from services.runtime import Runtime
from services.webhooks.delivery import attempt_delivery
from services.webhooks.relay import claim_due_deliveries, reclaim_pending_deliveries

log = structlog.get_logger(__name__)

_STOP = None
T = TypeVar("T")


class InProcessQueue:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._tier_names = runtime.settings.tier_names
        self._queues: dict[str, queue.Queue[tuple[uuid.UUID, int] | None]] = {
            tier: queue.Queue() for tier in self._tier_names
        }
        self._webhooks: queue.Queue[uuid.UUID | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._feed_wanted = threading.Event()

    def enqueue(self, tier: str, query_id: uuid.UUID, *, delay_s: float = 0.0) -> None:
        self._put(tier, query_id, retries_so_far=0, delay_s=delay_s)

    def enqueue_webhook(self, delivery_id: uuid.UUID, *, delay_s: float = 0.0) -> None:
        _put_later(self._webhooks, delivery_id, delay_s)

    def feed_batches(self) -> None:
        self._feed_wanted.set()

    def is_reachable(self) -> bool:
        return bool(self._threads) and not self._stopping.is_set()

    def start(self) -> int:
        """Start the tier threads and the sweep, and queue every unfinished query (counted)."""
        dispatch.install(self)
        with session_scope() as session:
            unfinished = reclaim_unfinished_queries(session, tier_names=self._tier_names)
            pending_webhooks = reclaim_pending_deliveries(session)
        for query_id, tier in unfinished:
            self.enqueue(tier, query_id)
        for delivery_id in pending_webhooks:
            self.enqueue_webhook(delivery_id)
        for tier in self._tier_names:
            for number in range(self._threads_for(tier)):
                self._spawn(f"twotier-{tier}-{number}", self._work, tier)
        self._spawn("twotier-webhooks", self._deliver_webhooks)
        self._spawn("twotier-sweep", self._sweep)
        self._spawn("twotier-batches", self._feed_batches)
        return len(unfinished)

    def stop(self, timeout_s: float = 120.0) -> None:
        """Let each tier finish its delivery, then stop. Queued ids stay in the database."""
        self._stopping.set()
        for tier, tier_queue in self._queues.items():
            for _ in range(self._threads_for(tier)):
                tier_queue.put(_STOP)
        self._webhooks.put(_STOP)
        self._feed_wanted.set()
        for thread in self._threads:
            thread.join(timeout=timeout_s)
        self._threads.clear()

    def _threads_for(self, tier: str) -> int:
        """A local tier's batch fills only with as many calls in flight; an HTTP tier keeps
        the one call at a time that `twotier serve` checks its server's limits for."""
        tier_settings = self.runtime.tier_settings(tier)
        return tier_settings.calls_in_flight if tier_settings.backend == "local" else 1

    def _spawn(self, name: str, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _put(self, tier: str, query_id: uuid.UUID, *, retries_so_far: int, delay_s: float) -> None:
        _put_later(self._queues[tier], (query_id, retries_so_far), delay_s)

    def _work(self, tier: str) -> None:
        tier_queue = self._queues[tier]
        while (item := tier_queue.get()) is not _STOP and not self._stopping.is_set():
            query_id, retries_so_far = item
            try:
                retry_in_s = cascade.deliver(
                    query_id,
                    tier,
                    runtime=self.runtime,
                    dispatcher=self,
                    retries_so_far=retries_so_far,
                )
            except Exception:  # one bad delivery must not stop the tier
                log.exception("delivery_failed", query_id=str(query_id), tier=tier)
                retry_in_s = float(self.runtime.settings.recovery_interval_s)
            if retry_in_s is not None:
                self._put(tier, query_id, retries_so_far=retries_so_far + 1, delay_s=retry_in_s)

    def _deliver_webhooks(self) -> None:
        settings = self.runtime.settings
        while (delivery_id := self._webhooks.get()) is not _STOP and not self._stopping.is_set():
            try:
                look_again_in_s = attempt_delivery(delivery_id, settings=settings)
            except Exception:  # one bad delivery must not stop the others; the relay retries it
                log.exception("webhook_delivery_failed", delivery_id=str(delivery_id))
                continue
            if look_again_in_s is not None:
                self.enqueue_webhook(delivery_id, delay_s=look_again_in_s)

    def _sweep(self) -> None:
        settings = self.runtime.settings
        while not self._stopping.wait(settings.recovery_interval_s):
            try:
                with session_scope() as session:
                    # Memory loses no message while the process lives: only leases can run out.
                    stuck = sweep(
                        session,
                        stuck_after_s=settings.stuck_after_s,
                        waiting_since=None,
                        tier_names=self._tier_names,
                    )
                    due_webhooks = claim_due_deliveries(
                        session, grace_s=settings.webhook_relay_interval_s
                    )
            except Exception:  # the sweep tries again next interval
                log.exception("sweep_failed")
                continue
            for query_id, tier in stuck:
                self.enqueue(tier, query_id)
            for delivery_id in due_webhooks:
                self.enqueue_webhook(delivery_id)

    def _feed_batches(self) -> None:
        settings = self.runtime.settings
        while not self._stopping.is_set():
            self._feed_wanted.wait(settings.batch_feed_interval_s)
            self._feed_wanted.clear()
            if self._stopping.is_set():
                break
            try:
                result = feeder.feed(settings=settings, room=self._batch_room())
            except Exception:  # the feeder tries again at its next run
                log.exception("batch_feed_failed")
                continue
            for query_id in result.sent:
                self.enqueue(Tier.SMALL, query_id)
            if result.run_again:
                self._feed_wanted.set()

    def _batch_room(self) -> feeder.FeedRoom:
        """Batch queries take at most half the small tier's threads (one, for a tier served
        over HTTP), so an interactive query waits behind at most that many."""
        settings = self.runtime.settings
        threads = self._threads_for(Tier.SMALL)
        queues = self._queues.values()
        short = all(waiting.qsize() < settings.batch_feed_below for waiting in queues)
        return feeder.FeedRoom(
            max_in_flight=min(settings.batch_max_in_flight, max(1, threads // 2)),
            queues_have_room=short,
        )


def _put_later(target: queue.Queue[T], item: T, delay_s: float) -> None:
    if delay_s <= 0:
        target.put(item)
        return
    timer = threading.Timer(delay_s, target.put, args=(item,))
    timer.daemon = True
    timer.start()
