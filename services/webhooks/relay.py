"""The relay: pending webhook deliveries whose message is missing from the queue (a retry
too far off for the broker, a message lost), found in the database so that they are queued
again."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from services.models import DeliveryStatus, WebhookDelivery, utcnow


def claim_due_deliveries(session: Session, *, grace_s: float, limit: int = 500) -> list[uuid.UUID]:
    """Pending deliveries due more than ``grace_s`` ago and not under a live lease: their
    message was never sent (a retry too far off for the broker), or lost. Each is stamped due
    now, so the next pass leaves it alone while its new message is on its way."""
    now = utcnow()
    due = session.scalars(
        select(WebhookDelivery)
        .where(
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.next_attempt_at < now - timedelta(seconds=grace_s),
            or_(
                WebhookDelivery.lease_expires_at.is_(None),
                WebhookDelivery.lease_expires_at < now,
            ),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for delivery in due:
        delivery.next_attempt_at = now
    return [delivery.id for delivery in due]


def reclaim_pending_deliveries(session: Session) -> list[uuid.UUID]:
    """Every pending delivery, with its lease released. Only for the embedded default at
    start-up: it is the one process, so no attempt from before the restart still runs."""
    pending = session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.status == DeliveryStatus.PENDING)
    ).all()
    for delivery in pending:
        delivery.lease_expires_at = None
    return [delivery.id for delivery in pending]
