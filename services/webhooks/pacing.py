"""Keeping a slow receiver from holding up everyone else's deliveries.

An attempt is *slow* when it runs, or ran, past half the attempt deadline. A target (an
endpoint, or for a query's own ``webhook_url`` that URL) whose last attempt was slow gets one
attempt at a time, and none for one deadline after a slow one ended; a target with no attempt
yet gets no second attempt while its first has run slow. A delivery that must wait goes back
on the queue instead of taking a worker, so a receiver that answers slowly (or trickles its
answer) holds at most about one worker at a time and the deliveries queued behind its own go
on to other tenants. A target whose last attempt was quick is not paced (one query per claim):
its attempts may run side by side.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from services.models import DeliveryStatus, WebhookAttempt, WebhookDelivery

LEASE_MARGIN_S = 5.0


def lease_s(deadline_s: float) -> float:
    """How long a claimed attempt holds its delivery: longer than the attempt can run."""
    return deadline_s + LEASE_MARGIN_S


def wait_for_slow_target(
    session: Session, delivery: WebhookDelivery, *, deadline_s: float, now: datetime
) -> float | None:
    """Seconds to wait before attempting ``delivery``, or None to attempt it now."""
    slow = timedelta(seconds=deadline_s / 2)
    last = _last_attempt(session, delivery)
    last_was_slow = last is not None and timedelta(milliseconds=last.duration_ms) > slow
    if last is not None and not last_was_slow:
        return None
    in_flight_until: datetime | None = session.scalar(_in_flight_leases(delivery, now))
    if in_flight_until is not None:
        started = in_flight_until - timedelta(seconds=lease_s(deadline_s))
        if last_was_slow or now - started > slow:
            return max((in_flight_until - now).total_seconds(), 0.5)
    if last is not None and last.attempted_at + timedelta(seconds=deadline_s) > now:
        return (last.attempted_at + timedelta(seconds=deadline_s) - now).total_seconds()
    return None


def _in_flight_leases(delivery: WebhookDelivery, now: datetime) -> Select[datetime | None]:
    """The latest live lease of another delivery to the same target."""
    target = (
        WebhookDelivery.endpoint_id == delivery.endpoint_id
        if delivery.endpoint_id is not None
        else (WebhookDelivery.tenant_id == delivery.tenant_id)
        & WebhookDelivery.endpoint_id.is_(None)
        & (WebhookDelivery.url == delivery.url)
    )
    return select(func.max(WebhookDelivery.lease_expires_at)).where(
        target,
        WebhookDelivery.status == DeliveryStatus.PENDING,
        WebhookDelivery.lease_expires_at > now,
        WebhookDelivery.id != delivery.id,
    )


def _last_attempt(session: Session, delivery: WebhookDelivery) -> WebhookAttempt | None:
    """The target's most recent attempt: any of the endpoint's, or for a query's own URL,
    one of the pending deliveries to it (those still retrying, a short list per tenant)."""
    latest = select(WebhookAttempt).order_by(WebhookAttempt.id.desc()).limit(1)
    if delivery.endpoint_id is not None:
        return session.scalars(
            latest.where(WebhookAttempt.endpoint_id == delivery.endpoint_id)
        ).first()
    return session.scalars(
        latest.join(WebhookDelivery, WebhookDelivery.id == WebhookAttempt.delivery_id).where(
            WebhookDelivery.tenant_id == delivery.tenant_id,
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.endpoint_id.is_(None),
            WebhookDelivery.url == delivery.url,
        )
    ).first()
