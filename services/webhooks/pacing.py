"""Keeping a slow receiver from holding up everyone else's deliveries.

An attempt is *slow* when it runs, or ran, past half the attempt deadline. A delivery whose
target (its endpoint, or for a query's own ``webhook_url`` that URL) has a slow attempt in
flight waits until that attempt's lease ends; a delivery to a target whose last attempt was
slow waits one deadline after it. Either way the delivery goes back on the queue instead of
taking a worker, so a receiver that answers slowly (or trickles its answer) holds at most about
one worker at a time and the deliveries queued behind its own go on to other tenants. Quick
receivers are never paced: their attempts may run side by side.
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
    in_flight_until: datetime | None = session.scalar(_in_flight_leases(delivery, now))
    if in_flight_until is not None:
        started = in_flight_until - timedelta(seconds=lease_s(deadline_s))
        if now - started > slow or _last_attempt_was_slow(session, delivery, slow):
            return max((in_flight_until - now).total_seconds(), 0.5)
    last = _last_slow_attempt_at(session, delivery, slow)
    if last is not None and last + timedelta(seconds=deadline_s) > now:
        return (last + timedelta(seconds=deadline_s) - now).total_seconds()
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


def _last_attempt_was_slow(session: Session, delivery: WebhookDelivery, slow: timedelta) -> bool:
    return _last_slow_attempt_at(session, delivery, slow) is not None


def _last_slow_attempt_at(
    session: Session, delivery: WebhookDelivery, slow: timedelta
) -> datetime | None:
    last = _last_attempt(session, delivery)
    if last is None or timedelta(milliseconds=last.duration_ms) <= slow:
        return None
    return last.attempted_at
