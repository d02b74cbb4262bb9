"""Dispatching a query to a tier means sending its Celery task by name."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime

from services.models import Tier, utcnow
from workers.app import SENT_AT_HEADER, app

TASK_OF_TIER: dict[str, str] = {
    Tier.SMALL: "twotier.answer_on_small_tier",
    Tier.LARGE: "twotier.answer_on_large_tier",
}
# A middle tier's task: the same for every middle tier, sent to the queue named after it.
ANSWER_ON_MIDDLE_TIER = "twotier.answer_on_middle_tier"
DELIVER_WEBHOOK = "twotier.deliver_webhook"
FEED_BATCHES = "twotier.feed_batches"
# Asks to feed the batches that come within this long of each other share one run: a batch's
# queries finishing by the hundred a second cost a few runs a second, not one each.
FEED_COALESCE_S = 0.2


class CeleryDispatcher:
    def __init__(self) -> None:
        self._feed_lock = threading.Lock()
        self._feed_pending = False

    def enqueue(self, tier: str, query_id: uuid.UUID, *, delay_s: float = 0.0) -> None:
        task = TASK_OF_TIER.get(tier)
        args = [str(query_id)] if task is not None else [str(query_id), str(tier)]
        app.send_task(
            task or ANSWER_ON_MIDDLE_TIER, args=args, queue=str(tier), countdown=delay_s or None
        )

    def enqueue_webhook(self, delivery_id: uuid.UUID, *, delay_s: float = 0.0) -> None:
        app.send_task(
            DELIVER_WEBHOOK, args=[str(delivery_id)], queue="webhooks", countdown=delay_s or None
        )

    def feed_batches(self) -> None:
        with self._feed_lock:
            if self._feed_pending:
                return
            self._feed_pending = True
        timer = threading.Timer(FEED_COALESCE_S, self._send_feed)
        timer.daemon = True
        timer.start()

    def _send_feed(self) -> None:
        with self._feed_lock:
            self._feed_pending = False
        app.send_task(FEED_BATCHES, queue="maintenance")

    def waiting_count(self, tier: str) -> int:
        """Messages waiting in the tier's queue (not those workers hold)."""
        with app.connection_for_read() as connection:
            return int(connection.default_channel.client.llen(str(tier)))

    def oldest_waiting_since(self, tier: str) -> datetime | None:
        """When the oldest message still waiting in the tier's queue was sent; now if none
        waits; None if the broker cannot tell (a message without the stamp).

        Kombu's Redis transport keeps a queue as a list that workers pop from its end, so the
        oldest message is its last element; messages that workers hold are not in it.
        """
        with app.connection_for_read() as connection:
            oldest = connection.default_channel.client.lindex(str(tier), -1)
        if oldest is None:
            return utcnow()
        try:
            sent_at = float(json.loads(oldest)["headers"][SENT_AT_HEADER])
        except (ValueError, KeyError, TypeError):
            return None
        return datetime.fromtimestamp(sent_at, UTC)

    def is_reachable(self) -> bool:
        try:
            with app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=2)
        except Exception:  # noqa: BLE001 - readiness reports any failure as "not ready"
            return False
        return True
