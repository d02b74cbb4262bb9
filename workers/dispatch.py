"""Dispatching a query to a tier means sending its Celery task by name."""

from __future__ import annotations

import uuid

from services.models import Tier
from workers.app import app

TASK_OF_TIER = {
    Tier.SMALL: "twotier.answer_on_small_tier",
    Tier.LARGE: "twotier.answer_on_large_tier",
}
DELIVER_WEBHOOK = "twotier.deliver_webhook"


class CeleryDispatcher:
    def enqueue(self, tier: Tier, query_id: uuid.UUID, *, delay_s: float = 0.0) -> None:
        app.send_task(
            TASK_OF_TIER[tier], args=[str(query_id)], queue=tier.value, countdown=delay_s or None
        )

    def enqueue_webhook(self, delivery_id: uuid.UUID, *, delay_s: float = 0.0) -> None:
        app.send_task(
            DELIVER_WEBHOOK, args=[str(delivery_id)], queue="webhooks", countdown=delay_s or None
        )

    def is_reachable(self) -> bool:
        try:
            with app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=2)
        except Exception:  # noqa: BLE001 - readiness reports any failure as "not ready"
            return False
        return True
